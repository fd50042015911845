package kube_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"github.com/trellis-mesh/trellis/internal/manifests"
	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/internal/source/kube"
)

// kubeconfigEnv names the kubeconfig of the test cluster (test/cluster, `make
// e2e-kube` sets it). Without it the tests that need a cluster are skipped.
const kubeconfigEnv = "TRELLIS_TEST_KUBECONFIG"

type cluster struct {
	client  kubernetes.Interface
	dynamic dynamic.Interface
}

func testCluster(t *testing.T) *cluster {
	t.Helper()
	path := os.Getenv(kubeconfigEnv)
	if path == "" {
		t.Skipf("no test cluster: set $%s (make e2e-kube does)", kubeconfigEnv)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatal(err)
	}
	cfg.QPS, cfg.Burst = 50, 100 // a dozen informers start at once
	c := &cluster{client: kubernetes.NewForConfigOrDie(cfg), dynamic: dynamic.NewForConfigOrDie(cfg)}
	c.installCRDs(t)
	return c
}

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// installCRDs creates or updates Trellis's CRDs and waits until each is served.
func (c *cluster) installCRDs(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	for _, doc := range bytes.Split(manifests.CRDsYAML(), []byte("\n---\n")) {
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal(doc, &u.Object); err != nil {
			t.Fatal(err)
		}
		_, err := c.dynamic.Resource(crdGVR).Create(ctx, u, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			cur, gerr := c.dynamic.Resource(crdGVR).Get(ctx, u.GetName(), metav1.GetOptions{})
			if gerr != nil {
				t.Fatal(gerr)
			}
			u.SetResourceVersion(cur.GetResourceVersion())
			_, err = c.dynamic.Resource(crdGVR).Update(ctx, u, metav1.UpdateOptions{})
		}
		if err != nil {
			t.Fatalf("CRD %s: %v", u.GetName(), err)
		}
	}
	for _, cr := range kube.CustomResources() {
		eventually(t, 30*time.Second, "CRD "+cr.GVR.String()+" served", func() error {
			rl, err := c.client.Discovery().ServerResourcesForGroupVersion(cr.GVR.GroupVersion().String())
			if err != nil {
				return err
			}
			for _, r := range rl.APIResources {
				if r.Name == cr.GVR.Resource {
					return nil
				}
			}
			return fmt.Errorf("not served yet")
		})
	}
}

// namespace creates a namespace for the test, in the mesh or not, and deletes
// it at cleanup.
func (c *cluster) namespace(t *testing.T, prefix string, inMesh bool) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-%06x", prefix, rand.IntN(1<<24))}}
	if inMesh {
		ns.Labels = map[string]string{kube.InjectLabel: "enabled"}
	}
	if _, err := c.client.CoreV1().Namespaces().Create(context.Background(), ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.client.CoreV1().Namespaces().Delete(context.Background(), ns.Name, metav1.DeleteOptions{}) })
	return ns.Name
}

// pod creates a pod no scheduler takes (so no kubelet runs it) and sets its
// status as a kubelet would: running, with ip. No packet is sent to ip.
func (c *cluster) pod(t *testing.T, ns, name, account, ip string) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	if _, err := c.client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: account}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{
			SchedulerName:      "trellis-test-unscheduled",
			ServiceAccountName: account,
			Containers:         []corev1.Container{{Name: "app", Image: "trellis.invalid/none", ImagePullPolicy: corev1.PullNever}},
		},
	}
	p, err := c.client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Status.Phase = corev1.PodRunning
	p.Status.PodIP = ip
	p.Status.PodIPs = []corev1.PodIP{{IP: ip}}
	p, err = c.client.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{})
	if err != nil {
		t.Fatalf("pod %s/%s status: %v", ns, name, err)
	}
	return p
}

// service creates a Service without a selector and the EndpointSlice that puts
// the given pods behind it, as the EndpointSlice controller would.
func (c *cluster) service(t *testing.T, ns, name string, port corev1.ServicePort, ready bool, pods ...*corev1.Pod) {
	t.Helper()
	ctx := context.Background()
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{port}}}
	if _, err := c.client.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	sl := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: name + "-test", Labels: map[string]string{
			discoveryv1.LabelServiceName: name, discoveryv1.LabelManagedBy: "trellis-test"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &port.Name, Port: &port.Port}},
	}
	for _, p := range pods {
		sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{p.Status.PodIP},
			Conditions: discoveryv1.EndpointConditions{Ready: &ready},
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: p.Name},
		})
	}
	if _, err := c.client.DiscoveryV1().EndpointSlices(ns).Create(ctx, sl, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// apply creates a custom resource from YAML.
func (c *cluster) apply(t *testing.T, doc string) {
	t.Helper()
	u := &unstructured.Unstructured{}
	if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
		t.Fatal(err)
	}
	gvr := c.gvrOf(t, u.GetKind())
	if _, err := c.dynamic.Resource(gvr).Namespace(u.GetNamespace()).Create(context.Background(), u, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create %s %s/%s: %v", u.GetKind(), u.GetNamespace(), u.GetName(), err)
	}
}

