package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/trellis-mesh/trellis/bench/fortio"
	"github.com/trellis-mesh/trellis/bench/procfs"
	"github.com/trellis-mesh/trellis/internal/freeport"
)

// ScaleOptions configure RunScale, the memory-at-scale benchmark: the client
// sidecar's memory as the mesh grows while its app calls the same few services.
type ScaleOptions struct {
	// Sizes are the numbers of services in the mesh, one fresh mesh each;
	// default 10, 1000, 5000.
	Sizes []int
	// Called is how many of them the app calls (default 5), Requests how many
	// times each (default 200).
	Called, Requests int
	// TrellisBin is the directory with trellis and trellis-proxy; FortioBin the
	// fortio executable, the services' only workload.
	TrellisBin, FortioBin string
	TempDir               string
	Progress              io.Writer
}

// ScaleResult is the client sidecar at one mesh size.
type ScaleResult struct {
	Services int `json:"services"`
	Called   int `json:"called"`
	// RSSBytes is the client sidecar's VmRSS after the calls, HWMBytes its
	// peak (VmHWM) over its life.
	RSSBytes uint64 `json:"rss_bytes"`
	HWMBytes uint64 `json:"hwm_bytes"`
	// Destinations is how many destination configs the sidecar holds (/config).
	Destinations int `json:"destinations"`
	Requests     int `json:"requests"`
	Errors       int `json:"errors"`
}

// ScaleReport is the benchmark's results.
type ScaleReport struct {
	Date        time.Time     `json:"date"`
	Command     string        `json:"command,omitempty"`
	LoadAverage [2]float64    `json:"load_average"`
	Results     []ScaleResult `json:"results"`
	// Ratio is the largest mesh's RSS divided by the smallest's.
	Ratio  float64 `json:"rss_ratio_largest_to_smallest"`
	Budget Budget  `json:"budget"`
}

