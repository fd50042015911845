package controlplane

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/source/local"
	"github.com/trellis-mesh/trellis/internal/syncbuf"
)

// TestMeshConfigSetsControlPlaneLogLevel: a MeshConfig applied to a running
// control plane sets its own log level (debug lines appear, then none below
// error), and deleting it brings back the level it was started with.
func TestMeshConfigSetsControlPlaneLogLevel(t *testing.T) {
	state := t.TempDir()
	var logs syncbuf.Buffer
	level := new(slog.LevelVar) // info, as --log-level's default
	ctx, cancel := context.WithCancel(context.Background())
	ready, done := make(chan struct{}), make(chan error, 1)
	go func() {
		done <- Run(ctx, Options{StateDir: state, GRPCAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", LogLevel: level,
			Logger: slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: level})),
			Ready:  func(Info) { close(ready) }})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("control plane: %v", err)
		}
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("control plane: %v", err)
	}
	c, err := Dial(state)
	if err != nil {
		t.Fatal(err)
	}
	meshConfig := func(lvl string) []byte {
		return []byte("apiVersion: config.openservicemesh.io/v1alpha2\nkind: MeshConfig\nmetadata: {name: osm-mesh-config, namespace: osm-system}\nspec:\n  observability:\n    osmLogLevel: " + lvl + "\n")
	}
	waitLevel := func(want slog.Level) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for level.Level() != want {
			if time.Now().After(deadline) {
				t.Fatalf("control plane log level = %v, want %v", level.Level(), want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	debugLines := func() int { return strings.Count(logs.String(), `"level":"DEBUG"`) }
	if n := debugLines(); n != 0 {
		t.Fatalf("%d debug lines at level info", n)
	}

	if _, err := c.Apply(ctx, "mesh.yaml", meshConfig("debug")); err != nil {
		t.Fatal(err)
	}
	waitLevel(slog.LevelDebug)
	if !strings.Contains(logs.String(), `"osmLogLevel":"debug"`) {
		t.Errorf("no line says the mesh config set the level:\n%s", logs.String())
	}
	// Each snapshot is logged at debug: a change now shows.
	reg, err := c.Register(ctx, local.Registration{Name: "web", Namespace: "shop", Account: "web", Address: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for debugLines() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no debug line after osmLogLevel: debug:\n%s", logs.String())
		}
		time.Sleep(5 * time.Millisecond)
	}

	if _, err := c.Apply(ctx, "mesh.yaml", meshConfig("error")); err != nil {
		t.Fatal(err)
	}
	waitLevel(slog.LevelError)
	before := logs.String()
	if err := c.Deregister(ctx, reg.ID); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if after := logs.String(); after != before {
		t.Errorf("at osmLogLevel error, the control plane still logged:\n%s", strings.TrimPrefix(after, before))
	}

	if _, err := c.Delete(ctx, DeleteRequest{Objects: []string{"MeshConfig osm-system/osm-mesh-config"}}); err != nil {
		t.Fatal(err)
	}
	waitLevel(slog.LevelInfo)
}
