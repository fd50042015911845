package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/trellis-mesh/trellis/examples/bookstore"
	"github.com/trellis-mesh/trellis/internal/controlplane"
	"github.com/trellis-mesh/trellis/internal/source/local"
)

type demoOptions struct {
	*globals
	duration   time.Duration
	output     string
	permissive bool
	isolation  string
}

func newDemoCmd(g *globals) *cobra.Command {
	o := &demoOptions{globals: g}
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run the bookstore demo on this machine",
		Long: `Starts a control plane and the bookstore apps (bookbuyer, bookthief, bookstore v1 and v2,
bookwarehouse), each under 'trellis run' with its own sidecar, applies the demo's SMI
resources in strict mode (bookbuyer may buy books, bookthief may not; 50/50 split between
bookstore v1 and v2), and prints a summary each second. From another terminal,
'trellis apply -f examples/bookstore/traffic-split-v2.yaml' moves the traffic.

Ctrl-C stops everything. With --duration it stops by itself and exits 1 if the demo's
expectations failed: bookbuyer served (>= 95% 2xx) and bookthief denied (100%).`,
		Example: "  trellis demo\n  trellis demo --duration 30s -o json\n  trellis demo --permissive",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.DurationVar(&o.duration, "duration", 0, "stop after this long and check the expectations (0: until Ctrl-C)")
	f.StringVarP(&o.output, "output", "o", "", "json: print the final summary as JSON (the live summary goes to stderr)")
	f.StringVar(&o.isolation, "isolation", "none", "none: the apps share the host's network and use their sidecars as HTTP proxies; netns (root): each app gets a network namespace of its own with transparent capture, as pods have")
	f.BoolVar(&o.permissive, "permissive", false, "start in permissive mode: every meshed identity may call every service")
	return cmd
}

// DemoInfoFile, in the state directory while the demo runs, says where the
// demo's clients serve their pages and /stats.
const DemoInfoFile = "demo.json"

// DemoInfo is what DemoInfoFile holds.
type DemoInfo struct {
	Clients map[string]string `json:"clients"` // app → base URL
}

// clientStats is what bookbuyer and bookthief serve at /stats.
type clientStats = bookstore.ClientStats

// DemoSummary is the demo's final report.
type DemoSummary struct {
	Mode           string                  `json:"mode"`
	Seconds        float64                 `json:"seconds"`
	Clients        map[string]*clientStats `json:"clients"`
	BookstoreShare map[string]float64      `json:"bookstore_share"`
	Sidecars       []sidecarInfo           `json:"sidecars"`
	Expectations   []expectation           `json:"expectations"`
	Passed         bool                    `json:"passed"`
}

type sidecarInfo struct {
	Workload string `json:"workload"`
	PID      int    `json:"pid"`
	RSSBytes int64  `json:"rss_bytes"`
}

type expectation struct {
	Name   string `json:"name"`
	Passed bool   `json:"passed"`
	Detail string `json:"detail"`
}

// demoWorkload is one app of the demo under `trellis run`.
type demoWorkload struct {
	name    string
	runArgs []string
	appArgs []string
	cmd     *exec.Cmd
	done    chan error
}

