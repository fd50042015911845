package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// controlPlane starts `trellis control-plane` on free ports and waits for it.
func controlPlane(t *testing.T, state string, extra ...string) *proc {
	t.Helper()
	args := append([]string{"control-plane", "--grpc-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"}, extra...)
	p := start(t, state, args...)
	waitFor(t, 20*time.Second, "the control plane to listen", func() bool {
		_, err := os.Stat(filepath.Join(state, "control-plane.json"))
		return err == nil
	})
	return p
}

func writeFile(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

const goodRoutes = `apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata:
  name: bookstore-service-routes
  namespace: bookstore
spec:
  matches:
  - name: books-bought
    pathRegex: /books-bought
    methods: [GET]
`

// TestApplyBadInput checks that bad input exits non-zero, names the object, the
// field and the fix, and leaves the store unchanged.
func TestApplyBadInput(t *testing.T) {
	state := t.TempDir()
	controlPlane(t, state)
	files := t.TempDir()
	good := writeFile(t, files, "routes.yaml", goodRoutes)
	out, errOut, err := trellis(t, state, "apply", "-f", good)
	if err != nil || !strings.Contains(out, "HTTPRouteGroup bookstore/bookstore-service-routes created") {
		t.Fatalf("apply good file: err=%v out=%q stderr=%q", err, out, errOut)
	}
	out, _, err = trellis(t, state, "apply", "-f", good)
	if err != nil || !strings.Contains(out, "unchanged") {
		t.Fatalf("apply the same file twice: err=%v out=%q, want unchanged", err, out)
	}
	before, _, err := trellis(t, state, "get", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name, body string
		want       []string // all must appear in stderr
	}{
		{"malformed", "apiVersion: split.smi-spec.io/v1alpha2\nkind: TrafficSplit\nmetadata: [unclosed\n", []string{"malformed.yaml"}},
		{"unknown-kind", "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\n", []string{"Widget"}},
		{"weights-zero", `apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata: {name: s, namespace: bookstore}
spec:
  service: bookstore
  backends:
  - {service: bookstore-v1, weight: 0}
  - {service: bookstore-v2, weight: 0}
`, []string{"TrafficSplit bookstore/s", "weight"}},
		{"missing-backend", `apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata: {name: s, namespace: bookstore}
spec:
  service: bookstore
  backends:
  - {service: bookstore-v3, weight: 100}
`, []string{"TrafficSplit bookstore/s", "bookstore-v3"}},
		{"target-outside-namespace", `apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: t, namespace: default}
spec:
  destination: {kind: ServiceAccount, name: bookstore, namespace: bookstore}
  sources:
  - {kind: ServiceAccount, name: bookbuyer, namespace: bookbuyer}
  rules:
  - {kind: HTTPRouteGroup, name: bookstore-service-routes}
`, []string{"TrafficTarget default/t", "namespace bookstore"}},
		{"good-and-bad-together", goodRoutes + "---\n" + `apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata: {name: s, namespace: bookstore}
spec:
  service: bookstore
  backends: []
`, []string{"TrafficSplit bookstore/s"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := writeFile(t, files, tt.name+".yaml", tt.body)
			if tt.name == "malformed" {
				f = writeFile(t, files, "malformed.yaml", tt.body)
			}
			out, errOut, err := trellis(t, state, "apply", "-f", f)
			if err == nil {
				t.Fatalf("apply succeeded, want a non-zero exit; out=%q", out)
			}
			for _, w := range tt.want {
				if !strings.Contains(errOut, w) {
					t.Errorf("stderr does not name %q:\n%s", w, errOut)
				}
			}
			after, _, err := trellis(t, state, "get", "-o", "json")
			if err != nil {
				t.Fatal(err)
			}
			if after != before {
				t.Errorf("the store changed after a rejected apply:\nbefore %s\nafter %s", before, after)
			}
		})
	}
}

// TestControlPlaneRestart checks that a restart loses no resource, registration
// or CA.
func TestControlPlaneRestart(t *testing.T) {
	state := t.TempDir()
	cp := controlPlane(t, state)
	files := t.TempDir()
	if _, errOut, err := trellis(t, state, "apply", "-f", writeFile(t, files, "r.yaml", goodRoutes)); err != nil {
		t.Fatalf("apply: %v %s", err, errOut)
	}
	ca1, err := os.ReadFile(filepath.Join(state, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	res1, _, _ := trellis(t, state, "get", "-o", "json")
	cp.stop(t)
	controlPlane(t, state)
	ca2, _ := os.ReadFile(filepath.Join(state, "ca.pem"))
	res2, _, err := trellis(t, state, "get", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	if string(ca1) != string(ca2) {
		t.Error("the CA changed across a restart")
	}
	if res1 != res2 || !strings.Contains(res2, "bookstore-service-routes") {
		t.Errorf("resources changed across a restart:\nbefore %s\nafter %s", res1, res2)
	}
	var objs []json.RawMessage
	if err := json.Unmarshal([]byte(res2), &objs); err != nil || len(objs) != 1 {
		t.Errorf("get -o json after restart: %d objects (%v), want 1", len(objs), err)
	}
	for _, f := range []string{"ca/root.key", "ca/intermediate.key", "admin-token", "store.json"} {
		st, err := os.Stat(filepath.Join(state, f))
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", f, st.Mode().Perm())
		}
	}
}

// TestDelete checks that deleting by file and by kind and name removes objects,
// and that deleting what is not there fails and changes nothing.
func TestDelete(t *testing.T) {
	state := t.TempDir()
	controlPlane(t, state)
	files := t.TempDir()
	f := writeFile(t, files, "routes.yaml", goodRoutes)
	if _, errOut, err := trellis(t, state, "apply", "-f", f); err != nil {
		t.Fatalf("apply: %v %s", err, errOut)
	}
	out, errOut, err := trellis(t, state, "delete", "-f", f)
	if err != nil || !strings.Contains(out, "HTTPRouteGroup bookstore/bookstore-service-routes deleted") {
		t.Fatalf("delete -f: err=%v out=%q stderr=%q", err, out, errOut)
	}
	if out, _, _ := trellis(t, state, "get", "-o", "json"); strings.TrimSpace(out) != "[]" {
		t.Errorf("after delete, get -o json = %s, want []", out)
	}
	if _, errOut, err := trellis(t, state, "delete", "HTTPRouteGroup", "bookstore-service-routes", "-n", "bookstore"); err == nil || !strings.Contains(errOut, "not found") {
		t.Errorf("deleting a missing object: err=%v stderr=%q, want a non-zero exit saying not found", err, errOut)
	}
	if _, errOut, err := trellis(t, state, "apply", "-f", f); err != nil {
		t.Fatalf("apply again: %v %s", err, errOut)
	}
	if out, errOut, err := trellis(t, state, "delete", "HTTPRouteGroup", "bookstore-service-routes", "-n", "bookstore"); err != nil || !strings.Contains(out, "deleted") {
		t.Errorf("delete KIND NAME: err=%v out=%q stderr=%q", err, out, errOut)
	}
}
