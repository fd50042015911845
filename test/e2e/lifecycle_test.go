package e2e

import (
	"syscall"
	"testing"
	"time"
)

// TestConfigChurnUnderLoad applies 50 split changes while bookbuyer calls
// bookstore steadily: no request fails, and both versions keep serving.
func TestConfigChurnUnderLoad(t *testing.T) {
	m := startBookstoreMesh(t)
	before := getStats(t, m.buyer)
	files := []string{"traffic-split-v1.yaml", "traffic-split-v2.yaml", "traffic-split-50-50.yaml"}
	for i := range 50 {
		if _, errOut, err := trellis(t, m.state, "apply", "-f", "../../examples/bookstore/"+files[i%len(files)]); err != nil {
			t.Fatalf("apply %d: %v %s", i, err, errOut)
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	after := getStats(t, m.buyer)
	if served := after.OK - before.OK; served < 20 || after.Failed != before.Failed || after.Denied != before.Denied {
		t.Errorf("during 50 config changes: %d served, failed %d→%d, denied %d→%d; want zero failures", served, before.Failed, after.Failed, before.Denied, after.Denied)
	}
}

// TestWorkloadStopUnderLoad stops bookstore v1 with SIGTERM, as Kubernetes stops
// a pod, while bookbuyer calls bookstore: its endpoint is withdrawn first, its
// in-flight requests finish, and bookbuyer sees no failure; v2 serves on.
func TestWorkloadStopUnderLoad(t *testing.T) {
	m := startBookstoreMesh(t)
	before := getStats(t, m.buyer)
	v1 := m.stores["v1"]
	if err := v1.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	v1.wait(t, 20*time.Second)
	if code := v1.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("trellis run of bookstore-v1 exited %d after SIGTERM, want 0; stderr:\n%s", code, v1.errb.String())
	}
	mid := getStats(t, m.buyer)
	time.Sleep(2 * time.Second)
	after := getStats(t, m.buyer)
	if after.Failed != before.Failed || after.Denied != before.Denied {
		t.Errorf("while bookstore-v1 stopped: failed %d→%d, denied %d→%d; want none", before.Failed, after.Failed, before.Denied, after.Denied)
	}
	if sh, n := share(mid, after, "bookstore-v2"); n < 10 || sh < 0.99 {
		t.Errorf("after v1 stopped, v2 served %.0f%% of %d requests, want all", 100*sh, n)
	}
	if _, ok := workloads(t, m.state)["bookstore-v1"]; ok {
		t.Error("bookstore-v1 is still registered after it stopped")
	}
}
