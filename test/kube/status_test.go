package kube

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/trellis-mesh/trellis/internal/controlplane"
	srckube "github.com/trellis-mesh/trellis/internal/source/kube"
	"github.com/trellis-mesh/trellis/test/kubetest"
)

// TestStatusConditions runs the control plane against the test cluster and
// reads back, through the API server, the status it writes on the custom
// resources: Accepted=True for a valid object, Accepted=False naming the field
// and the fix for an invalid one, a Warning for a MeshConfig field that is
// stored but not used, and Trellis's parent status on an HTTPRoute attached to
// a Service. The statuses settle (no write when nothing changed), and fixing
// an object flips its condition at its new generation.
func TestStatusConditions(t *testing.T) {
	c := kubetest.New(t)
	ns := c.Namespace(t, "status", true)
	// The HTTPRoute's parent and backend exist, so that it is in force.
	v1 := c.MeshedPod(t, ns, "web-v1", "web", "10.244.0.231")
	c.Service(t, ns, "web", corev1.ServicePort{Name: "http", Port: 8080}, true, v1)
	c.Service(t, ns, "web-v1", corev1.ServicePort{Name: "http", Port: 8080}, true, v1)
	c.ControlPlane(t, controlplane.KubeOptions{Namespace: ns})
	c.Apply(t, fmt.Sprintf(`apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: good, namespace: %s}
spec:
  matches: [{name: books, pathRegex: /books, methods: [GET]}]
`, ns))
	c.Apply(t, fmt.Sprintf(`apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: bad, namespace: %s}
spec:
  matches: [{name: books, pathRegex: /books, methods: [get]}]
`, ns))
	c.Apply(t, fmt.Sprintf(`apiVersion: config.openservicemesh.io/v1alpha2
kind: MeshConfig
metadata: {name: osm-mesh-config, namespace: %s}
spec:
  traffic: {enablePermissiveTrafficPolicyMode: true}
  observability:
    tracing: {enable: true, address: jaeger.%[1]s.svc.cluster.local, port: 9411, endpoint: /api/v2/spans}
`, ns))
	c.Apply(t, fmt.Sprintf(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: %s}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 8080}]
  rules: [{backendRefs: [{name: web-v1, port: 8080}]}]
`, ns))

	ctx := context.Background()
	get := func(kind, name string) *unstructured.Unstructured {
		t.Helper()
		u, err := c.Dynamic.Resource(c.GVR(t, kind)).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	cond := func(u *unstructured.Unstructured, typ string) map[string]any {
		conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		for _, c := range conds {
			if m, ok := c.(map[string]any); ok && m["type"] == typ {
				return m
			}
		}
		return nil
	}
	want := func(kind, name, typ, status string, gen int64, msg ...string) {
		t.Helper()
		kubetest.Eventually(t, 20*time.Second, kind+" "+name+" has "+typ+"="+status, func() error {
			u := get(kind, name)
			m := cond(u, typ)
			if m == nil {
				return fmt.Errorf("no %s condition in status %v", typ, u.Object["status"])
			}
			if m["status"] != status || m["observedGeneration"] != gen {
				return fmt.Errorf("condition %v, want status %s at generation %d", m, status, gen)
			}
			for _, s := range msg {
				if !strings.Contains(fmt.Sprint(m["message"]), s) {
					return fmt.Errorf("message %q does not say %q", m["message"], s)
				}
			}
			return nil
		})
	}
	want("HTTPRouteGroup", "good", srckube.ConditionAccepted, "True", 1)
	want("HTTPRouteGroup", "bad", srckube.ConditionAccepted, "False", 1,
		"HTTPRouteGroup "+ns+"/bad", "spec.matches[0].methods[0]", `method "get" must be upper case: use "GET"`)
	want("MeshConfig", "osm-mesh-config", srckube.ConditionAccepted, "True", 1)
	want("MeshConfig", "osm-mesh-config", srckube.ConditionWarning, "True", 1,
		"MeshConfig "+ns+"/osm-mesh-config: spec.observability.tracing.enable: accepted and stored; not used by Trellis yet")
	if cond(get("HTTPRouteGroup", "good"), srckube.ConditionWarning) != nil {
		t.Error("a valid HTTPRouteGroup has a Warning condition")
	}
	kubetest.Eventually(t, 20*time.Second, "HTTPRoute web has Trellis's parent status", func() error {
		parents, _, _ := unstructured.NestedSlice(get("HTTPRoute", "web").Object, "status", "parents")
		for _, p := range parents {
			m, _ := p.(map[string]any)
			if m["controllerName"] != srckube.ControllerName {
				continue
			}
			conds, _ := m["conditions"].([]any)
			if len(conds) > 0 && conds[0].(map[string]any)["type"] == "Accepted" && conds[0].(map[string]any)["status"] == "True" {
				return nil
			}
			return fmt.Errorf("Trellis's parent status %v", m)
		}
		return fmt.Errorf("no parent status from %s in %v", srckube.ControllerName, parents)
	})

	// Settled: nothing is written again while nothing changes.
	versions := map[string]string{}
	for _, o := range [][2]string{{"HTTPRouteGroup", "good"}, {"HTTPRouteGroup", "bad"}, {"MeshConfig", "osm-mesh-config"}, {"HTTPRoute", "web"}} {
		versions[o[0]+"/"+o[1]] = get(o[0], o[1]).GetResourceVersion()
	}
	time.Sleep(2 * time.Second)
	for _, o := range [][2]string{{"HTTPRouteGroup", "good"}, {"HTTPRouteGroup", "bad"}, {"MeshConfig", "osm-mesh-config"}, {"HTTPRoute", "web"}} {
		if rv := get(o[0], o[1]).GetResourceVersion(); rv != versions[o[0]+"/"+o[1]] {
			t.Errorf("%s %s was written again with nothing changed: resourceVersion %s → %s", o[0], o[1], versions[o[0]+"/"+o[1]], rv)
		}
	}

	// Fixed: Accepted flips at the new generation.
	bad := get("HTTPRouteGroup", "bad")
	if err := unstructured.SetNestedSlice(bad.Object, []any{map[string]any{"name": "books", "pathRegex": "/books", "methods": []any{"GET"}}}, "spec", "matches"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Dynamic.Resource(c.GVR(t, "HTTPRouteGroup")).Namespace(ns).Update(ctx, bad, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	want("HTTPRouteGroup", "bad", srckube.ConditionAccepted, "True", 2)
}