func (o *demoOptions) run(ctx context.Context, stdout, stderr io.Writer) error {
	if o.output != "" && o.output != "json" {
		return fmt.Errorf("-o %q: the demo prints json only", o.output)
	}
	live := stdout
	if o.output == "json" {
		live = stderr
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	proxyBin, err := findProxy("")
	if err != nil {
		return err
	}
	if c, err := controlplane.Dial(o.stateDir); err == nil {
		if _, err := c.Status(ctx); err == nil {
			return fmt.Errorf("a control plane already serves %s (pid %d): stop it, or give the demo its own --state-dir", o.stateDir, c.Info.PID)
		}
	}
	logDir := filepath.Join(o.stateDir, "logs")
	if err := os.MkdirAll(logDir, 0o700); err != nil {
		return err
	}
	cpLog, err := os.Create(filepath.Join(logDir, "control-plane.log"))
	if err != nil {
		return err
	}
	defer cpLog.Close()
	fmt.Fprintf(live, "trellis demo: state in %s, logs in %s\n", o.stateDir, logDir)

	// The control plane runs in this process, on ports of its own.
	cpCtx, stopCP := context.WithCancel(context.WithoutCancel(ctx))
	cpDone := make(chan error, 1)
	cpReady := make(chan struct{})
	go func() {
		cpDone <- controlplane.Run(cpCtx, controlplane.Options{
			StateDir: o.stateDir, GRPCAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
			Grace:  time.Second,
			Logger: slog.New(slog.NewJSONHandler(cpLog, nil)),
			Ready:  func(controlplane.Info) { close(cpReady) },
		})
	}()
	defer func() { stopCP(); <-cpDone }()
	select {
	case err := <-cpDone:
		return fmt.Errorf("control plane: %w", err)
	case <-cpReady:
	}
	c, err := controlplane.Dial(o.stateDir)
	if err != nil {
		return err
	}
	// Registrations left by an earlier run whose processes are gone.
	if stale, err := c.Workloads(ctx); err == nil {
		for _, w := range stale {
			c.Deregister(ctx, w.ID)
		}
	}
	mode := "strict"
	meshFile := "mesh-config-strict.yaml"
	if o.permissive {
		mode, meshFile = "permissive", "mesh-config-permissive.yaml"
	}
	for _, f := range []string{meshFile, "traffic-access.yaml"} {
		if err := applyEmbedded(ctx, c, f); err != nil {
			return err
		}
	}

	isolated := false
	switch o.isolation {
	case "", "none":
	case "netns":
		isolated = true
	default:
		return fmt.Errorf("--isolation %q: want none or netns", o.isolation)
	}
	ports := map[string]int{}
	for _, n := range []string{"bookstore-v1", "bookstore-v2", "bookwarehouse", "bookbuyer", "bookthief"} {
		if ports[n], err = freePort(); err != nil {
			return err
		}
	}
	listen := func(n string) string { return fmt.Sprintf("127.0.0.1:%d", ports[n]) }
	clientListen := listen
	if isolated {
		// The clients' pages are read from the host, at their namespaces'
		// addresses, on ports inbound capture leaves alone.
		clientListen = func(n string) string { return fmt.Sprintf("0.0.0.0:%d", ports[n]) }
	}
	runArgs := func(ns, account, name, services string, port int) []string {
		a := []string{"--state-dir", o.stateDir, "run", "--proxy", proxyBin, "-n", ns, "--account", account, "--name", name}
		if services != "" {
			a = append(a, "--service", services, "--port", fmt.Sprint(port))
		}
		if isolated {
			a = append(a, "--isolation", "netns")
			if services == "" {
				a = append(a, "--exclude-inbound-ports", fmt.Sprint(ports[name]))
			}
		}
		return a
	}
	servers := []*demoWorkload{
		{name: "bookwarehouse", runArgs: runArgs("bookwarehouse", "bookwarehouse", "bookwarehouse", "bookwarehouse:14001", ports["bookwarehouse"]),
			appArgs: []string{"bookwarehouse", "--listen", listen("bookwarehouse")}},
		{name: "bookstore-v1", runArgs: runArgs("bookstore", "bookstore", "bookstore-v1", "bookstore:14001,bookstore-v1:14001", ports["bookstore-v1"]),
			appArgs: []string{"bookstore", "--listen", listen("bookstore-v1"), "--version", "v1"}},
		{name: "bookstore-v2", runArgs: runArgs("bookstore", "bookstore-v2", "bookstore-v2", "bookstore:14001,bookstore-v2:14001", ports["bookstore-v2"]),
			appArgs: []string{"bookstore", "--listen", listen("bookstore-v2"), "--version", "v2"}},
	}
	clients := []*demoWorkload{
		{name: "bookbuyer", runArgs: runArgs("bookbuyer", "bookbuyer", "bookbuyer", "", 0),
			appArgs: []string{"bookbuyer", "--listen", clientListen("bookbuyer")}},
		{name: "bookthief", runArgs: runArgs("bookthief", "bookthief", "bookthief", "", 0),
			appArgs: []string{"bookthief", "--listen", clientListen("bookthief")}},
	}
	var started []*demoWorkload
	defer func() {
		// Clients first, then the servers they call: nothing fails on the way out.
		for i := len(started) - 1; i >= 0; i-- {
			started[i].stop()
		}
	}()
	start := func(ws []*demoWorkload) error {
		for _, w := range ws {
			if err := w.start(self, logDir); err != nil {
				return err
			}
			started = append(started, w)
		}
		return nil
	}
	if err := start(servers); err != nil {
		return err
	}
	if err := waitWorkloads(ctx, c, []string{"bookwarehouse", "bookstore-v1", "bookstore-v2"}, servers, 30*time.Second); err != nil {
		return err
	}
	if err := applyEmbedded(ctx, c, "traffic-split-50-50.yaml"); err != nil {
		return err
	}
	if err := start(clients); err != nil {
		return err
	}
	if err := waitWorkloads(ctx, c, []string{"bookbuyer", "bookthief"}, clients, 30*time.Second); err != nil {
		return err
	}
	pages := map[string]string{} // client → host:port of its stats page
	for _, w := range clients {
		pages[w.name] = listen(w.name)
	}
	if isolated {
		ws, err := c.Workloads(ctx)
		if err != nil {
			return err
		}
		for _, w := range ws {
			if _, ok := pages[w.Name]; ok {
				host, _, _ := net.SplitHostPort(w.AdminAddress)
				pages[w.Name] = net.JoinHostPort(host, fmt.Sprint(ports[w.Name]))
			}
		}
	}
	info := DemoInfo{Clients: map[string]string{}}
	for _, w := range clients {
		info.Clients[w.name] = "http://" + pages[w.name]
	}
	infoPath := filepath.Join(o.stateDir, DemoInfoFile)
	if b, err := json.Marshal(info); err == nil {
		local.WriteFileAtomic(infoPath, b, 0o644)
		defer os.Remove(infoPath)
	}
	if isolated {
		fmt.Fprintln(live, "trellis demo: each app in a network namespace of its own, its traffic captured transparently.")
	}
	fmt.Fprintf(live, "trellis demo: %s mode; bookbuyer and bookthief call bookstore.bookstore:14001 (split 50/50 v1/v2).\n", mode)
	fmt.Fprintf(live, "trellis demo: bookbuyer's page %s, bookthief's %s. Ctrl-C stops.\n", info.Clients["bookbuyer"], info.Clients["bookthief"])

	began := time.Now()
	var deadline <-chan time.Time
	if o.duration > 0 {
		t := time.NewTimer(o.duration)
		defer t.Stop()
		deadline = t.C
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	hc := &http.Client{Timeout: 2 * time.Second}
	var prev *clientStats
	stats := map[string]*clientStats{}
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-deadline:
			break loop
		case <-tick.C:
		}
		for _, w := range clients {
			if s, err := fetchClientStats(hc, pages[w.name]); err == nil {
				stats[w.name] = s
			}
		}
		for _, w := range started {
			select {
			case err := <-w.done:
				return fmt.Errorf("%s stopped unexpectedly (%v); see %s", w.name, err, filepath.Join(logDir, w.name+".log"))
			default:
			}
		}
		printLive(live, time.Since(began), stats, prev)
		if b := stats["bookbuyer"]; b != nil {
			cp := *b
			cp.ServedBy = map[string]int64{}
			for k, v := range b.ServedBy {
				cp.ServedBy[k] = v
			}
			prev = &cp
		}
	}

	// Final figures, taken while everything still runs.
	for _, w := range clients {
		if s, err := fetchClientStats(hc, pages[w.name]); err == nil {
			stats[w.name] = s
		}
	}
	sum := DemoSummary{Mode: mode, Seconds: time.Since(began).Seconds(), Clients: stats, BookstoreShare: map[string]float64{}}
	if ws, err := c.Workloads(context.WithoutCancel(ctx)); err == nil {
		for _, w := range ws {
			if pi, err := fetchProcess(hc, w.AdminAddress); err == nil {
				sum.Sidecars = append(sum.Sidecars, sidecarInfo{Workload: w.ID, PID: pi.PID, RSSBytes: pi.RSSBytes})
			}
		}
	}
	if b := stats["bookbuyer"]; b != nil {
		var total int64
		for _, v := range b.ServedBy {
			total += v
		}
		for k, v := range b.ServedBy {
			if total > 0 {
				sum.BookstoreShare[k] = float64(v) / float64(total)
			}
		}
	}
	sum.Expectations = demoExpectations(stats, o.permissive)
	sum.Passed = true
	for _, e := range sum.Expectations {
		sum.Passed = sum.Passed && e.Passed
	}
	if o.output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(sum)
	} else {
		fmt.Fprintln(stdout, "trellis demo: final")
		for _, e := range sum.Expectations {
			mark := "ok  "
			if !e.Passed {
				mark = "FAIL"
			}
			fmt.Fprintf(stdout, "  %s %s: %s\n", mark, e.Name, e.Detail)
		}
		for _, s := range sum.Sidecars {
			fmt.Fprintf(stdout, "  sidecar %s: RSS %.1f MiB\n", s.Workload, float64(s.RSSBytes)/(1<<20))
		}
	}
	if o.duration > 0 && !sum.Passed {
		return &exitError{code: 1, msg: "the demo's expectations failed"}
	}
	return nil
}

