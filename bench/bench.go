// Package bench is Trellis's benchmark harness: it sets up the configurations
// BUDGETS.md compares (direct, two Trellis sidecars, two nginx hops, two haproxy
// hops) on loopback with the real binaries, drives each with fortio at a fixed
// rate in alternating rounds, measures the proxies from /proc, and reports the
// medians, their ratios to the references and the budgets met or not. It owns
// every process it starts and stops them all. Only its command
// (bench/cmd/trellis-bench) imports it.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/trellis-mesh/trellis/bench/fortio"
	"github.com/trellis-mesh/trellis/bench/procfs"
)

// Options configure a run. Zero values take the defaults given.
type Options struct {
	// Configurations to run, in round order; default AllConfigurations().
	Configurations []string
	// Rounds of every configuration; default 3.
	Rounds int
	// Warmup before each measured period (0: none) and the measured Duration;
	// default 3s and 10s.
	Warmup, Duration time.Duration
	// QPS is the fixed rate (default 1000), Connections the keep-alive
	// connections (default 16), PayloadBytes the request body, echoed back
	// (default 1024).
	QPS          float64
	Connections  int
	PayloadBytes int
	// Probes are extra short-lived Trellis workloads started only to sample
	// the sidecar's start-to-ready time; default 0.
	Probes int
	// TrellisBin is the directory with trellis and trellis-proxy; FortioBin,
	// NginxBin and HAProxyBin are executables. Required for the configurations
	// that use them.
	TrellisBin, FortioBin, NginxBin, HAProxyBin string
	// TempDir is where the run's working directory is made; default os.TempDir().
	TempDir string
	// Progress receives a line per step; default none.
	Progress io.Writer
}

func (o Options) withDefaults() Options {
	if len(o.Configurations) == 0 {
		o.Configurations = AllConfigurations()
	}
	if o.Rounds == 0 {
		o.Rounds = 3
	}
	if o.Duration == 0 {
		o.Duration = 10 * time.Second
	}
	if o.QPS == 0 {
		o.QPS = 1000
	}
	if o.Connections == 0 {
		o.Connections = 16
	}
	if o.PayloadBytes == 0 {
		o.PayloadBytes = 1024
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	// Processes run in their own directories: make relative paths absolute.
	for _, p := range []*string{&o.TrellisBin, &o.FortioBin, &o.NginxBin, &o.HAProxyBin} {
		if *p != "" && !filepath.IsAbs(*p) {
			if abs, err := filepath.Abs(*p); err == nil {
				*p = abs
			}
		}
	}
	return o
}

func (o Options) validate() error {
	need := map[string]string{"fortio": o.FortioBin}
	for _, c := range o.Configurations {
		switch c {
		case Direct:
		case Trellis:
			need["trellis"] = filepath.Join(o.TrellisBin, "trellis")
			need["trellis-proxy"] = filepath.Join(o.TrellisBin, "trellis-proxy")
		case Nginx:
			need["nginx"] = o.NginxBin
		case HAProxy:
			need["haproxy"] = o.HAProxyBin
		default:
			return fmt.Errorf("unknown configuration %q: choose among %s", c, strings.Join(AllConfigurations(), ", "))
		}
	}
	for name, path := range need {
		if path == "" {
			return fmt.Errorf("no %s binary given", name)
		}
		if st, err := os.Stat(path); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			return fmt.Errorf("%s binary %s is missing or not executable: run bench/setup.sh (and `make build` for trellis)", name, path)
		}
	}
	if o.Rounds < 1 || o.Duration <= 0 || o.Warmup < 0 || o.QPS <= 0 || o.Connections < 1 || o.PayloadBytes < 0 || o.Probes < 0 {
		return errors.New("rounds, duration, rate and connections must be positive; warm-up, payload and probes not negative")
	}
	return nil
}

// Report is a run's results: what the command prints and writes as JSON.
type Report struct {
	Date  time.Time `json:"date"`
	NProc int       `json:"nproc"`
	// LoadAverage is the machine's 1-minute load average (/proc/loadavg) at
	// the start and at the end of the run: how busy the machine was otherwise.
	LoadAverage [2]float64        `json:"load_average"`
	Command     string            `json:"command,omitempty"`
	Load        LoadSpec          `json:"load"`
	Versions    map[string]string `json:"versions"`
	// Configurations in the order given.
	Configurations []ConfigResult `json:"configurations"`
	Sidecar        *SidecarResult `json:"trellis_sidecar,omitempty"`
	Budgets        []Budget       `json:"budgets"`
}

// LoadSpec says what load every configuration took.
type LoadSpec struct {
	Client       string  `json:"client"`
	QPS          float64 `json:"qps"`
	Connections  int     `json:"connections"`
	PayloadBytes int     `json:"payload_bytes"`
	Warmup       string  `json:"warmup"`
	Duration     string  `json:"duration"`
	Rounds       int     `json:"rounds"`
}

