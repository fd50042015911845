// Package kubetest is the Kubernetes tests' access to the test cluster
// (test/cluster): a client from $TRELLIS_TEST_KUBECONFIG, Trellis's CRDs
// installed, and helpers that create namespaces, pods, services and custom
// resources and remove them after the test. Only tests import it.
package kubetest

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"github.com/trellis-mesh/trellis/internal/controlplane"
	"github.com/trellis-mesh/trellis/internal/inject"
	"github.com/trellis-mesh/trellis/internal/manifests"
	"github.com/trellis-mesh/trellis/internal/source/kube"
)

// KubeconfigEnv names the kubeconfig of the test cluster (test/cluster; `make
// e2e-kube` sets it). Without it, tests that need a cluster are skipped.
const KubeconfigEnv = "TRELLIS_TEST_KUBECONFIG"

// Cluster is the test cluster's API, with helpers that clean up after the test.
type Cluster struct {
	Client  kubernetes.Interface
	Dynamic dynamic.Interface
	Config  *rest.Config
}

// New connects to the test cluster and installs Trellis's CRDs; it skips the
// test when no cluster is configured.
func New(t *testing.T) *Cluster {
	t.Helper()
	path := os.Getenv(KubeconfigEnv)
	if path == "" {
		t.Skipf("no test cluster: set $%s (make e2e-kube does)", KubeconfigEnv)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatal(err)
	}
	cfg.QPS, cfg.Burst = 50, 100 // a dozen informers start at once
	c := &Cluster{Client: kubernetes.NewForConfigOrDie(cfg), Dynamic: dynamic.NewForConfigOrDie(cfg), Config: cfg}
	c.installCRDs(t)
	return c
}

// CRDResource is where CustomResourceDefinitions live.
var CRDResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// installCRDs creates or updates Trellis's CRDs and waits until each is served.
func (c *Cluster) installCRDs(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	for _, doc := range bytes.Split(manifests.CRDsYAML(), []byte("\n---\n")) {
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal(doc, &u.Object); err != nil {
			t.Fatal(err)
		}
		_, err := c.Dynamic.Resource(CRDResource).Create(ctx, u, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			cur, gerr := c.Dynamic.Resource(CRDResource).Get(ctx, u.GetName(), metav1.GetOptions{})
			if gerr != nil {
				t.Fatal(gerr)
			}
			u.SetResourceVersion(cur.GetResourceVersion())
			_, err = c.Dynamic.Resource(CRDResource).Update(ctx, u, metav1.UpdateOptions{})
		}
		if err != nil {
			t.Fatalf("CRD %s: %v", u.GetName(), err)
		}
	}
	for _, cr := range kube.CustomResources() {
		Eventually(t, 30*time.Second, "CRD "+cr.GVR.String()+" served", func() error {
			rl, err := c.Client.Discovery().ServerResourcesForGroupVersion(cr.GVR.GroupVersion().String())
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

// Namespace creates a namespace for the test, in the mesh or not, and deletes
// it at cleanup.
func (c *Cluster) Namespace(t *testing.T, prefix string, inMesh bool) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-%06x", prefix, rand.IntN(1<<24))}}
	if inMesh {
		ns.Labels = map[string]string{kube.InjectLabel: "enabled"}
	}
	if _, err := c.Client.CoreV1().Namespaces().Create(context.Background(), ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Client.CoreV1().Namespaces().Delete(context.Background(), ns.Name, metav1.DeleteOptions{}) })
	return ns.Name
}

// MeshedPod is Pod with the sidecar already in its spec, as the webhook
// would have injected it (the pod never runs either way).
func (c *Cluster) MeshedPod(t *testing.T, ns, name, account, ip string) *corev1.Pod {
	t.Helper()
	return c.pod(t, ns, name, account, ip, true)
}

// Pod creates a pod no scheduler takes (so no kubelet runs it) and sets its
// status as a kubelet would: running, with ip. No packet is sent to ip.
func (c *Cluster) Pod(t *testing.T, ns, name, account, ip string) *corev1.Pod {
	t.Helper()
	return c.pod(t, ns, name, account, ip, false)
}

func (c *Cluster) pod(t *testing.T, ns, name, account, ip string, sidecar bool) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	if _, err := c.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: account}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
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
	if sidecar {
		p.Spec.InitContainers = []corev1.Container{{Name: inject.ProxyContainer, Image: "trellis.invalid/proxy", ImagePullPolicy: corev1.PullNever,
			RestartPolicy: Ptr(corev1.ContainerRestartPolicyAlways)}}
	}
	p, err := c.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Status.Phase = corev1.PodRunning
	p.Status.PodIP = ip
	p.Status.PodIPs = []corev1.PodIP{{IP: ip}}
	p, err = c.Client.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{})
	if err != nil {
		t.Fatalf("pod %s/%s status: %v", ns, name, err)
	}
	return p
}