// RunScale measures the client sidecar's memory at each mesh size. Every
// service is backed by one fortio server, which registers as all of them
// (a workload may back many services, as a pod may): the mesh's size is what
// grows, not the number of processes. Permissive mode, as in seed 000.
func RunScale(ctx context.Context, o ScaleOptions) (*ScaleReport, error) {
	if len(o.Sizes) == 0 {
		o.Sizes = []int{10, 1000, 5000}
	}
	if o.Called == 0 {
		o.Called = 5
	}
	if o.Requests == 0 {
		o.Requests = 200
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	for _, n := range o.Sizes {
		if n < o.Called {
			return nil, fmt.Errorf("a mesh of %d services is smaller than the %d the app calls", n, o.Called)
		}
	}
	for _, p := range []*string{&o.TrellisBin, &o.FortioBin} {
		if abs, err := filepath.Abs(*p); err == nil {
			*p = abs
		}
	}
	for _, b := range []string{filepath.Join(o.TrellisBin, "trellis"), filepath.Join(o.TrellisBin, "trellis-proxy"), o.FortioBin} {
		if st, err := os.Stat(b); err != nil || st.Mode()&0o111 == 0 {
			return nil, fmt.Errorf("%s is missing or not executable: run `make build` and bench/setup.sh", b)
		}
	}
	dir, err := os.MkdirTemp(o.TempDir, "trellis-bench-scale-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	rep := &ScaleReport{Date: time.Now().UTC().Truncate(time.Second), LoadAverage: [2]float64{loadAverage(), 0}}
	for _, n := range o.Sizes {
		fmt.Fprintf(o.Progress, "mesh of %d services: setting up\n", n)
		e := &env{opts: Options{TrellisBin: o.TrellisBin, FortioBin: o.FortioBin}, dir: filepath.Join(dir, strconv.Itoa(n)), sup: &supervisor{}, log: o.Progress}
		res, err := e.scaleOnce(ctx, n, o.Called, o.Requests)
		serr := e.sup.stopAll(25 * time.Second)
		if err = errors.Join(err, serr); err != nil {
			return nil, fmt.Errorf("mesh of %d services: %w", n, err)
		}
		fmt.Fprintf(o.Progress, "  client sidecar RSS %.1f MB (peak %.1f MB), %d destinations held, %d/%d requests failed\n",
			float64(res.RSSBytes)/1e6, float64(res.HWMBytes)/1e6, res.Destinations, res.Errors, res.Requests)
		rep.Results = append(rep.Results, res)
	}
	rep.LoadAverage[1] = loadAverage()
	first, last := rep.Results[0], rep.Results[len(rep.Results)-1]
	rep.Ratio = float64(last.RSSBytes) / float64(first.RSSBytes)
	rep.Budget = check("sidecar RSS, 5,000 services ÷ 10 (permissive, app calls 5)", "≤ 1.10", rep.Ratio, 1.10, "×",
		fmt.Sprintf("%d services: %.1f MB; %d services: %.1f MB", first.Services, float64(first.RSSBytes)/1e6, last.Services, float64(last.RSSBytes)/1e6))
	if first.Services != 10 || last.Services != 5000 {
		rep.Budget.Status, rep.Budget.Detail = NotMeasured, "the budget compares 5,000 services with 10; this run had "+strconv.Itoa(first.Services)+" and "+strconv.Itoa(last.Services)
	}
	return rep, nil
}

// scaleOnce builds a mesh of n services, calls `called` of them `requests`
// times each through the client sidecar, and reads the sidecar's memory.
func (e *env) scaleOnce(ctx context.Context, n, called, requests int) (ScaleResult, error) {
	res := ScaleResult{Services: n, Called: called}
	state := filepath.Join(e.dir, "state")
	if err := os.MkdirAll(state, 0o700); err != nil {
		return res, err
	}
	cp, err := e.sup.start("trellis control-plane",
		e.trellisCmd(state, "control-plane", "--grpc-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"),
		filepath.Join(e.dir, "control-plane.log"), syscall.SIGTERM)
	if err != nil {
		return res, err
	}
	if err := waitFile(ctx, filepath.Join(state, "control-plane.json"), 15*time.Second, cp); err != nil {
		return res, err
	}
	mc := filepath.Join(e.dir, "mesh-config.yaml")
	if err := os.WriteFile(mc, []byte(meshConfig), 0o644); err != nil {
		return res, err
	}
	if out, err := e.trellisCmd(state, "apply", "-f", mc).CombinedOutput(); err != nil {
		return res, fmt.Errorf("trellis apply -f %s: %w: %s", mc, err, out)
	}
	appPort, err := freeport.Pick()
	if err != nil {
		return res, err
	}
	appAddr := "127.0.0.1:" + strconv.Itoa(appPort)
	svcs := make([]string, n)
	for i := range svcs {
		svcs[i] = fmt.Sprintf("svc-%d:%d", i, meshPort)
	}
	serverArgs := append([]string{"run", "-n", meshNamespace, "--account", "server", "--name", "server",
		"--service", strings.Join(svcs, ","), "--port", strconv.Itoa(appPort), "--access-log=false",
		"--", e.opts.FortioBin}, fortio.ServerArgs(appAddr)...)
	srvCmd := e.trellisCmd(state, serverArgs...)
	srvCmd.Dir = e.dir
	if _, err := e.sup.start("trellis run (server)", srvCmd, filepath.Join(e.dir, "server.log"), syscall.SIGTERM); err != nil {
		return res, err
	}
	if _, err := e.sup.start("trellis run (client)",
		e.trellisCmd(state, "run", "-n", meshNamespace, "--account", "client", "--name", "client", "--access-log=false", "--", "sleep", "infinity"),
		filepath.Join(e.dir, "client.log"), syscall.SIGTERM); err != nil {
		return res, err
	}
	var admins map[string]string
	deadline := time.Now().Add(60 * time.Second)
	for {
		if admins, err = e.readyWorkloads(state); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return res, fmt.Errorf("workloads not ready after 60s: %w", err)
		}
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	cfg, err := getSidecarConfig(admins["client"])
	if err != nil {
		return res, fmt.Errorf("client sidecar: %w", err)
	}
	tr := &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: cfg.Listeners.Outbound}), MaxIdleConnsPerHost: 4}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	for i := range called {
		target := fmt.Sprintf("http://svc-%d.%s:%d/echo", i, meshNamespace, meshPort)
		if err := waitOK(ctx, target, cfg.Listeners.Outbound, 15*time.Second); err != nil {
			return res, fmt.Errorf("through the client sidecar: %w", err)
		}
		for range requests {
			res.Requests++
			resp, err := hc.Get(target)
			if err != nil {
				res.Errors++
				continue
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				res.Errors++
			}
		}
	}
	time.Sleep(time.Second) // let the sidecar settle after the last request
	st, err := procfs.FS{}.Status(cfg.Process.PID)
	if err != nil {
		return res, fmt.Errorf("client sidecar %d: %w", cfg.Process.PID, err)
	}
	res.RSSBytes, res.HWMBytes = st.VmRSS, st.VmHWM
	after, err := getSidecarConfig(admins["client"])
	res.Destinations = len(after.Destinations)
	return res, err
}

// WriteScaleTable prints the memory-at-scale results and their budget.
func WriteScaleTable(w io.Writer, r *ScaleReport) error {
	var b strings.Builder
	fmt.Fprintf(&b, "Sidecar memory as the mesh grows (permissive mode; the app calls %d services)\n", r.Results[0].Called)
	fmt.Fprintf(&b, "  %-9s %10s %10s %13s %9s\n", "services", "RSS MB", "peak MB", "destinations", "errors")
	for _, x := range r.Results {
		fmt.Fprintf(&b, "  %-9d %10.1f %10.1f %13d %9d\n", x.Services, float64(x.RSSBytes)/1e6, float64(x.HWMBytes)/1e6, x.Destinations, x.Errors)
	}
	fmt.Fprintf(&b, "  RSS %d services ÷ %d services: %.3f\n", r.Results[len(r.Results)-1].Services, r.Results[0].Services, r.Ratio)
	fmt.Fprintf(&b, "\nBudget (BUDGETS.md)\n  %-12s %s %s (%s)\n", r.Budget.Status, r.Budget.Figure, r.Budget.Budget, r.Budget.Detail)
	_, err := io.WriteString(w, b.String())
	return err
}
