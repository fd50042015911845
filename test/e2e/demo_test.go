package e2e

import (
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDemo runs the acceptance check: `trellis demo --duration 30s -o json`
// exits 0 with bookbuyer served, bookthief denied with a reason, and the 50/50
// split near even.
func TestDemo(t *testing.T) {
	state := t.TempDir()
	p := start(t, state, "demo", "--duration", "30s", "-o", "json")
	dumpLogsOnFailure(t, state)
	p.wait(t, 2*time.Minute)
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("trellis demo exit code %d, want 0; stderr:\n%s\nstdout:\n%s", code, p.errb.String(), p.out.String())
	}
	s := parseSummary(t, p.out.String())
	if !s.Passed || s.Mode != "strict" {
		t.Errorf("passed=%v mode=%q, want passed in strict mode", s.Passed, s.Mode)
	}
	b, th := s.Clients["bookbuyer"], s.Clients["bookthief"]
	if b.Total < 100 || float64(b.OK)/float64(b.Total) < 0.95 {
		t.Errorf("bookbuyer: %d of %d answered 2xx, want >= 95%% of at least 100; reasons %v", b.OK, b.Total, b.Reasons)
	}
	if th.Total < 100 || th.Denied != th.Total || th.Reasons["denied"] != th.Total {
		t.Errorf("bookthief: %d of %d denied (reasons %v), want all denied with reason denied", th.Denied, th.Total, th.Reasons)
	}
	for _, v := range []string{"bookstore-v1", "bookstore-v2"} {
		if sh := s.BookstoreShare[v]; sh < 0.35 || sh > 0.65 {
			t.Errorf("share of %s = %.2f, want between 0.35 and 0.65", v, sh)
		}
	}
	if len(s.Sidecars) != 5 {
		t.Errorf("got %d sidecars in the summary, want 5", len(s.Sidecars))
	}
	for _, sc := range s.Sidecars {
		if sc.RSSBytes <= 0 {
			t.Errorf("sidecar %s: RSS %d, want > 0", sc.Workload, sc.RSSBytes)
		}
		t.Logf("sidecar %s: RSS %.1f MiB", sc.Workload, float64(sc.RSSBytes)/(1<<20))
	}
	noLeftovers(t)
	if _, err := os.Stat(filepath.Join(state, "control-plane.json")); err == nil {
		t.Error("control-plane.json left behind after the demo stopped")
	}
}

// clientStats mirrors a demo client's /stats.
type clientStats struct {
	Total    int64            `json:"total"`
	OK       int64            `json:"ok"`
	Denied   int64            `json:"denied"`
	Failed   int64            `json:"failed"`
	ServedBy map[string]int64 `json:"served_by"`
}

func getStats(t *testing.T, url string) clientStats {
	t.Helper()
	s, err := tryStats(url)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func tryStats(url string) (clientStats, error) {
	var s clientStats
	resp, err := http.Get(url + "/stats")
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	return s, json.NewDecoder(resp.Body).Decode(&s)
}

// runningDemo starts the demo without a duration and returns bookbuyer's URL once
// traffic flows.
func runningDemo(t *testing.T, state string, extra ...string) (*proc, map[string]string) {
	t.Helper()
	p := start(t, state, append([]string{"demo"}, extra...)...)
	dumpLogsOnFailure(t, state)
	var info struct {
		Clients map[string]string `json:"clients"`
	}
	waitFor(t, 60*time.Second, "the demo to start its clients", func() bool {
		select {
		case <-p.done:
			t.Fatalf("demo exited early; stderr:\n%s\nstdout:\n%s", p.errb.String(), p.out.String())
		default:
		}
		b, err := os.ReadFile(filepath.Join(state, "demo.json"))
		return err == nil && json.Unmarshal(b, &info) == nil
	})
	waitFor(t, 30*time.Second, "bookbuyer to be served", func() bool {
		s, err := tryStats(info.Clients["bookbuyer"])
		return err == nil && s.OK > 20
	})
	return p, info.Clients
}

// share returns the fraction of requests served by version between two samples.
func share(a, b clientStats, version string) (float64, int64) {
	var total int64
	for k, v := range b.ServedBy {
		total += v - a.ServedBy[k]
	}
	if total == 0 {
		return 0, 0
	}
	return float64(b.ServedBy[version]-a.ServedBy[version]) / float64(total), total
}

// TestSplitMoves applies the v2-only split while the demo runs and checks that
// >= 99% of requests reach v2 within 2 s, then that the v1-only split brings them
// back, with no failed request in between.
func TestSplitMoves(t *testing.T) {
	state := t.TempDir()
	_, clients := runningDemo(t, state)
	buyer := clients["bookbuyer"]
	before := getStats(t, buyer)

	for _, step := range []struct{ file, version string }{
		{"traffic-split-v2.yaml", "bookstore-v2"},
		{"traffic-split-v1.yaml", "bookstore-v1"},
	} {
		applied := time.Now()
		if out, errOut, err := trellis(t, state, "apply", "-f", filepath.Join("..", "..", "examples", "bookstore", step.file)); err != nil {
			t.Fatalf("apply %s: %v\n%s%s", step.file, err, out, errOut)
		}
		time.Sleep(time.Until(applied.Add(2 * time.Second)))
		from := getStats(t, buyer)
		time.Sleep(3 * time.Second)
		to := getStats(t, buyer)
		sh, n := share(from, to, step.version)
		if n < 20 || sh < 0.99 {
			t.Errorf("after %s: %s served %.1f%% of %d requests from 2 s to 5 s after apply, want >= 99%%", step.file, step.version, 100*sh, n)
		}
	}
	after := getStats(t, buyer)
	if after.Failed != before.Failed || after.Denied != before.Denied {
		t.Errorf("requests failed while the split moved: failed %d→%d, denied %d→%d", before.Failed, after.Failed, before.Denied, after.Denied)
	}
}

// TestStatAgrees checks that `trellis stat -o json` agrees with the demo's own
// counters within 5%.
func TestStatAgrees(t *testing.T) {
	state := t.TempDir()
	_, clients := runningDemo(t, state)
	time.Sleep(6 * time.Second)
	out, errOut, err := trellis(t, state, "stat", "-o", "json", "--window", "1s")
	buyer := getStats(t, clients["bookbuyer"])
	if err != nil {
		t.Fatalf("trellis stat: %v\n%s", err, errOut)
	}
	var rows []struct {
		Namespace     string  `json:"namespace"`
		Workload      string  `json:"workload"`
		TotalRequests float64 `json:"total_requests"`
		TotalSuccess  float64 `json:"total_success"`
	}
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("stat output is not JSON: %v\n%s", err, out)
	}
	var served float64
	for _, r := range rows {
		if r.Namespace == "bookstore" && strings.HasPrefix(r.Workload, "bookstore-v") {
			served += r.TotalSuccess
		}
	}
	ok := float64(buyer.OK)
	if served == 0 || ok == 0 || served/ok < 0.95 || served/ok > 1.05 {
		t.Errorf("trellis stat: bookstore v1+v2 served %.0f requests successfully; bookbuyer counted %.0f answered 2xx; want within 5%%\n%s", served, ok, out)
	}
}