// ConfigResult is one configuration's rounds, medians and ratios.
type ConfigResult struct {
	Name        string `json:"name"`
	Description string `json:"description"`
	// Error says why the configuration has no (or not all) results.
	Error  string        `json:"error,omitempty"`
	Rounds []RoundResult `json:"rounds"`
	Median *Figures      `json:"median,omitempty"`
	// VsNginx divides the medians by nginx-2hop's; VsDirect the latencies by direct's.
	VsNginx  Ratios `json:"ratio_to_nginx_2hop,omitempty"`
	VsDirect Ratios `json:"latency_ratio_to_direct,omitempty"`
}

// RoundResult is one measured period.
type RoundResult struct {
	Round int       `json:"round"`
	Start time.Time `json:"start"`
	Figures
}

// SidecarResult are the Trellis sidecar's figures outside the load.
type SidecarResult struct {
	// IdleRSSBytes by hop: hop1 (client, certificate and one destination
	// loaded), hop2 (server, certificate and inbound policy), before any load.
	IdleRSSBytes         map[string]uint64 `json:"idle_rss_bytes"`
	StartToReadyMs       []float64         `json:"start_to_ready_ms"`
	StartToReadyMedianMs float64           `json:"start_to_ready_median_ms"`
	StartToReadyMaxMs    float64           `json:"start_to_ready_max_ms"`
}

// Failed lists the configurations that did not produce every round.
func (r *Report) Failed() []string {
	var out []string
	for _, c := range r.Configurations {
		if c.Error != "" || len(c.Rounds) < r.Load.Rounds {
			out = append(out, c.Name)
		}
	}
	return out
}

// Errors is the number of failed requests over every configuration and round.
func (r *Report) Errors() int64 {
	var n int64
	for _, c := range r.Configurations {
		for _, rd := range c.Rounds {
			n += rd.Errors
		}
	}
	return n
}

// description says what a configuration is.
func description(name string) string {
	switch name {
	case Direct:
		return "fortio → fortio echo server, no proxy"
	case Trellis:
		return "fortio → client sidecar (explicit HTTP proxy) → mTLS, HTTP/1.1 pool → server sidecar → fortio echo server; permissive mode"
	case Nginx:
		return "fortio → nginx hop1 → TLS 1.3 (ECDSA P-256, client certificate), keep-alive pool → nginx hop2 → fortio echo server"
	case HAProxy:
		return "fortio → haproxy hop1 → TLS 1.3 (ECDSA P-256, client certificate), keep-alive pool → haproxy hop2 → fortio echo server"
	}
	return ""
}