func demoExpectations(stats map[string]*clientStats, permissive bool) []expectation {
	var out []expectation
	b, t := stats["bookbuyer"], stats["bookthief"]
	if b == nil || b.Total == 0 {
		out = append(out, expectation{Name: "bookbuyer served", Detail: "bookbuyer made no requests"})
	} else {
		r := float64(b.OK) / float64(b.Total)
		out = append(out, expectation{Name: "bookbuyer served", Passed: r >= 0.95,
			Detail: fmt.Sprintf("%d of %d requests answered 2xx (%.1f%%, want >= 95%%); reasons %v", b.OK, b.Total, 100*r, b.Reasons)})
	}
	name := "bookthief denied"
	if permissive {
		name = "bookthief served (permissive mode)"
	}
	if t == nil || t.Total == 0 {
		out = append(out, expectation{Name: name, Detail: "bookthief made no requests"})
	} else if permissive {
		r := float64(t.OK) / float64(t.Total)
		out = append(out, expectation{Name: name, Passed: r >= 0.95, Detail: fmt.Sprintf("%d of %d answered 2xx", t.OK, t.Total)})
	} else {
		out = append(out, expectation{Name: name, Passed: t.Denied == t.Total,
			Detail: fmt.Sprintf("%d of %d requests denied with x-trellis-reason (want all); reasons %v", t.Denied, t.Total, t.Reasons)})
	}
	return out
}

