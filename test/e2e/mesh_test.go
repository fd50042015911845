package e2e

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"
)

// bookstoreMesh is a running control plane with bookstore v1 and v2 and
// bookbuyer, each under `trellis run`, in strict mode with the demo's policy
// and a 50/50 split.
type bookstoreMesh struct {
	state  string
	cp     *proc
	buyer  string // bookbuyer's stats URL
	stores map[string]*proc
}

func startBookstoreMesh(t *testing.T, cpArgs ...string) *bookstoreMesh {
	t.Helper()
	m := &bookstoreMesh{state: t.TempDir(), stores: map[string]*proc{}}
	m.cp = controlPlane(t, m.state, cpArgs...)
	dumpLogsOnFailure(t, m.state)
	if _, errOut, err := trellis(t, m.state, "apply", "-f", "../../examples/bookstore/mesh-config-strict.yaml", "-f", "../../examples/bookstore/traffic-access.yaml"); err != nil {
		t.Fatalf("apply: %v %s", err, errOut)
	}
	self := filepath.Join(bin, "trellis")
	for _, v := range []string{"v1", "v2"} {
		port := freeLoopbackPort(t)
		account := "bookstore"
		if v == "v2" {
			account = "bookstore-v2"
		}
		m.stores[v] = start(t, m.state, "run", "-n", "bookstore", "--account", account, "--name", "bookstore-"+v,
			"--service", "bookstore:14001,bookstore-"+v+":14001", "--port", fmt.Sprint(port),
			"--", self, "demo-app", "bookstore", "--version", v, "--listen", fmt.Sprintf("127.0.0.1:%d", port))
	}
	waitFor(t, 20*time.Second, "both bookstores to be registered", func() bool {
		ws := workloads(t, m.state)
		_, v1 := ws["bookstore-v1"]
		_, v2 := ws["bookstore-v2"]
		return v1 && v2
	})
	if _, errOut, err := trellis(t, m.state, "apply", "-f", "../../examples/bookstore/traffic-split-50-50.yaml"); err != nil {
		t.Fatalf("apply split: %v %s", err, errOut)
	}
	buyerPort := freeLoopbackPort(t)
	start(t, m.state, "run", "-n", "bookbuyer", "--account", "bookbuyer", "--",
		self, "demo-app", "bookbuyer", "--listen", fmt.Sprintf("127.0.0.1:%d", buyerPort))
	m.buyer = fmt.Sprintf("http://127.0.0.1:%d", buyerPort)
	waitFor(t, 20*time.Second, "bookbuyer to be served by both versions", func() bool {
		s, err := tryStats(m.buyer)
		return err == nil && s.ServedBy["bookstore-v1"] > 2 && s.ServedBy["bookstore-v2"] > 2
	})
	return m
}
