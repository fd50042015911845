package kube

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/trellis-mesh/trellis/test/kubetest"
)

// kubectlResult runs the cluster's kubectl as kubetest.Kubectl does, but
// returns its failure for the test to read.
func kubectlResult(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	bin := os.Getenv(kubetest.KubectlEnv)
	if bin == "" {
		t.Fatalf("no kubectl: set $%s (make e2e-kube does)", kubetest.KubectlEnv)
	}
	cmd := exec.Command(bin, append([]string{"--kubeconfig", os.Getenv(kubetest.KubeconfigEnv)}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// schemaExample is a YAML file to apply.
type schemaExample struct {
	file string
	// fixture: a translator fixture, some of which are objects as `kubectl
	// get -o yaml` prints them; the server's metadata fields are dropped
	// before applying. Otherwise the file is applied as it is.
	fixture bool
}

// schemaExamples are the YAML files users apply, the bookstore example and
// OSM's walk-through (its docs' manifests), and the translator's fixtures of
// valid objects, among them MeshConfigs of both versions and OSM policies that
// set every field OSM's schemas have.
func schemaExamples(t *testing.T) []schemaExample {
	t.Helper()
	var out []schemaExample
	for _, p := range []struct {
		pattern string
		fixture bool
	}{
		{"../../examples/bookstore/*.yaml", false},
		{"../../internal/source/translate/testdata/bookstore/*.yaml", false},
		{"../../internal/source/translate/testdata/*.yaml", true},
		{"../../internal/source/translate/testdata/gateway/*.yaml", true},
		{"../../internal/source/translate/testdata/schema/*.yaml", true},
	} {
		m, err := filepath.Glob(p.pattern)
		if err != nil || len(m) == 0 {
			t.Fatalf("%s: %d files (%v)", p.pattern, len(m), err)
		}
		for _, f := range m {
			out = append(out, schemaExample{f, p.fixture})
		}
	}
	return out
}

// withoutServerFields drops from every document's metadata what the API
// server sets (resourceVersion, uid, ...), as `kubectl get -o yaml` prints it.
func withoutServerFields(t *testing.T, b []byte) []byte {
	t.Helper()
	var out [][]byte
	for _, doc := range bytes.Split(b, []byte("\n---\n")) {
		var o map[string]any
		if err := yaml.Unmarshal(doc, &o); err != nil {
			t.Fatal(err)
		}
		if o == nil {
			continue // comments only
		}
		if meta, ok := o["metadata"].(map[string]any); ok {
			for k := range meta {
				if k != "name" && k != "namespace" && k != "labels" && k != "annotations" {
					delete(meta, k)
				}
			}
		}
		y, err := yaml.Marshal(o)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, y)
	}
	return bytes.Join(out, []byte("---\n"))
}

// object is one document of a file, as written.
type object struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
	Spec any `json:"spec"`
}

func documents(t *testing.T, file string, b []byte) []object {
	t.Helper()
	var out []object
	for _, doc := range bytes.Split(b, []byte("\n---\n")) {
		var o object
		if err := yaml.Unmarshal(doc, &o); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if o.Kind != "" {
			out = append(out, o)
		}
	}
	return out
}

// TestSchemaOnCluster installs Trellis's CRDs, with their schemas, on the test
// cluster, with no control plane (so no webhook) running. Every example users
// apply is accepted by the API server unchanged, and reads back with nothing
// of it pruned; objects with a wrong type, an unknown field or a value the
// schema does not allow are refused, and kubectl's message names the field.
func TestSchemaOnCluster(t *testing.T) {
	c := kubetest.New(t)
	ctx := context.Background()
	examples := schemaExamples(t)
	var files []string
	contents := map[string][]byte{}
	namespaces := map[string]bool{}
	for _, e := range examples {
		f := e.file
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if e.fixture {
			b = withoutServerFields(t, b)
		}
		files = append(files, f)
		contents[f] = b
		for _, o := range documents(t, f, b) {
			if o.Metadata.Namespace != "" {
				namespaces[o.Metadata.Namespace] = true
			}
		}
	}
	// The examples name their namespaces (bookstore, osm-system, ...).
	for ns := range namespaces {
		_, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		switch {
		case apierrors.IsAlreadyExists(err):
		case err != nil:
			t.Fatal(err)
		default:
			t.Cleanup(func() { c.Client.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{}) })
		}
	}

	t.Run("examples accepted unchanged", func(t *testing.T) {
		n := 0
		for _, f := range files {
			name := strings.TrimPrefix(f, "../../")
			out, err := kubectlResult(t, string(contents[f]), "apply", "-f", "-")
			if err != nil {
				t.Errorf("kubectl apply -f %s: %v\n%s", name, err, out)
				continue
			}
			for _, o := range documents(t, f, contents[f]) {
				n++
				ns := o.Metadata.Namespace
				if ns == "" {
					ns = "default"
				}
				kind := strings.ToLower(o.Kind) + "." + strings.Split(o.APIVersion, "/")[0]
				got, err := kubectlResult(t, "", "get", "-n", ns, kind, o.Metadata.Name, "-o", "json")
				if err != nil {
					t.Errorf("%s: kubectl get %s %s/%s: %v\n%s", name, kind, ns, o.Metadata.Name, err, got)
					continue
				}
				var stored object
				if err := json.Unmarshal([]byte(got), &stored); err != nil {
					t.Fatal(err)
				}
				// The API server may add defaults (the Gateway API's CRDs
				// have some); it must keep everything written.
				want, _ := normalize(o.Spec)
				have, _ := normalize(stored.Spec)
				if missing := notIn(want, have, "spec"); len(missing) > 0 {
					t.Errorf("%s: %s %s/%s lost what was applied: %s", name, o.Kind, ns, o.Metadata.Name, strings.Join(missing, "; "))
				}
			}
			if out, err := kubectlResult(t, string(contents[f]), "delete", "-f", "-", "--wait=false"); err != nil {
				t.Errorf("kubectl delete -f %s: %v\n%s", name, err, out)
			}
		}
		t.Logf("%d objects of %d files applied and read back", n, len(files))
	})

	t.Run("invalid refused naming the field", func(t *testing.T) {
		tests := []struct {
			name, doc string
			want      []string // all in kubectl's message
		}{
			{"a weight that is not a number", `apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata: {name: bad-weight, namespace: bookstore}
spec:
  service: bookstore
  backends: [{service: bookstore-v1, weight: fifty}]`, []string{"spec.backends[0].weight", "integer"}},
			{"a misspelt field", `apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata: {name: misspelt, namespace: bookstore}
spec:
  service: bookstore
  backend: [{service: bookstore-v1, weight: 50}]`, []string{`unknown field "spec.backend"`}},
			{"no backends", `apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata: {name: no-backends, namespace: bookstore}
spec:
  service: bookstore`, []string{"spec.backends", "Required value"}},
			{"a MeshConfig field OSM does not have", `apiVersion: config.openservicemesh.io/v1alpha2
kind: MeshConfig
metadata: {name: osm-mesh-config, namespace: osm-system}
spec:
  traffic: {enablePermissiveTrafficPolicyMode: false, enableMagic: true}`, []string{`unknown field "spec.traffic.enableMagic"`}},
			{"a v1alpha2 field in a v1alpha1 MeshConfig", `apiVersion: config.openservicemesh.io/v1alpha1
kind: MeshConfig
metadata: {name: osm-mesh-config, namespace: osm-system}
spec:
  sidecar: {localProxyMode: PodIP}`, []string{`unknown field "spec.sidecar.localProxyMode"`}},
			{"a sidecar log level OSM does not have", `apiVersion: config.openservicemesh.io/v1alpha2
kind: MeshConfig
metadata: {name: osm-mesh-config, namespace: osm-system}
spec:
  sidecar: {logLevel: verbose}`, []string{"spec.sidecar.logLevel", "Unsupported value"}},
			{"a destination that is not a ServiceAccount", `apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: pod-destination, namespace: bookstore}
spec:
  destination: {kind: Pod, name: bookstore, namespace: bookstore}
  rules: [{kind: HTTPRouteGroup, name: bookstore-service-routes}]
  sources: [{kind: ServiceAccount, name: bookbuyer, namespace: bookbuyer}]`, []string{"spec.destination.kind", "Unsupported value"}},
			{"a rule of a kind Trellis does not take", `apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: udp-rule, namespace: bookstore}
spec:
  destination: {kind: ServiceAccount, name: bookstore, namespace: bookstore}
  rules: [{kind: UDPRoute, name: dns}]
  sources: [{kind: ServiceAccount, name: bookbuyer, namespace: bookbuyer}]`, []string{"spec.rules[0].kind", "Unsupported value"}},
			{"a TCP port out of range", `apiVersion: specs.smi-spec.io/v1alpha4
kind: TCPRoute
metadata: {name: big-port, namespace: bookstore}
spec:
  matches: {ports: [70000]}`, []string{"spec.matches.ports[0]", "65535"}},
			{"a rate limit by the day", `apiVersion: policy.openservicemesh.io/v1alpha1
kind: UpstreamTrafficSetting
metadata: {name: daily, namespace: bookstore}
spec:
  host: bookstore
  rateLimit: {local: {http: {requests: 100, unit: day}}}`, []string{"spec.rateLimit.local.http.unit", "Unsupported value"}},
			{"an ingress source of another kind", `apiVersion: policy.openservicemesh.io/v1alpha1
kind: IngressBackend
metadata: {name: gateway-source, namespace: bookstore}
spec:
  backends: [{name: bookstore, port: {number: 14001, protocol: http}}]
  sources: [{kind: Gateway, name: ingress}]`, []string{"spec.sources[0].kind", "Unsupported value"}},
			{"a misspelt HTTPRoute field", `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: misspelt, namespace: bookstore}
spec:
  parentRefs: [{group: "", kind: Service, name: bookstore, port: 14001}]
  rules: [{backendRefs: [{name: bookstore-v1, port: 14001, wieght: 3}]}]`, []string{`unknown field "spec.rules[0].backendRefs[0].wieght"`}},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				out, err := kubectlResult(t, tt.doc, "apply", "-f", "-")
				if err == nil {
					kubectlResult(t, tt.doc, "delete", "-f", "-", "--wait=false")
					t.Fatalf("kubectl apply succeeded:\n%s\nwant it refused naming %v", out, tt.want)
				}
				for _, w := range tt.want {
					if !strings.Contains(out, w) {
						t.Errorf("kubectl apply: %s\nwant the message to say %q", strings.TrimSpace(out), w)
					}
				}
				t.Logf("refused: %s", strings.TrimSpace(out))
			})
		}
	})
}