func printLive(w io.Writer, el time.Duration, stats map[string]*clientStats, prev *clientStats) {
	var b strings.Builder
	fmt.Fprintf(&b, "%4ds", int(el.Seconds()+0.5))
	for _, n := range []string{"bookbuyer", "bookthief"} {
		s := stats[n]
		if s == nil {
			fmt.Fprintf(&b, " | %s -", n)
			continue
		}
		fmt.Fprintf(&b, " | %s ok %d denied %d failed %d", n, s.OK, s.Denied, s.Failed)
	}
	if s := stats["bookbuyer"]; s != nil {
		names := make([]string, 0, len(s.ServedBy))
		var total, totalDelta int64
		for k, v := range s.ServedBy {
			names = append(names, k)
			total += v
			if prev != nil {
				totalDelta += v - prev.ServedBy[k]
			}
		}
		sort.Strings(names)
		b.WriteString(" | share")
		for _, k := range names {
			delta := s.ServedBy[k]
			if prev != nil {
				delta -= prev.ServedBy[k]
			}
			fmt.Fprintf(&b, " %s %s (last 1s %s)", k, pct(s.ServedBy[k], total), pct(delta, totalDelta))
		}
	}
	fmt.Fprintln(w, b.String())
}

func pct(n, total int64) string {
	if total == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f%%", 100*float64(n)/float64(total))
}

