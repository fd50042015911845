package kube_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/internal/source/kube"
	"github.com/trellis-mesh/trellis/test/kubetest"
)

// TestSourceAgainstAPIServer runs the source against a real API server: the
// first snapshot comes only after sync, holds the meshed namespace's services,
// pods (with their service-account identities and readiness from the
// EndpointSlices) and custom resources, leaves other namespaces out, reports a
// bad resource without dropping the rest, and follows changes.
func TestSourceAgainstAPIServer(t *testing.T) {
	c := kubetest.New(t)
	ns := c.Namespace(t, "bookstore", true)
	outside := c.Namespace(t, "outside", false)

	v1 := c.MeshedPod(t, ns, "bookstore-v1", "bookstore", "10.244.0.201")
	v2 := c.MeshedPod(t, ns, "bookstore-v2", "bookstore-v2", "10.244.0.202")
	c.MeshedPod(t, ns, "bookbuyer", "bookbuyer", "10.244.0.203")
	// A pod of the mesh's namespace that was never injected (created before
	// the namespace joined, or opted out): not an endpoint, and reported.
	legacy := c.Pod(t, ns, "bookstore-legacy", "bookstore", "10.244.0.204")
	web := corev1.ServicePort{Name: "bookstore-port", Port: 14001}
	c.Service(t, ns, "bookstore", web, true, v1, v2, legacy)
	c.Service(t, ns, "bookstore-v1", web, true, v1)
	c.Service(t, ns, "bookstore-v2", web, false, v2) // not ready
	c.Service(t, ns, "mysql", corev1.ServicePort{Name: "client", Port: 3306, AppProtocol: kubetest.Ptr("tcp-server-first")}, true)
	c.Service(t, outside, "elsewhere", web, true)
	c.Apply(t, fmt.Sprintf(`apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata: {name: bookstore-split, namespace: %s}
spec:
  service: bookstore.%[1]s
  backends: [{service: bookstore-v1, weight: 50}, {service: bookstore-v2, weight: 50}]
`, ns))
	c.Apply(t, fmt.Sprintf(`apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata: {name: broken, namespace: %s}
spec:
  service: mysql
  backends: [{service: bookstore-v1, weight: 0}]
`, ns))
	// A TrafficTarget whose source ServiceAccount is misspelt: in force,
	// and reported, until an account of that name exists.
	if _, err := c.Client.CoreV1().ServiceAccounts(ns).Create(context.Background(), &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "bookstore"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	c.Apply(t, misspeltSourceTarget(ns))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	src := kube.New(kube.Options{Client: c.Client, Dynamic: c.Dynamic})
	if src.Snapshot() != nil {
		t.Fatal("a snapshot before Run")
	}
	done := runSynced(t, ctx, src, nil)
	key := func(n string) model.Key { return model.Key{Namespace: ns, Name: n} }

	// Namespaces and objects made by this test may reach the informers after
	// the first sync; wait for the full view.
	var snap *model.Snapshot
	kubetest.Eventually(t, 10*time.Second, "the snapshot holds the test's objects", func() error {
		snap = src.Snapshot()
		if _, ok := snap.Split(key("bookstore")); !ok {
			return fmt.Errorf("no split yet")
		}
		if _, ok := snap.Workload(ns + "/bookbuyer"); !ok {
			return fmt.Errorf("no bookbuyer yet")
		}
		if len(snap.Endpoints(key("bookstore"), 14001)) != 1 {
			return fmt.Errorf("bookstore endpoints %v", snap.Endpoints(key("bookstore"), 14001))
		}
		return nil
	})

	svc, ok := snap.Service(key("mysql"))
	if !ok || len(svc.Ports) != 1 || svc.Ports[0] != (model.ServicePort{Port: 3306, Protocol: model.ProtocolTCPServerFirst}) {
		t.Errorf("mysql service = %+v, want port 3306 tcp-server-first", svc)
	}
	if _, ok := snap.Service(model.Key{Namespace: outside, Name: "elsewhere"}); ok {
		t.Error("a service of a namespace outside the mesh is in the snapshot")
	}
	w, ok := snap.Workload(ns + "/bookstore-v1")
	if !ok {
		t.Fatalf("no workload %s/bookstore-v1 in %v", ns, snap.Workloads())
	}
	want := model.Workload{ID: ns + "/bookstore-v1", Name: "bookstore-v1", Identity: model.Identity{Namespace: ns, Account: "bookstore"},
		Services: []model.ServiceMembership{{Service: "bookstore", ServicePort: 14001, Protocol: model.ProtocolHTTP}, {Service: "bookstore-v1", ServicePort: 14001, Protocol: model.ProtocolHTTP}},
		Address:  "10.244.0.201:15003", AdminAddress: "10.244.0.201:15000", Ready: true}
	if diff := cmp.Diff(want, *w); diff != "" {
		t.Errorf("workload (-want +got):\n%s", diff)
	}
	// bookstore-v2's own slice says not ready: it takes no traffic, for
	// either of its services.
	for _, svc := range []string{"bookstore", "bookstore-v2"} {
		for _, ep := range snap.Endpoints(key(svc), 14001) {
			if ep.Name == "bookstore-v2" {
				t.Errorf("bookstore-v2 is an endpoint of %s; a slice says it is not ready", svc)
			}
		}
	}
	if b, ok := snap.Workload(ns + "/bookbuyer"); !ok || b.Identity.Account != "bookbuyer" || len(b.Services) != 0 {
		t.Errorf("bookbuyer = %+v, want a workload with identity bookbuyer and no service", b)
	}
	found, reported := false, false
	for _, p := range src.Problems() {
		if p.Object == "TrafficSplit "+ns+"/broken" && strings.Contains(p.Message, "weights sum to 0") {
			found = true
		}
		if p.Object == "Service "+ns+"/bookstore" && strings.Contains(p.Message, "endpoints outside the mesh: pod bookstore-legacy") {
			reported = true
		}
	}
	if !found {
		t.Errorf("no problem names TrafficSplit %s/broken's weights: %v", ns, src.Problems())
	}
	if !reported {
		t.Errorf("no problem says Service %s/bookstore has an endpoint outside the mesh: %v", ns, src.Problems())
	}
	if _, ok := snap.Workload(ns + "/bookstore-legacy"); ok {
		t.Error("a pod without a sidecar is a workload of the mesh")
	}

	// The misspelt account is reported, by field; the destination, which
	// exists, is not. Once the account exists the warning is gone.
	missing := func() []string {
		var out []string
		for _, p := range src.Problems() {
			if p.Object == "TrafficTarget "+ns+"/bookstore" && strings.Contains(p.Message, "ServiceAccount") && strings.Contains(p.Message, "does not exist") {
				out = append(out, p.Field)
			}
		}
		return out
	}
	kubetest.Eventually(t, 10*time.Second, "the misspelt ServiceAccount reported", func() error {
		if got := missing(); !slices.Equal(got, []string{"spec.sources[0]"}) {
			return fmt.Errorf("TrafficTarget fields reported as naming no ServiceAccount: %v; want spec.sources[0] only", got)
		}
		return nil
	})
	if _, err := c.Client.CoreV1().ServiceAccounts(ns).Create(context.Background(), &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "bookbuyre"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	kubetest.Eventually(t, 10*time.Second, "the warning gone once the ServiceAccount exists", func() error {
		if got := missing(); len(got) != 0 {
			return fmt.Errorf("still reported: %v", got)
		}
		return nil
	})

	// A change reaches the snapshot: delete the split.
	before := snap.Hash()
	if err := c.Dynamic.Resource(c.GVR(t, "TrafficSplit")).Namespace(ns).Delete(context.Background(), "bookstore-split", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	kubetest.Eventually(t, 10*time.Second, "the split is gone from the snapshot", func() error {
		s := src.Snapshot()
		if _, ok := s.Split(key("bookstore")); ok || s.Hash() == before {
			return fmt.Errorf("still split")
		}
		return nil
	})
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
}

func ptr[T any](v T) *T { return &v }

// TestTokenReviewer checks sidecar authentication against the real API server:
// a projected token for audience trellis gives the service account's identity;
// a token for another audience, and garbage, are refused.
func TestTokenReviewer(t *testing.T) {
	c := kubetest.New(t)
	ns := c.Namespace(t, "bookbuyer", true)
	ctx := context.Background()
	if _, err := c.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "bookbuyer"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	token := func(aud string) string {
		t.Helper()
		exp := int64(600)
		tr, err := c.Client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "bookbuyer", &authnv1.TokenRequest{
			Spec: authnv1.TokenRequestSpec{Audiences: []string{aud}, ExpirationSeconds: &exp},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return tr.Status.Token
	}
	r := &kube.TokenReviewer{Client: c.Client}
	id, err := r.Authenticate(ctx, token(kube.Audience))
	if err != nil || id != (model.Identity{Namespace: ns, Account: "bookbuyer"}) {
		t.Errorf("Authenticate(trellis token) = %v, %v; want %s/bookbuyer", id, err, ns)
	}
	for name, tok := range map[string]string{"another audience": token("someone-else"), "garbage": "not-a-token", "empty": ""} {
		if id, err := r.Authenticate(ctx, tok); !errors.Is(err, kube.ErrUnauthenticated) {
			t.Errorf("Authenticate(%s) = %v, %v; want ErrUnauthenticated", name, id, err)
		}
	}
}