// Run sets up every configuration, measures them in alternating rounds, stops
// everything it started and reports. A configuration that fails is reported
// as failed and the others go on; Run itself fails only when nothing can be
// measured safely, or when ctx is cancelled.
func Run(ctx context.Context, opts Options) (rep *Report, err error) {
	opts = opts.withDefaults()
	if err := opts.validate(); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(opts.TempDir, "trellis-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	e := &env{opts: opts, dir: dir, sup: &supervisor{}, log: opts.Progress}
	var watched []watchedPID
	defer func() {
		fmt.Fprintln(e.log, "stopping every process the harness started")
		serr := e.sup.stopAll(25 * time.Second)
		serr = errors.Join(serr, e.killLeftovers(watched))
		if serr != nil && err == nil {
			err = fmt.Errorf("stopping: %w", serr)
		}
	}()

	rep = &Report{
		Date:  time.Now().UTC().Truncate(time.Second),
		NProc: runtime.NumCPU(),
		Load: LoadSpec{
			Client: "fortio load -stdclient (net/http client, HTTP/1.1 keep-alive), -uniform",
			QPS:    opts.QPS, Connections: opts.Connections, PayloadBytes: opts.PayloadBytes,
			Warmup: opts.Warmup.String(), Duration: opts.Duration.String(), Rounds: opts.Rounds,
		},
		Versions:    versions(opts),
		LoadAverage: [2]float64{loadAverage(), 0},
	}
	defer func() {
		if rep != nil {
			rep.LoadAverage[1] = loadAverage()
		}
	}()
	results := map[string]*ConfigResult{}
	topos := map[string]*topology{}
	var facts *sidecarFacts
	for _, name := range opts.Configurations {
		results[name] = &ConfigResult{Name: name, Description: description(name)}
		fmt.Fprintf(e.log, "setting up %s\n", name)
		var t *topology
		var err error
		switch name {
		case Direct:
			t, err = e.startDirect(ctx)
		case Trellis:
			t, facts, err = e.startTrellis(ctx)
		case Nginx, HAProxy:
			t, err = e.startReference(ctx, name)
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("interrupted while setting up %s", name)
		}
		if err != nil {
			fmt.Fprintf(e.log, "%s failed to start: %v\n", name, err)
			results[name].Error = "set-up: " + err.Error()
			continue
		}
		topos[name] = t
		for _, h := range t.hops {
			for _, pid := range h.pids {
				if st, err := e.fs.Stat(pid); err == nil {
					watched = append(watched, watchedPID{pid: pid, comm: st.Comm})
				}
			}
		}
	}
	if err := e.checkLoopbackOnly(); err != nil {
		return nil, err
	}

	active := slices.DeleteFunc(slices.Clone(opts.Configurations), func(n string) bool { return topos[n] == nil })
	for r := range opts.Rounds {
		// Each round starts one configuration later, so none is always first.
		k := 0
		if len(active) > 0 {
			k = r % len(active)
		}
		for _, name := range append(slices.Clone(active[k:]), active[:k]...) {
			res := results[name]
			if res.Error != "" {
				continue
			}
			fmt.Fprintf(e.log, "round %d/%d: %s\n", r+1, opts.Rounds, name)
			rd, err := e.measure(ctx, topos[name], r+1)
			if ctx.Err() != nil {
				return nil, errors.New("interrupted")
			}
			if err != nil {
				fmt.Fprintf(e.log, "%s round %d failed: %v\n", name, r+1, err)
				res.Error = fmt.Sprintf("round %d: %v", r+1, err)
				continue
			}
			fmt.Fprintf(e.log, "  p50 %.3f ms, p99 %.3f ms, %.1f rps, %d errors\n", rd.P50Ms, rd.P99Ms, rd.RateRPS, rd.Errors)
			res.Rounds = append(res.Rounds, rd)
		}
	}

	for _, name := range opts.Configurations {
		res := results[name]
		if len(res.Rounds) > 0 {
			figs := make([]Figures, len(res.Rounds))
			for i, rd := range res.Rounds {
				figs[i] = rd.Figures
			}
			m := medianFigures(figs)
			res.Median = &m
		}
	}
	for _, name := range opts.Configurations {
		res := results[name]
		if res.Median == nil {
			continue
		}
		if n := results[Nginx]; n != nil && n.Median != nil {
			res.VsNginx = ratios(*res.Median, *n.Median, false)
		}
		if d := results[Direct]; d != nil && d.Median != nil {
			res.VsDirect = ratios(*res.Median, *d.Median, true)
		}
	}
	for _, name := range opts.Configurations {
		rep.Configurations = append(rep.Configurations, *results[name])
	}
	if facts != nil {
		ms := make([]float64, len(facts.StartToReady))
		for i, d := range facts.StartToReady {
			ms[i] = float64(d.Microseconds()) / 1000
		}
		rep.Sidecar = &SidecarResult{IdleRSSBytes: facts.IdleRSS, StartToReadyMs: ms,
			StartToReadyMedianMs: median(ms), StartToReadyMaxMs: percentile(ms, 100)}
	}
	var tr, ng *Figures
	var trErrors int64
	if r := results[Trellis]; r != nil {
		tr = r.Median
		for _, rd := range r.Rounds {
			trErrors += rd.Errors
		}
	}
	if r := results[Nginx]; r != nil {
		ng = r.Median
	}
	rep.Budgets = budgets(tr, ng, trErrors, facts)
	return rep, nil
}

// measure runs one warm-up and one measured period against t.
func (e *env) measure(ctx context.Context, t *topology, round int) (RoundResult, error) {
	if err := t.alive(); err != nil {
		return RoundResult{}, err
	}
	load := fortio.Load{Binary: e.opts.FortioBin, URL: t.url, Proxy: t.proxy, QPS: e.opts.QPS,
		Connections: e.opts.Connections, PayloadBytes: e.opts.PayloadBytes}
	if e.opts.Warmup > 0 {
		load.Duration = e.opts.Warmup
		if _, err := load.Run(ctx, e.dir); err != nil {
			return RoundResult{}, fmt.Errorf("warm-up: %w", err)
		}
	}
	var groups []procfs.Group
	for _, h := range t.hops {
		groups = append(groups, procfs.Group{Name: t.name + " " + h.name, PIDs: h.pids})
	}
	var s *procfs.Sampler
	if len(groups) > 0 {
		var err error
		if s, err = procfs.StartSampler(procfs.SamplerOptions{FS: e.fs, Interval: 100 * time.Millisecond, ResetPeak: true}, groups); err != nil {
			return RoundResult{}, err
		}
	}
	start := time.Now().UTC()
	load.Duration = e.opts.Duration
	res, lerr := load.Run(ctx, e.dir)
	var usage []procfs.Usage
	if s != nil {
		var err error
		if usage, err = s.Stop(); err != nil && lerr == nil {
			lerr = err
		}
	}
	if lerr != nil {
		return RoundResult{}, lerr
	}
	f, err := figures(res, t.hops, usage)
	if err != nil {
		return RoundResult{}, err
	}
	return RoundResult{Round: round, Start: start.Truncate(time.Millisecond), Figures: f}, nil
}

// figures turns a fortio result and the hops' usage into a round's figures.
func figures(res fortio.Result, hops []hop, usage []procfs.Usage) (Figures, error) {
	f := Figures{RateRPS: res.ActualQPS, Requests: res.Requests, Errors: res.Errors}
	for _, p := range []struct {
		pct float64
		dst *float64
	}{{50, &f.P50Ms}, {90, &f.P90Ms}, {99, &f.P99Ms}, {99.9, &f.P999Ms}} {
		d, ok := res.Percentile(p.pct)
		if !ok {
			return Figures{}, fmt.Errorf("fortio's result has no p%v", p.pct)
		}
		*p.dst = float64(d) / float64(time.Millisecond)
	}
	if len(usage) != len(hops) {
		return Figures{}, fmt.Errorf("%d usages for %d hops", len(usage), len(hops))
	}
	secs := res.ActualDuration.Seconds()
	for i, h := range hops {
		u := usage[i]
		hf := HopFigures{Name: h.name, Processes: len(h.pids), CPUSeconds: u.CPUSeconds, RSSMaxBytes: u.RSSMaxBytes, PSSMaxBytes: u.PSSMaxBytes, HWMBytes: u.HWMBytes, HWMLifetime: !u.PeakReset}
		if secs > 0 {
			hf.Cores = u.CPUSeconds / secs
		}
		if f.RateRPS > 0 {
			hf.CoresPer1kRPS = hf.Cores / (f.RateRPS / 1000)
		}
		f.Hops = append(f.Hops, hf)
	}
	return f, nil
}

// watchedPID is a proxy process seen at set-up, to make sure it is gone at the end.
type watchedPID struct {
	pid  int
	comm string
}

// killLeftovers kills proxy processes that outlived the processes the harness
// started (a sidecar whose `trellis run` was killed, say), if they are still
// the same programs.
func (e *env) killLeftovers(ws []watchedPID) error {
	var errs []error
	for _, w := range ws {
		deadline := time.Now().Add(5 * time.Second)
		for e.fs.Alive(w.pid) && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		st, err := e.fs.Stat(w.pid)
		if err != nil || st.State == "Z" || st.Comm != w.comm {
			continue
		}
		syscall.Kill(w.pid, syscall.SIGKILL)
		errs = append(errs, fmt.Errorf("%s (pid %d) outlived its parent; killed it", w.comm, w.pid))
	}
	return errors.Join(errs...)
}

// checkLoopbackOnly fails if a process the harness started, or a descendant,
// listens anywhere but on loopback.
func (e *env) checkLoopbackOnly() error {
	var pids []int
	for _, p := range e.sup.procs {
		pids = append(pids, e.descendants(p.pid())...)
	}
	for _, pid := range pids {
		addrs, err := e.fs.Listening(pid)
		if err != nil {
			continue // exited meanwhile; the rounds will notice
		}
		for _, a := range addrs {
			if !a.Addr().IsLoopback() {
				st, _ := e.fs.Stat(pid)
				return fmt.Errorf("process %d (%s) listens on %s, not on loopback: refusing to send load", pid, st.Comm, a)
			}
		}
	}
	return nil
}

// descendants returns pid and every process below it.
func (e *env) descendants(pid int) []int {
	out := []int{pid}
	kids, _ := e.fs.Children(pid)
	for _, k := range kids {
		out = append(out, e.descendants(k)...)
	}
	return out
}

// versions reads the version of every program the configurations use.
func versions(o Options) map[string]string {
	out := map[string]string{"go": strings.TrimPrefix(runtime.Version(), "go")}
	if v, err := fortio.Version(o.FortioBin); err == nil {
		out["fortio"] = v
	}
	first := func(name string, args ...string) string {
		b, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			return ""
		}
		line, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
		return line
	}
	for _, c := range o.Configurations {
		switch c {
		case Trellis:
			out["trellis"] = strings.TrimPrefix(first(filepath.Join(o.TrellisBin, "trellis"), "version"), "trellis ")
		case Nginx:
			out["nginx"] = strings.TrimPrefix(first(o.NginxBin, "-v"), "nginx version: nginx/")
		case HAProxy:
			if f := strings.Fields(strings.TrimPrefix(first(o.HAProxyBin, "-v"), "HAProxy version ")); len(f) > 0 {
				out["haproxy"] = f[0]
			}
		}
	}
	return out
}

// loadAverage is the 1-minute load average, or 0 if it cannot be read.
func loadAverage() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}
