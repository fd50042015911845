package cli

import (
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/trellis-mesh/trellis/internal/source/kube"
)

// TestCheckShowsMeshConfig: with a MeshConfig applied, trellis check shows the
// settings in force, and the tracing settings as stored but not yet used; each
// field Trellis does not use is listed among the resource warnings.
func TestCheckShowsMeshConfig(t *testing.T) {
	state := t.TempDir()
	runControlPlane(t, state)
	mesh, err := os.ReadFile("../source/translate/testdata/meshconfig-every-field.yaml")
	if err != nil {
		t.Fatal(err)
	}
	f := state + "/mesh.yaml"
	if err := os.WriteFile(f, mesh, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, errOut, code := trellisMain(t, state, "apply", "-f", f); code != 0 {
		t.Fatalf("apply: exit %d\n%s%s", code, out, errOut)
	}
	out, errOut, code := trellisMain(t, state, "check", "-o", "json")
	if code != 0 {
		t.Fatalf("check: exit %d (warnings only, want 0)\n%s%s", code, out, errOut)
	}
	var res []CheckResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("check -o json: %v\n%s", err, out)
	}
	const src = "MeshConfig osm-system/osm-mesh-config"
	var got []CheckResult
	unused := 0
	for _, r := range res {
		switch {
		case r.Check == "mesh config" || r.Check == "tracing":
			got = append(got, r)
		case r.Check == "resources" && r.Object == src && strings.HasSuffix(r.Detail, "accepted and stored; not used by Trellis yet"):
			unused++
		}
	}
	want := []CheckResult{
		{Check: "mesh config", Object: src, Result: "ok", Detail: src + ": traffic policy strict (TrafficTargets allow), egress off, certificates valid 12h0m0s, sidecar log level debug, control-plane log level debug, sidecar resources " +
			`{"limits":{"cpu":"1","memory":"512Mi"},"requests":{"cpu":"100m","memory":"64Mi"}}` + " (for sidecars injected on Kubernetes)"},
		{Check: "tracing", Object: src, Result: "warn", Detail: "stored, not yet used: enable true, collector jaeger.osm-system.svc.cluster.local port 9411 endpoint /api/v2/spans; sidecars export no spans yet"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("mesh lines of trellis check (-want +got):\n%s", diff)
	}
	if unused != 41 {
		t.Errorf("check lists %d MeshConfig fields as not used yet, want 41 (all but the six Trellis acts on):\n%s", unused, out)
	}
	// A get returns the object as applied: every field, used or not, is kept.
	out, errOut, code = trellisMain(t, state, "get", "meshconfig", "-n", "osm-system", "-o", "json")
	if code != 0 {
		t.Fatalf("get meshconfig: exit %d\n%s%s", code, out, errOut)
	}
	for _, field := range []string{`"certKeyBitSize":4096`, `"envoyWindowsImage":"envoyproxy/envoy-windows:v1.22.1"`, `"enableMeshRootCertificate":false`, `"memory":"512Mi"`, `"statPrefix":"inboundExtAuthz"`} {
		if !strings.Contains(strings.ReplaceAll(out, " ", ""), field) {
			t.Errorf("get meshconfig lost %s:\n%s", field, out)
		}
	}
}

// TestStatusWriterCheck: which replica writes status conditions, as trellis
// check --kubernetes reports it.
func TestStatusWriterCheck(t *testing.T) {
	const lease = "trellis-system/trellis-status-writer"
	for _, tt := range []struct {
		w            kube.StatusWriter
		result, want string
	}{
		{kube.StatusWriter{}, checkWarn, "every replica writes status conditions, without leader election"},
		{kube.StatusWriter{Lease: lease, Self: "cp-1_ab"}, checkWarn, "no replica holds the Lease yet"},
		{kube.StatusWriter{Lease: lease, Self: "cp-1_ab", Holder: "cp-1_ab"}, checkOK, "held by cp-1_ab (the replica answering)"},
		{kube.StatusWriter{Lease: lease, Self: "cp-1_ab", Holder: "cp-2_cd"}, checkOK, "held by cp-2_cd, which writes"},
	} {
		r := statusWriterCheck(tt.w, "10.96.0.20:15129")
		if r.Check != "status writer" || r.Result != tt.result || !strings.Contains(r.Detail, tt.want) {
			t.Errorf("statusWriterCheck(%+v) = %+v; want %s with %q", tt.w, r, tt.result, tt.want)
		}
	}
}
