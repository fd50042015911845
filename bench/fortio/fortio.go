// Package fortio drives the fortio load generator and echo server for the
// benchmark harness: the arguments of a fixed-rate run, running it, and parsing
// its JSON result. Only the benchmark harness (bench/...) imports it.
package fortio

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Result is what the harness reads from one fortio load run.
type Result struct {
	RequestedQPS   float64
	ActualQPS      float64
	ActualDuration time.Duration
	// Requests counts every request made in the measured run (not fortio's
	// one warm-up request per connection); OK those answered 200; Errors the
	// rest, socket errors (code -1) included.
	Requests, OK, Errors int64
	// Codes counts requests by HTTP status; -1 is a socket error.
	Codes map[int]int64
	// Percentiles maps a percentile (50, 99.9) to the latency fortio computed.
	Percentiles   map[float64]time.Duration
	Min, Avg, Max time.Duration
}

// result mirrors the part of fortio's JSON (HTTPRunnerResults) the harness reads.
type result struct {
	RequestedQPS      string
	ActualQPS         float64
	ActualDuration    int64 // nanoseconds
	RetCodes          map[string]int64
	DurationHistogram *struct {
		Count         int64
		Min, Max, Avg float64 // seconds
		Percentiles   []struct {
			Percentile float64
			Value      float64 // seconds
		}
	}
}

// ParseResult decodes the JSON fortio writes with -json.
func ParseResult(data []byte) (Result, error) {
	var r result
	if err := json.Unmarshal(data, &r); err != nil {
		return Result{}, fmt.Errorf("fortio result: %w", err)
	}
	if r.DurationHistogram == nil {
		return Result{}, errors.New("fortio result has no DurationHistogram: is this the JSON of `fortio load`?")
	}
	out := Result{
		ActualQPS:      r.ActualQPS,
		ActualDuration: time.Duration(r.ActualDuration),
		Requests:       r.DurationHistogram.Count,
		Codes:          map[int]int64{},
		Percentiles:    map[float64]time.Duration{},
		Min:            seconds(r.DurationHistogram.Min),
		Avg:            seconds(r.DurationHistogram.Avg),
		Max:            seconds(r.DurationHistogram.Max),
	}
	if r.RequestedQPS != "" && r.RequestedQPS != "max" {
		q, err := strconv.ParseFloat(r.RequestedQPS, 64)
		if err != nil {
			return Result{}, fmt.Errorf("fortio result: RequestedQPS %q: %w", r.RequestedQPS, err)
		}
		out.RequestedQPS = q
	}
	var coded int64
	for k, n := range r.RetCodes {
		code, err := strconv.Atoi(k)
		if err != nil {
			return Result{}, fmt.Errorf("fortio result: RetCodes key %q is not a status code", k)
		}
		out.Codes[code] = n
		coded += n
		if code == 200 {
			out.OK = n
		}
	}
	if coded != out.Requests {
		return Result{}, fmt.Errorf("fortio result: RetCodes count %d requests, the histogram %d", coded, out.Requests)
	}
	out.Errors = out.Requests - out.OK
	for _, p := range r.DurationHistogram.Percentiles {
		out.Percentiles[p.Percentile] = seconds(p.Value)
	}
	return out, nil
}

func seconds(s float64) time.Duration {
	return time.Duration(math.Round(s * float64(time.Second)))
}

// Percentile returns the latency at p (as passed to -p), if fortio computed it.
func (r Result) Percentile(p float64) (time.Duration, bool) {
	d, ok := r.Percentiles[p]
	return d, ok
}

