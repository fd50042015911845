package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/controlplane"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/source/local"
)

// runControlPlane runs the real control plane in process on loopback for the
// test's duration.
func runControlPlane(t *testing.T, state string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready, done := make(chan struct{}), make(chan error, 1)
	go func() {
		done <- controlplane.Run(ctx, controlplane.Options{StateDir: state, GRPCAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
			Ready: func(controlplane.Info) { close(ready) }})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("control plane: %v", err)
		}
	})
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("control plane: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("control plane not ready after 10s")
	}
}

func trellisMain(t *testing.T, state string, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Main(t.Context(), append([]string{"--state-dir", state}, args...), &out, &errb)
	return out.String(), errb.String(), code
}

// TestCARotateAndStatus rotates a control plane's root with no sidecar
// connected: the command warns about the registered workload it cannot wait
// for, finishes, and ca status shows the finished phase with one new root.
func TestCARotateAndStatus(t *testing.T) {
	state := t.TempDir()
	runControlPlane(t, state)
	c, err := controlplane.Dial(state)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Register(t.Context(), local.Registration{Name: "web", Namespace: "shop", Account: "web", Address: "127.0.0.1:1"}); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := trellisMain(t, state, "ca", "status")
	if code != 0 || !strings.Contains(out, "phase: none") || !strings.Contains(out, "shop/web") {
		t.Fatalf("ca status: exit %d, stdout:\n%s\nstderr: %s\nwant phase none and the workload", code, out, errOut)
	}
	var before controlplane.CAStatus
	out, _, _ = trellisMain(t, state, "ca", "status", "-o", "json")
	if err := json.Unmarshal([]byte(out), &before); err != nil {
		t.Fatal(err)
	}

	out, errOut, code = trellisMain(t, state, "ca", "rotate", "--timeout", "20s")
	if code != 0 || !strings.Contains(out, "root rotated") {
		t.Fatalf("ca rotate: exit %d, stdout %q, stderr:\n%s", code, out, errOut)
	}
	if !strings.Contains(errOut, "warning: shop/web") {
		t.Errorf("ca rotate did not warn about the unconnected workload:\n%s", errOut)
	}
	var after controlplane.CAStatus
	out, _, _ = trellisMain(t, state, "ca", "status", "-o", "json")
	if err := json.Unmarshal([]byte(out), &after); err != nil {
		t.Fatal(err)
	}
	if after.Phase != identity.PhaseFinished || len(after.Roots) != 1 || after.Roots[0].Fingerprint == before.Roots[0].Fingerprint {
		t.Errorf("after ca rotate: phase %s with %d roots (same as before: %v); want finished with a new root",
			after.Phase, len(after.Roots), len(after.Roots) == 1 && after.Roots[0].Fingerprint == before.Roots[0].Fingerprint)
	}
	if after.Signing != after.Intermediates[0].Fingerprint {
		t.Errorf("signing %s, want the current intermediate %s", after.Signing, after.Intermediates[0].Fingerprint)
	}
}