func applyEmbedded(ctx context.Context, c *controlplane.Client, name string) error {
	b, err := bookstore.Manifests.ReadFile(name)
	if err != nil {
		return err
	}
	if _, err := c.Apply(ctx, "examples/bookstore/"+name, b); err != nil {
		return fmt.Errorf("apply %s: %w", name, err)
	}
	return nil
}

func (w *demoWorkload) start(self, logDir string) error {
	f, err := os.Create(filepath.Join(logDir, w.name+".log"))
	if err != nil {
		return err
	}
	args := append(append(append([]string{}, w.runArgs...), "--", self, "demo-app"), w.appArgs...)
	w.cmd = exec.Command(self, args...)
	w.cmd.Stdout, w.cmd.Stderr = f, f
	// Its own process group: a Ctrl-C reaches the demo only, which stops the
	// workloads in order. Pdeathsig: nothing outlives the demo.
	w.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := w.cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start %s: %w", w.name, err)
	}
	w.done = make(chan error, 1)
	go func() {
		err := w.cmd.Wait()
		f.Close()
		w.done <- err
		close(w.done)
	}()
	return nil
}

func (w *demoWorkload) stop() {
	if w.cmd == nil || w.cmd.Process == nil {
		return
	}
	w.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-w.done:
	case <-time.After(20 * time.Second):
		w.cmd.Process.Kill()
		<-w.done
	}
}

// waitWorkloads waits until the named workloads are registered and connected, and
// those with services are ready.
func waitWorkloads(ctx context.Context, c *controlplane.Client, names []string, ws []*demoWorkload, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		list, err := c.Workloads(ctx)
		if err != nil {
			return err
		}
		pending := map[string]bool{}
		for _, n := range names {
			pending[n] = true
		}
		for _, w := range list {
			if w.Connected && (w.Ready || len(w.Services) == 0) {
				delete(pending, w.Name)
			}
		}
		if len(pending) == 0 {
			return nil
		}
		for _, w := range ws {
			select {
			case err := <-w.done:
				return fmt.Errorf("%s exited during start-up (%v); see its log in the state directory's logs/", w.name, err)
			default:
			}
		}
		if time.Now().After(deadline) {
			var p []string
			for n := range pending {
				p = append(p, n)
			}
			sort.Strings(p)
			return fmt.Errorf("not ready after %s: %s; see the logs in the state directory's logs/", timeout, strings.Join(p, ", "))
		}
		select {
		case <-ctx.Done():
			return errors.New("interrupted")
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func fetchClientStats(hc *http.Client, addr string) (*clientStats, error) {
	var s clientStats
	return &s, getJSON(hc, "http://"+addr+"/stats", &s)
}

type processInfo struct {
	PID      int   `json:"pid"`
	RSSBytes int64 `json:"rss_bytes"`
}

func fetchProcess(hc *http.Client, admin string) (processInfo, error) {
	var cfg struct {
		Process processInfo `json:"process"`
	}
	err := getJSON(hc, "http://"+admin+"/config", &cfg)
	return cfg.Process, err
}

func getJSON(hc *http.Client, url string, v any) error {
	resp, err := hc.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

func newDemoAppCmd() *cobra.Command {
	return &cobra.Command{
		Use:                "demo-app APP [FLAGS]",
		Short:              "Run one of the bookstore demo's apps (bookbuyer, bookthief, bookstore, bookwarehouse)",
		Example:            "  trellis demo-app bookstore --listen 127.0.0.1:14001 --version v1",
		Hidden:             true,
		DisableFlagParsing: true,
		Args:               cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return bookstore.Run(cmd.Context(), args[0], args[1:], cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
}
