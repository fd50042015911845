package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/syncbuf"
)

// bin holds the binaries built once for all tests.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "trellis-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = dir
	for _, c := range []string{"trellis", "trellis-proxy"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, c), "../../cmd/"+c)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "build", c, err)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// trellis runs the CLI against stateDir and returns stdout, stderr and the error.
func trellis(t *testing.T, stateDir string, args ...string) (string, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "trellis"), append([]string{"--state-dir", stateDir}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return out.String(), errb.String(), err
}

// proc is a background process started by a test.
type proc struct {
	cmd  *exec.Cmd
	out  *bytes.Buffer
	errb *syncbuf.Buffer
	done chan struct{}
}

// start runs trellis in the background; the test stops it (SIGINT, then SIGKILL)
// at cleanup if it still runs.
func start(t *testing.T, stateDir string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(filepath.Join(bin, "trellis"), append([]string{"--state-dir", stateDir}, args...)...)
	p := &proc{cmd: cmd, out: &bytes.Buffer{}, errb: &syncbuf.Buffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.errb
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { cmd.Wait(); close(p.done) }()
	t.Cleanup(func() { p.stop(t) })
	return p
}

func (p *proc) stop(t *testing.T) {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		t.Errorf("process %d did not stop 30s after SIGINT; killing its group", p.cmd.Process.Pid)
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
}

// wait waits for the process to exit, up to d.
func (p *proc) wait(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(d):
		t.Fatalf("process still running after %s; stderr:\n%s", d, p.errb.String())
	}
}

// waitFor polls cond every 100ms until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// demoSummary mirrors the fields of `trellis demo -o json` the tests read.
type demoSummary struct {
	Mode    string `json:"mode"`
	Clients map[string]struct {
		Total    int64            `json:"total"`
		OK       int64            `json:"ok"`
		Denied   int64            `json:"denied"`
		Failed   int64            `json:"failed"`
		Reasons  map[string]int64 `json:"reasons"`
		ServedBy map[string]int64 `json:"served_by"`
	} `json:"clients"`
	BookstoreShare map[string]float64 `json:"bookstore_share"`
	Sidecars       []struct {
		Workload string `json:"workload"`
		PID      int    `json:"pid"`
		RSSBytes int64  `json:"rss_bytes"`
	} `json:"sidecars"`
	Passed bool `json:"passed"`
}

func parseSummary(t *testing.T, out string) demoSummary {
	t.Helper()
	var s demoSummary
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("demo output is not JSON: %v\n%s", err, out)
	}
	return s
}

// sidecarMetrics reads a sidecar's /metrics from its admin address.
func sidecarMetrics(t *testing.T, admin string) []byte {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("metrics of %s: %v", admin, err)
	}
	return b
}

// noLeftovers checks that no process started from bin is still running.
func noLeftovers(t *testing.T) {
	t.Helper()
	waitFor(t, 15*time.Second, "every trellis process to exit", func() bool {
		entries, _ := os.ReadDir("/proc")
		for _, e := range entries {
			exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
			if err == nil && strings.HasPrefix(exe, bin) {
				return false
			}
		}
		return true
	})
}

// dumpLogsOnFailure prints the tail of every log in the state directory when the
// test fails, so that a failure in CI can be read without the machine.
func dumpLogsOnFailure(t *testing.T, state string) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		files, _ := filepath.Glob(filepath.Join(state, "logs", "*.log"))
		for _, f := range files {
			b, _ := os.ReadFile(f)
			lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
			if len(lines) > 15 {
				lines = lines[len(lines)-15:]
			}
			t.Logf("--- %s (last %d lines)\n%s", filepath.Base(f), len(lines), strings.Join(lines, "\n"))
		}
	})
}
