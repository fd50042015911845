// Command trellis-bench runs Trellis's benchmark harness (package bench): direct,
// trellis-2hop, nginx-2hop and haproxy-2hop under a fixed fortio load in
// alternating rounds. It prints a table to stdout, progress to stderr, and
// writes the results as JSON. `make bench` and `make bench-smoke` run it.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/trellis-mesh/trellis/bench"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	var ee exitError
	switch {
	case errors.As(err, &ee):
		fmt.Fprintln(os.Stderr, "trellis-bench:", ee.msg)
		os.Exit(ee.code)
	case err != nil:
		fmt.Fprintln(os.Stderr, "trellis-bench:", err)
		os.Exit(1)
	}
}

// exitError carries an exit code other than 1.
type exitError struct {
	code int
	msg  string
}

func (e exitError) Error() string { return e.msg }

func lookPath(name, fallback string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	return fallback
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("trellis-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o bench.Options
	var configs, out string
	var failOnErrors bool
	var scale string
	fs.StringVar(&configs, "configs", strings.Join(bench.AllConfigurations(), ","), "comma-separated configurations to run, in round order")
	fs.IntVar(&o.Rounds, "rounds", 3, "rounds of every configuration; medians are reported")
	fs.DurationVar(&o.Duration, "duration", 10*time.Second, "measured period of each round")
	fs.DurationVar(&o.Warmup, "warmup", 3*time.Second, "unmeasured load before each measured period (0s: none)")
	fs.Float64Var(&o.QPS, "qps", 1000, "fixed request rate")
	fs.IntVar(&o.Connections, "connections", 16, "keep-alive connections of the load")
	fs.IntVar(&o.PayloadBytes, "payload", 1024, "request body bytes, echoed back")
	fs.IntVar(&o.Probes, "probes", 5, "extra sidecar starts to sample start-to-ready")
	fs.StringVar(&o.TrellisBin, "trellis-bin", "bin", "directory with trellis and trellis-proxy (make build)")
	fs.StringVar(&o.FortioBin, "fortio", filepath.Join("bench", ".bin", "fortio"), "fortio binary (bench/setup.sh)")
	fs.StringVar(&o.NginxBin, "nginx", lookPath("nginx", "/usr/sbin/nginx"), "nginx binary")
	fs.StringVar(&o.HAProxyBin, "haproxy", lookPath("haproxy", "/usr/sbin/haproxy"), "haproxy binary")
	fs.StringVar(&out, "out", filepath.Join("bench", "results", "latest.json"), "JSON results file (\"\": none)")
	fs.BoolVar(&failOnErrors, "fail-on-errors", false, "exit 1 if any request failed, as well as when a configuration failed")
	fs.StringVar(&scale, "scale", "", "run the memory-at-scale benchmark instead, at these mesh sizes (services, comma-separated, such as 10,1000,5000)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: trellis-bench [flags]\n\nExample (what make bench-smoke runs):\n  trellis-bench --duration 2s --warmup 0s --rounds 1 --probes 1 --fail-on-errors --out bench/results/smoke.json\n\nFlags:")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return exitError{2, err.Error()}
	}
	if fs.NArg() > 0 {
		return exitError{2, fmt.Sprintf("unexpected arguments %q", fs.Args())}
	}
	for _, c := range strings.Split(configs, ",") {
		if c = strings.TrimSpace(c); c != "" {
			o.Configurations = append(o.Configurations, c)
		}
	}
	o.Progress = stderr
	if scale != "" {
		return runScale(ctx, args, scale, o, out, stdout, stderr)
	}

	rep, err := bench.Run(ctx, o)
	if err != nil {
		return err
	}
	rep.Command = strings.Join(append([]string{"trellis-bench"}, args...), " ")
	if err := bench.WriteTable(stdout, rep); err != nil {
		return err
	}
	if out != "" {
		if err := writeJSON(out, rep); err != nil {
			return err
		}
		fmt.Fprintln(stderr, "wrote", out)
	}
	if failed := rep.Failed(); len(failed) > 0 {
		return fmt.Errorf("configurations without results: %s", strings.Join(failed, ", "))
	}
	if n := rep.Errors(); failOnErrors && n > 0 {
		return fmt.Errorf("%d requests failed (--fail-on-errors)", n)
	}
	return nil
}

// runScale runs the memory-at-scale benchmark and reports it like the main one.
func runScale(ctx context.Context, args []string, sizes string, o bench.Options, out string, stdout, stderr io.Writer) error {
	so := bench.ScaleOptions{TrellisBin: o.TrellisBin, FortioBin: o.FortioBin, TempDir: o.TempDir, Progress: stderr}
	for _, f := range strings.Split(sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return exitError{2, fmt.Sprintf("--scale: %q is not a number of services", f)}
		}
		so.Sizes = append(so.Sizes, n)
	}
	rep, err := bench.RunScale(ctx, so)
	if err != nil {
		return err
	}
	rep.Command = strings.Join(append([]string{"trellis-bench"}, args...), " ")
	if err := bench.WriteScaleTable(stdout, rep); err != nil {
		return err
	}
	if out != "" {
		if err := writeJSON(out, rep); err != nil {
			return err
		}
		fmt.Fprintln(stderr, "wrote", out)
	}
	for _, r := range rep.Results {
		if r.Errors > 0 {
			return fmt.Errorf("%d of %d requests failed with %d services", r.Errors, r.Requests, r.Services)
		}
	}
	return nil
}

// writeJSON writes a report atomically.
func writeJSON(path string, rep any) error {
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
