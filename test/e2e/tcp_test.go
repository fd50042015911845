package e2e

import (
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestTCPForward runs a program under `trellis run --tcp-forward` and reaches a
// service port of protocol tcp through the local port it binds: bytes with no
// HTTP proxying in between (the server happens to speak HTTP; the sidecars
// carry it as opaque TCP).
func TestTCPForward(t *testing.T) {
	state := t.TempDir()
	controlPlane(t, state)
	dumpLogsOnFailure(t, state)
	if _, errOut, err := trellis(t, state, "apply", "-f", "../../examples/bookstore/mesh-config-permissive.yaml"); err != nil {
		t.Fatalf("apply: %v %s", err, errOut)
	}
	self := filepath.Join(bin, "trellis")
	port := freeLoopbackPort(t)
	start(t, state, "run", "-n", "bookstore", "--account", "ledger", "--name", "ledger-v1",
		"--service", "ledger:7000/tcp", "--port", fmt.Sprint(port),
		"--", self, "demo-app", "bookstore", "--version", "v1", "--listen", fmt.Sprintf("127.0.0.1:%d", port))
	forward := fmt.Sprintf("127.0.0.1:%d", freeLoopbackPort(t))
	start(t, state, "run", "-n", "bookbuyer", "--account", "bookbuyer",
		"--tcp-forward", forward+"=ledger.bookstore:7000", "--", "sleep", "300")

	var last string
	exchange := func() bool {
		c, err := net.DialTimeout("tcp", forward, time.Second)
		if err != nil {
			last = err.Error()
			return false
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, "GET / HTTP/1.0\r\nHost: ledger.bookstore:7000\r\n\r\n")
		b, err := io.ReadAll(c)
		last = fmt.Sprintf("%q, %v", b, err)
		return err == nil && strings.HasPrefix(string(b), "HTTP/1.0 200 ")
	}
	deadline := time.Now().Add(30 * time.Second)
	for !exchange() {
		if time.Now().After(deadline) {
			t.Fatalf("no answer through the TCP forward port %s after 30s; last: %s", forward, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !exchange() {
		t.Errorf("second exchange through %s: %s; want an HTTP/1.0 200 answer", forward, last)
	}
}