// Service creates a Service without a selector and the EndpointSlice that puts
// the given pods behind it, as the EndpointSlice controller would.
func (c *Cluster) Service(t *testing.T, ns, name string, port corev1.ServicePort, ready bool, pods ...*corev1.Pod) {
	t.Helper()
	ctx := context.Background()
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{port}}}
	if _, err := c.Client.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
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
	if _, err := c.Client.DiscoveryV1().EndpointSlices(ns).Create(ctx, sl, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// Apply creates a custom resource from YAML.
func (c *Cluster) Apply(t *testing.T, doc string) {
	t.Helper()
	u := &unstructured.Unstructured{}
	if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
		t.Fatal(err)
	}
	gvr := c.GVR(t, u.GetKind())
	if _, err := c.Dynamic.Resource(gvr).Namespace(u.GetNamespace()).Create(context.Background(), u, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create %s %s/%s: %v", u.GetKind(), u.GetNamespace(), u.GetName(), err)
	}
}

// KubectlEnv names the cluster's kubectl (test/cluster links it; `make
// e2e-kube` sets it), with which tests apply YAML as users do.
const KubectlEnv = "TRELLIS_TEST_KUBECTL"

// Kubectl runs the cluster's kubectl with the test cluster's kubeconfig and
// stdin as its input, and returns its output; it fails the test on error.
func Kubectl(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	bin := os.Getenv(KubectlEnv)
	if bin == "" {
		t.Fatalf("no kubectl: set $%s (make e2e-kube does)", KubectlEnv)
	}
	cmd := exec.Command(bin, append([]string{"--kubeconfig", os.Getenv(KubeconfigEnv)}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// KubectlApply applies YAML with `kubectl apply -f -`, as a user would.
func KubectlApply(t *testing.T, doc string) {
	t.Helper()
	Kubectl(t, doc, "apply", "-f", "-")
}

// GVR is the resource of one of Trellis's custom kinds.
func (c *Cluster) GVR(t *testing.T, kind string) schema.GroupVersionResource {
	for _, cr := range kube.CustomResources() {
		if cr.Kind == kind {
			return cr.GVR
		}
	}
	t.Fatalf("kind %s is not a Trellis custom resource", kind)
	return schema.GroupVersionResource{}
}

// Eventually retries f every 100 ms until it succeeds or d passes.
func Eventually(t *testing.T, d time.Duration, what string, f func() error) {
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

// Ptr returns a pointer to v.
func Ptr[T any](v T) *T { return &v }

// ControlPlane runs the control plane in Kubernetes mode in the test, against
// the test cluster, and waits until it serves. Empty options take test
// defaults: a temporary state directory, loopback listeners on free ports, the
// cluster's clients. The returned stop ends it (also done at cleanup) and
// reports its error.
func (c *Cluster) ControlPlane(t *testing.T, o controlplane.KubeOptions) (controlplane.KubeInfo, func()) {
	t.Helper()
	if o.StateDir == "" {
		o.StateDir = t.TempDir()
	}
	for _, a := range []*string{&o.GRPCAddr, &o.HealthAddr, &o.WebhookAddr} {
		if *a == "" {
			*a = "127.0.0.1:0"
		}
	}
	o.Client, o.Dynamic = c.Client, c.Dynamic
	ready := make(chan controlplane.KubeInfo, 1)
	o.Ready = func(i controlplane.KubeInfo) { ready <- i }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- controlplane.RunKube(ctx, o) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("RunKube: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	select {
	case info := <-ready:
		return info, stop
	case err := <-done:
		t.Fatalf("RunKube: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("control plane not serving after 30s")
	}
	return controlplane.KubeInfo{}, stop
}
