package cpbench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/common/expfmt"
	pmodel "github.com/prometheus/common/model"
	"github.com/trellis-mesh/trellis/internal/controlplane"
)

// controlPlane is the child `trellis control-plane`.
type controlPlane struct {
	cmd    *exec.Cmd
	pid    int
	dir    string
	info   controlplane.Info
	client *controlplane.Client
	stderr *tailBuffer
	exited chan struct{}
}

// startControlPlane starts bin as a control plane on a fresh state directory,
// listening on loopback ports the kernel picks, and waits until it serves.
func startControlPlane(ctx context.Context, bin string, env []string) (*controlPlane, error) {
	dir, err := os.MkdirTemp("", "trellis-cpbench-")
	if err != nil {
		return nil, err
	}
	cp := &controlPlane{dir: dir, stderr: &tailBuffer{max: 16 << 10}, exited: make(chan struct{})}
	cp.cmd = exec.Command(bin, "--state-dir", dir, "control-plane",
		"--grpc-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
		"--grace", "24h", "--log-level", "warn")
	cp.cmd.Env = append(os.Environ(), env...)
	cp.cmd.Stdout = cp.stderr
	cp.cmd.Stderr = cp.stderr
	// Its own process group, so that Ctrl-C reaches the tool, which stops it;
	// and if the tool dies, so does the child.
	cp.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cp.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("starting %s control-plane: %w", bin, err)
	}
	cp.pid = cp.cmd.Process.Pid
	go func() {
		cp.cmd.Wait()
		close(cp.exited)
	}()
	deadline := time.After(30 * time.Second)
	for {
		b, err := os.ReadFile(filepath.Join(dir, controlplane.InfoFile))
		if err == nil && json.Unmarshal(b, &cp.info) == nil && cp.info.PID == cp.pid {
			break
		}
		select {
		case <-cp.exited:
			cp.stop()
			return nil, fmt.Errorf("the control plane exited at start: %s", cp.stderr.String())
		case <-deadline:
			cp.stop()
			return nil, fmt.Errorf("the control plane did not write %s within 30s: %s", controlplane.InfoFile, cp.stderr.String())
		case <-ctx.Done():
			cp.stop()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	cp.client, err = controlplane.Dial(dir)
	if err != nil {
		cp.stop()
		return nil, err
	}
	return cp, nil
}

// stop ends the child (SIGTERM, then SIGKILL after 10s) and removes its state
// directory.
func (cp *controlPlane) stop() {
	select {
	case <-cp.exited:
	default:
		cp.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-cp.exited:
		case <-time.After(10 * time.Second):
			cp.cmd.Process.Kill()
			<-cp.exited
		}
	}
	os.RemoveAll(cp.dir)
}

// pushState is the control plane's push counter and push latency histogram.
type pushState struct {
	pushes float64
	// bounds and cumulative counts of the latency histogram, in seconds.
	bounds []float64
	cum    []uint64
}

// serverP99 returns the upper bound, in milliseconds, of the latency bucket
// holding the 99th percentile of the pushes between a and b, or -1 without any.
func serverP99(a, b pushState) float64 {
	if len(a.cum) != len(b.cum) || len(b.cum) == 0 {
		return -1
	}
	total := b.cum[len(b.cum)-1] - a.cum[len(a.cum)-1]
	if total == 0 {
		return -1
	}
	for i := range b.cum {
		if float64(b.cum[i]-a.cum[i]) >= 0.99*float64(total) {
			return b.bounds[i] * 1000
		}
	}
	return -1
}

// metrics scrapes the control plane's /metrics.
func (cp *controlPlane) metrics(ctx context.Context) (ServerMetrics, error) {
	m, _, err := cp.scrape(ctx)
	return m, err
}

// scrape reads the control plane's /metrics.
func (cp *controlPlane) scrape(ctx context.Context) (ServerMetrics, pushState, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+cp.info.Admin+"/metrics", nil)
	if err != nil {
		return ServerMetrics{}, pushState{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return ServerMetrics{}, pushState{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return ServerMetrics{}, pushState{}, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(pmodel.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return ServerMetrics{}, pushState{}, err
	}
	value := func(name string) float64 {
		f := fams[name]
		if f == nil || len(f.GetMetric()) == 0 {
			return -1
		}
		m := f.GetMetric()[0]
		if m.GetCounter() != nil {
			return m.GetCounter().GetValue()
		}
		return m.GetGauge().GetValue()
	}
	count := func(name string) uint64 {
		if f := fams[name]; f != nil && len(f.GetMetric()) > 0 {
			return f.GetMetric()[0].GetHistogram().GetSampleCount()
		}
		return 0
	}
	var ps pushState
	if f := fams["trellis_controlplane_push_latency_seconds"]; f != nil && len(f.GetMetric()) > 0 {
		for _, b := range f.GetMetric()[0].GetHistogram().GetBucket() {
			ps.bounds = append(ps.bounds, b.GetUpperBound())
			ps.cum = append(ps.cum, b.GetCumulativeCount())
		}
	}
	ps.pushes = value("trellis_controlplane_pushes_total")
	if ps.pushes < 0 || ps.cum == nil {
		return ServerMetrics{}, pushState{}, errors.New("/metrics lacks trellis_controlplane_pushes_total or trellis_controlplane_push_latency_seconds")
	}
	return ServerMetrics{
		ConnectedProxies:   value("trellis_controlplane_connected_proxies"),
		Streams:            value("trellis_controlplane_streams"),
		Pushes:             value("trellis_controlplane_pushes_total"),
		CertificatesIssued: value("trellis_controlplane_certificates_issued_total"),
		PushLatencyCount:   count("trellis_controlplane_push_latency_seconds"),
		SnapshotBuilds:     count("trellis_controlplane_snapshot_build_seconds"),
	}, ps, nil
}

// readMemory reads VmRSS and VmHWM from /proc/PID/status.
func readMemory(pid int) (Memory, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return Memory{}, err
	}
	defer f.Close()
	m := Memory{PID: pid}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fields := strings.Fields(v)
		if len(fields) != 2 || fields[1] != "kB" {
			continue
		}
		n, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "VmRSS":
			m.RSSBytes = n << 10
		case "VmHWM":
			m.PeakRSSBytes = n << 10
		}
	}
	if m.RSSBytes == 0 {
		return m, fmt.Errorf("/proc/%d/status has no VmRSS", pid)
	}
	return m, sc.Err()
}

// tailBuffer keeps the last max bytes written, for error messages.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   bytes.Buffer
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b.Write(p)
	if over := t.b.Len() - t.max; over > 0 {
		t.b.Next(over)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.TrimSpace(t.b.String())
}