// Load is one fixed-rate run of `fortio load` with net/http's client (-stdclient):
// the only fortio client that speaks to an explicit HTTP proxy (it takes the
// proxy from $HTTP_PROXY), so every configuration uses it for a like-for-like client.
type Load struct {
	// Binary is the fortio executable.
	Binary string
	// URL is what the load calls. With Proxy set, its host may be a mesh name.
	URL string
	// Proxy is the host:port of an explicit HTTP proxy, or "" for none.
	Proxy string
	// QPS is the fixed rate, Connections the number of keep-alive connections.
	QPS         float64
	Connections int
	// Duration of the run; PayloadBytes of random body per request (POST,
	// echoed back by fortio's server); 0 sends GETs.
	Duration     time.Duration
	PayloadBytes int
	// Percentiles to compute; default 50, 90, 99, 99.9.
	Percentiles []float64
}

// DefaultPercentiles are those the harness reports.
func DefaultPercentiles() []float64 { return []float64{50, 90, 99, 99.9} }

// Args are fortio's arguments for the run, writing its JSON result to jsonPath.
func (l Load) Args(jsonPath string) []string {
	ps := l.Percentiles
	if len(ps) == 0 {
		ps = DefaultPercentiles()
	}
	pct := make([]string, len(ps))
	for i, p := range ps {
		pct[i] = strconv.FormatFloat(p, 'f', -1, 64)
	}
	args := []string{
		"load", "-stdclient",
		// Never ask a DNS server: the URL's host may be a mesh name that only the
		// proxy knows, and fortio's client checks that the host resolves.
		"-resolve", "127.0.0.1",
		"-qps", strconv.FormatFloat(l.QPS, 'f', -1, 64),
		"-c", strconv.Itoa(l.Connections),
		"-t", l.Duration.String(),
		"-uniform",
		"-r", "0.00001", // 10µs histogram resolution: sub-millisecond latencies
		"-p", strings.Join(pct, ","),
		"-loglevel", "error",
		"-json", jsonPath,
	}
	if l.PayloadBytes > 0 {
		args = append(args, "-payload-size", strconv.Itoa(l.PayloadBytes))
	}
	return append(args, l.URL)
}

// Env is base without any proxy settings, plus HTTP_PROXY when l.Proxy is set.
func (l Load) Env(base []string) []string {
	out := slices.DeleteFunc(slices.Clone(base), func(kv string) bool {
		k, _, _ := strings.Cut(kv, "=")
		switch strings.ToUpper(k) {
		case "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "REQUEST_METHOD":
			return true
		}
		return false
	})
	if l.Proxy != "" {
		out = append(out, "HTTP_PROXY=http://"+l.Proxy)
	}
	return out
}

// Run runs the load in dir (for its JSON file) and returns the parsed result.
// Cancelling ctx stops fortio.
func (l Load) Run(ctx context.Context, dir string) (Result, error) {
	f, err := os.CreateTemp(dir, "fortio-*.json")
	if err != nil {
		return Result{}, err
	}
	f.Close()
	defer os.Remove(f.Name())
	cmd := exec.CommandContext(ctx, l.Binary, l.Args(f.Name())...)
	cmd.Dir = dir
	cmd.Env = l.Env(os.Environ())
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		return Result{}, fmt.Errorf("fortio load %s: %w; its output ends with:\n%s", l.URL, err, tail(out.String(), 6))
	}
	b, err := os.ReadFile(f.Name())
	if err != nil {
		return Result{}, err
	}
	return ParseResult(b)
}

// ServerArgs are the arguments of fortio's echo server on addr (host:port) and
// nothing else: no gRPC, redirect, TCP or UDP echo ports.
func ServerArgs(addr string) []string {
	return []string{"server", "-http-port", addr, "-grpc-port", "disabled", "-redirect-port", "disabled",
		"-tcp-port", "disabled", "-udp-port", "disabled", "-loglevel", "warning"}
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Version reads the version of the fortio binary.
func Version(binary string) (string, error) {
	out, err := exec.Command(binary, "version").Output()
	if err != nil {
		return "", fmt.Errorf("%s version: %w", filepath.Base(binary), err)
	}
	return strings.TrimSpace(string(out)), nil
}