func (c *cluster) gvrOf(t *testing.T, kind string) schema.GroupVersionResource {
	for _, cr := range kube.CustomResources() {
		if cr.Kind == kind {
			return cr.GVR
		}
	}
	t.Fatalf("kind %s is not a Trellis custom resource", kind)
	return schema.GroupVersionResource{}
}

func eventually(t *testing.T, d time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %s: %v", what, d, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestSourceAgainstAPIServer runs the source against a real API server: the
// first snapshot comes only after sync, holds the meshed namespace's services,
// pods (with their service-account identities and readiness from the
// EndpointSlices) and custom resources, leaves other namespaces out, reports a
// bad resource without dropping the rest, and follows changes.
func TestSourceAgainstAPIServer(t *testing.T) {
	c := testCluster(t)
	ns := c.namespace(t, "bookstore", true)
	outside := c.namespace(t, "outside", false)

	v1 := c.pod(t, ns, "bookstore-v1", "bookstore", "10.244.0.201")
	v2 := c.pod(t, ns, "bookstore-v2", "bookstore-v2", "10.244.0.202")
	c.pod(t, ns, "bookbuyer", "bookbuyer", "10.244.0.203")
	web := corev1.ServicePort{Name: "bookstore-port", Port: 14001}
	c.service(t, ns, "bookstore", web, true, v1, v2)
	c.service(t, ns, "bookstore-v1", web, true, v1)
	c.service(t, ns, "bookstore-v2", web, false, v2) // not ready
	c.service(t, ns, "mysql", corev1.ServicePort{Name: "client", Port: 3306, AppProtocol: ptr("tcp-server-first")}, true)
	c.service(t, outside, "elsewhere", web, true)
	c.apply(t, fmt.Sprintf(`apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata: {name: bookstore-split, namespace: %s}
spec:
  service: bookstore.%[1]s
  backends: [{service: bookstore-v1, weight: 50}, {service: bookstore-v2, weight: 50}]
`, ns))
	c.apply(t, fmt.Sprintf(`apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata: {name: broken, namespace: %s}
spec:
  service: mysql
  backends: [{service: bookstore-v1, weight: 0}]
`, ns))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	src := kube.New(kube.Options{Client: c.client, Dynamic: c.dynamic})
	if src.Snapshot() != nil {
		t.Fatal("a snapshot before Run")
	}
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	select {
	case <-src.Synced():
	case err := <-done:
		t.Fatalf("Run: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("not synced after 30s")
	}
	key := func(n string) model.Key { return model.Key{Namespace: ns, Name: n} }

	// Namespaces and objects made by this test may reach the informers after
	// the first sync; wait for the full view.
	var snap *model.Snapshot
	eventually(t, 10*time.Second, "the snapshot holds the test's objects", func() error {
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
	found := false
	for _, p := range src.Problems() {
		if p.Object == "TrafficSplit "+ns+"/broken" && strings.Contains(p.Message, "weights sum to 0") {
			found = true
		}
	}
	if !found {
		t.Errorf("no problem names TrafficSplit %s/broken's weights: %v", ns, src.Problems())
	}

	// A change reaches the snapshot: delete the split.
	before := snap.Hash()
	if err := c.dynamic.Resource(c.gvrOf(t, "TrafficSplit")).Namespace(ns).Delete(context.Background(), "bookstore-split", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the split is gone from the snapshot", func() error {
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
	c := testCluster(t)
	ns := c.namespace(t, "bookbuyer", true)
	ctx := context.Background()
	if _, err := c.client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "bookbuyer"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	token := func(aud string) string {
		t.Helper()
		exp := int64(600)
		tr, err := c.client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "bookbuyer", &authnv1.TokenRequest{
			Spec: authnv1.TokenRequestSpec{Audiences: []string{aud}, ExpirationSeconds: &exp},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return tr.Status.Token
	}
	r := &kube.TokenReviewer{Client: c.client}
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