// TestDemoCtrlC interrupts a running demo as a terminal's Ctrl-C does (SIGINT to
// its process group) and checks that it exits 0 and leaves no process behind.
func TestDemoCtrlC(t *testing.T) {
	state := t.TempDir()
	p, _ := runningDemo(t, state)
	if err := syscall.Kill(-p.cmd.Process.Pid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	p.wait(t, 40*time.Second)
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit code after Ctrl-C = %d, want 0; stderr:\n%s", code, p.errb.String())
	}
	if !strings.Contains(p.out.String(), "trellis demo: final") {
		t.Errorf("no final summary after Ctrl-C; stdout:\n%s", p.out.String())
	}
	noLeftovers(t)
}

// TestDemoPermissive checks that --permissive lets every meshed identity call:
// bookthief is served too.
func TestDemoPermissive(t *testing.T) {
	state := t.TempDir()
	p := start(t, state, "demo", "--permissive", "--duration", "8s", "-o", "json")
	dumpLogsOnFailure(t, state)
	p.wait(t, time.Minute)
	s := parseSummary(t, p.out.String())
	if code := p.cmd.ProcessState.ExitCode(); code != 0 || !s.Passed || s.Mode != "permissive" {
		t.Fatalf("exit %d, passed=%v, mode=%q; want 0, true, permissive; stderr:\n%s", code, s.Passed, s.Mode, p.errb.String())
	}
	if th := s.Clients["bookthief"]; th.Total == 0 || th.OK != th.Total {
		t.Errorf("bookthief in permissive mode: %d of %d served, want all", th.OK, th.Total)
	}
}

// TestCheckAndPolicy runs `trellis check` and `trellis policy check` against the
// running demo: everything healthy; bookbuyer allowed by the demo's TrafficTarget,
// bookthief denied with the reason, and the exit codes scripts rely on.
func TestCheckAndPolicy(t *testing.T) {
	state := t.TempDir()
	runningDemo(t, state)
	out, errOut, err := trellis(t, state, "check")
	if err != nil {
		t.Fatalf("trellis check: %v\n%s%s", err, out, errOut)
	}
	for _, w := range []string{"bookbuyer", "bookthief", "bookstore-v1", "bookstore-v2", "bookwarehouse"} {
		if !regexp.MustCompile(`(?m)^ok\s+sidecar [a-z]+/` + w + `-[0-9a-f]{6}: ready`).MatchString(out) {
			t.Errorf("trellis check does not report sidecar %s ready:\n%s", w, out)
		}
	}

	buyerHeaders := []string{"-H", "client-app: bookbuyer", "-H", "user-agent: Go-http-client/1.1"}
	out, errOut, err = trellis(t, state, append([]string{"policy", "check", "bookbuyer", "bookstore.bookstore", "--path", "/books-bought"}, buyerHeaders...)...)
	if err != nil || !strings.Contains(out, "TrafficTarget bookstore/bookstore, HTTPRouteGroup bookstore/bookstore-service-routes#books-bought") {
		t.Errorf("policy check bookbuyer: err=%v\n%s%s", err, out, errOut)
	}
	out, _, err = trellis(t, state, append([]string{"policy", "check", "bookthief", "bookstore.bookstore", "--path", "/books-bought"}, buyerHeaders...)...)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(out, "denied: no TrafficTarget") {
		t.Errorf("policy check bookthief: err=%v, want exit code 2 and a denial naming the cause:\n%s", err, out)
	}
}