// normalize turns a YAML-decoded value into what JSON decoding gives, so
// values compare equal whichever way they came.
func normalize(v any) (any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var out any
	err = json.Unmarshal(b, &out)
	return out, err
}

// notIn lists the leaves of want that have is missing or has otherwise.
func notIn(want, have any, path string) []string {
	switch w := want.(type) {
	case map[string]any:
		h, ok := have.(map[string]any)
		if !ok {
			return []string{fmt.Sprintf("%s: %v stored as %v", path, want, have)}
		}
		var out []string
		keys := make([]string, 0, len(w))
		for k := range w {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if w[k] == nil {
				continue // null: nothing written
			}
			if _, ok := h[k]; !ok {
				out = append(out, path+"."+k+": pruned")
				continue
			}
			out = append(out, notIn(w[k], h[k], path+"."+k)...)
		}
		return out
	case []any:
		h, ok := have.([]any)
		if !ok || len(h) != len(w) {
			return []string{fmt.Sprintf("%s: %v stored as %v", path, want, have)}
		}
		var out []string
		for i := range w {
			out = append(out, notIn(w[i], h[i], fmt.Sprintf("%s[%d]", path, i))...)
		}
		return out
	}
	if !reflect.DeepEqual(want, have) {
		return []string{fmt.Sprintf("%s: %v stored as %v", path, want, have)}
	}
	return nil
}
