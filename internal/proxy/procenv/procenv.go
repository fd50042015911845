// Package procenv holds the Go runtime settings every sidecar runs with: the
// GODEBUG entry the launchers that start one (`trellis run`, the Kubernetes
// injector) put in its environment, which the sidecar reports whether it has,
// and the number of threads that run its Go code (SetConcurrency), which the
// sidecar sets itself. Standard library only.
//
// The setting is GODEBUG=schedtrace with a period of about 25 days. A sidecar
// is idle most of the time even under load (at 1,000 requests per second a
// request's work is a fraction of the millisecond between requests), so
// without it the runtime's monitor thread (sysmon) goes into its deep sleep
// between requests, and the next system call, one per read or write, wakes it
// with a futex: in profiles that was 16–24 % of the sidecar's CPU. With
// schedtrace set the monitor never takes that sleep (it polls at most every
// 10 ms instead), which put the sidecar's CPU per request at about one nginx
// hop's (docs/benchmarks.md). The price is one scheduler summary line on
// standard error every 25 days of uptime (on a machine up longer than that,
// also one at start), and a scheduler dump after a fatal error.
package procenv

import (
	"os"
	"runtime"
	"strconv"
	"strings"
)

// Setting is the GODEBUG entry: schedtrace's period in milliseconds, the
// largest the runtime takes (int32).
const Setting = "schedtrace=2147483647"

// GODEBUG returns the GODEBUG value a sidecar runs with, given the one it
// would have inherited: that value with Setting added, unless it sets
// schedtrace to a positive period itself (the user's word wins; a later entry
// overrides an earlier one in the runtime, so Setting goes last).
func GODEBUG(inherited string) string {
	// As the runtime reads it: entries split on commas, keys untrimmed.
	for _, kv := range strings.Split(inherited, ",") {
		if v, ok := strings.CutPrefix(kv, "schedtrace="); ok {
			if n, err := strconv.Atoi(v); err == nil && n > 0 {
				return inherited
			}
		}
	}
	if strings.TrimSpace(inherited) == "" {
		return Setting
	}
	return inherited + "," + Setting
}

// Env returns env (KEY=VALUE entries, as os.Environ gives them) with GODEBUG
// as GODEBUG says; the last GODEBUG entry of env is the inherited one.
func Env(env []string) []string {
	out := make([]string, 0, len(env)+1)
	inherited := ""
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "GODEBUG="); ok {
			inherited = v
			continue
		}
		out = append(out, kv)
	}
	return append(out, "GODEBUG="+GODEBUG(inherited))
}

// Active says whether this process runs with the setting (or another
// schedtrace of the user's).
func Active() bool {
	return GODEBUG(os.Getenv("GODEBUG")) == os.Getenv("GODEBUG")
}

// DefaultConcurrency is how many threads run a sidecar's Go code at once
// (GOMAXPROCS) unless told otherwise. One: a sidecar's work between two
// system calls is short, and a second thread mostly adds hand-offs and
// wake-ups between the two, which cost more CPU than they save
// (docs/adr/0013). The runtime's own default is the machine's CPU count, or
// its container's CPU limit but at least 2, for a proxy that shares a pod
// with the app it serves.
const DefaultConcurrency = 1

// SetConcurrency sets how many threads run this process's Go code at once
// and returns the number in effect. n > 0: that many, unless $GOMAXPROCS is
// set (the user's word wins, as with GODEBUG); n == 0: the runtime's own
// choice.
func SetConcurrency(n int) int {
	if n > 0 && os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(n)
	}
	return runtime.GOMAXPROCS(0)
}
