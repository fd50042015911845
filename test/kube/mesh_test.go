package kube

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/trellis-mesh/trellis/examples/bookstore"
	"github.com/trellis-mesh/trellis/internal/cli"
	"github.com/trellis-mesh/trellis/internal/controlplane"
	"github.com/trellis-mesh/trellis/internal/inject"
	"github.com/trellis-mesh/trellis/test/kubetest"
)

// ImagesEnv says Trellis's images are imported into the cluster
// (test/cluster/images.sh; make e2e-kube sets it).
const ImagesEnv = "TRELLIS_TEST_IMAGES"

// nodeIP is the cluster bridge's address on this machine, where pods reach
// the host (test/cluster/lib.sh).
const nodeIP = "10.244.0.1"

// mesh is a control plane in Kubernetes mode, running in the test on the host,
// with its webhook registered for the test's namespaces.
type mesh struct {
	c    *kubetest.Cluster
	info controlplane.KubeInfo
}

func startMesh(t *testing.T, c *kubetest.Cluster, namespaces ...string) *mesh {
	t.Helper()
	state := t.TempDir()
	// Sidecars in pods dial the bridge address; the webhook is for the API
	// server, on this machine.
	gl, err := net.Listen("tcp", nodeIP+":0")
	if err != nil {
		t.Fatalf("the cluster bridge %s is not on this machine: %v", nodeIP, err)
	}
	grpcAddr := gl.Addr().String()
	gl.Close()
	m := &mesh{c: c}
	m.info, _ = c.ControlPlane(t, controlplane.KubeOptions{StateDir: state, GRPCAddr: grpcAddr, Namespace: namespaces[0], IPs: []net.IP{net.ParseIP(nodeIP)},
		Inject: inject.Config{ProxyImage: "localhost/trellis/proxy:dev", CaptureImage: "localhost/trellis/capture:dev", ControlPlane: grpcAddr, PullPolicy: corev1.PullNever}})
	rootPEM, err := os.ReadFile(filepath.Join(state, "ca", "root.crt"))
	if err != nil {
		t.Fatal(err)
	}
	name := "trellis-e2e-" + namespaces[0]
	url := "https://" + m.info.Webhook + "/mutate"
	wh := &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name:         "inject.trellis.io",
			ClientConfig: admissionregistrationv1.WebhookClientConfig{URL: &url, CABundle: rootPEM},
			Rules: []admissionregistrationv1.RuleWithOperations{{Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
				Rule: admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}}}},
			NamespaceSelector:       &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "kubernetes.io/metadata.name", Operator: metav1.LabelSelectorOpIn, Values: namespaces}}},
			FailurePolicy:           kubetest.Ptr(admissionregistrationv1.Fail), // a test pod must not start unmeshed
			SideEffects:             kubetest.Ptr(admissionregistrationv1.SideEffectClassNone),
			AdmissionReviewVersions: []string{"v1"},
			TimeoutSeconds:          kubetest.Ptr(int32(10)),
		}},
	}
	if _, err := c.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(context.Background(), wh, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Delete(context.Background(), name, metav1.DeleteOptions{})
	})
	return m
}

// app runs one of the bookstore demo's apps as a pod of Trellis's own image,
// with the given labels (default app: name), listening on port when not 0.
func (m *mesh) app(t *testing.T, ns, name, account string, labels map[string]string, port int32, args ...string) {
	t.Helper()
	ctx := context.Background()
	if _, err := m.c.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: account}}, metav1.CreateOptions{}); err != nil && !strings.Contains(err.Error(), "already exists") {
		t.Fatal(err)
	}
	if labels == nil {
		labels = map[string]string{"app": name}
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: corev1.PodSpec{
			ServiceAccountName: account,
			Containers: []corev1.Container{{
				Name: name, Image: "localhost/trellis/trellis:dev", ImagePullPolicy: corev1.PullNever,
				Args: append([]string{"demo-app"}, args...),
			}},
			TerminationGracePeriodSeconds: kubetest.Ptr(int64(5)),
		},
	}
	if port != 0 {
		pod.Spec.Containers[0].Ports = []corev1.ContainerPort{{Name: "web", ContainerPort: port}}
	} else {
		// A client's stats page (8080) is read by the test from the node,
		// outside the mesh: inbound capture leaves it alone.
		pod.Annotations = map[string]string{inject.InboundPortExclusionAnnotation: "8080"}
	}
	if _, err := m.c.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatalf("pod %s/%s: %v", ns, name, err)
	}
}

// service makes a Service on port for the pods with the given labels.
func (m *mesh) service(t *testing.T, ns, name string, selector map[string]string, port int32) {
	t.Helper()
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.ServiceSpec{
		Selector: selector,
		Ports:    []corev1.ServicePort{{Name: name + "-port", Port: port, TargetPort: intstr.FromInt32(port)}},
	}}
	if _, err := m.c.Client.CoreV1().Services(ns).Create(context.Background(), svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// waitRunning waits until the pod's containers all run and returns its IP.
func (m *mesh) waitRunning(t *testing.T, ns, name string) string {
	t.Helper()
	var ip string
	kubetest.Eventually(t, 90*time.Second, "pod "+ns+"/"+name+" running with its sidecar", func() error {
		p, err := m.c.Client.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if !injected(p) {
			return fmt.Errorf("not injected: init containers %v", containerNames(p.Spec.InitContainers))
		}
		for _, st := range append(p.Status.InitContainerStatuses, p.Status.ContainerStatuses...) {
			if st.Name == inject.CaptureContainer {
				// Runs once, before the sidecar: done, and done well.
				if st.State.Terminated == nil || st.State.Terminated.ExitCode != 0 {
					return fmt.Errorf("container %s: %+v", st.Name, st.State)
				}
				continue
			}
			if st.State.Running == nil || !st.Ready && st.Name != name {
				return fmt.Errorf("container %s: %+v", st.Name, st.State)
			}
		}
		if len(p.Status.ContainerStatuses) == 0 || p.Status.PodIP == "" {
			return fmt.Errorf("phase %s, no container status yet", p.Status.Phase)
		}
		ip = p.Status.PodIP
		return nil
	})
	return ip
}

// injected says whether the pod has the sidecar among its init containers.
func injected(p *corev1.Pod) bool {
	for _, c := range p.Spec.InitContainers {
		if c.Name == inject.ProxyContainer {
			return true
		}
	}
	return false
}

func containerNames(cs []corev1.Container) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Name)
	}
	return out
}

// stats reads a demo client's counters from its stats page in the pod.
func stats(t *testing.T, ip string) bookstore.ClientStats {
	t.Helper()
	hc := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{Proxy: nil}}
	var st bookstore.ClientStats
	kubetest.Eventually(t, 20*time.Second, "stats of the client at "+ip, func() error {
		resp, err := hc.Get("http://" + net.JoinHostPort(ip, "8080") + "/stats")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		return json.NewDecoder(resp.Body).Decode(&st)
	})
	return st
}

// TestBookstoreOnCluster runs bookbuyer, bookthief, bookstore and bookwarehouse
// as injected pods of Trellis's own images and follows the OSM walk-through:
// in permissive mode bookbuyer is served through the sidecars; in strict mode
// both clients are denied until a TrafficTarget allows bookbuyer, after which
// bookbuyer is served and bookthief still denied. The outcomes are read from
// the apps' own counters.
func TestBookstoreOnCluster(t *testing.T) {
	if os.Getenv(ImagesEnv) == "" {
		t.Skipf("Trellis's images are not in the cluster: set $%s after test/cluster/images.sh (make e2e-kube does)", ImagesEnv)
	}
	c := kubetest.New(t)
	store := c.Namespace(t, "bookstore", true)
	buyer := c.Namespace(t, "bookbuyer", true)
	thief := c.Namespace(t, "bookthief", true)
	warehouse := c.Namespace(t, "bookwarehouse", true)
	m := startMesh(t, c, store, buyer, thief, warehouse)

	// The apps arrive as in the walk-through: ServiceAccounts, Services and
	// Deployments applied with kubectl. They call each other by name
	// (bookstore.<namespace>:14001), resolved by the cluster's DNS; capture
	// hands the connections to their sidecars.
	kubetest.KubectlApply(t, bookstoreApps(store, buyer, thief, warehouse))
	m.waitDeployment(t, warehouse, "app=bookwarehouse", 1)
	storeIP := m.podIP(t, store, m.waitDeployment(t, store, "app=bookstore,version=v1", 1)[0])
	buyerPod := m.waitDeployment(t, buyer, "app=bookbuyer", 1)[0]
	buyerIP := m.podIP(t, buyer, buyerPod)
	thiefIP := m.podIP(t, thief, m.waitDeployment(t, thief, "app=bookthief", 1)[0])
	warehouseURL := "http://bookwarehouse." + warehouse + ":14001"

	// Permissive (no MeshConfig: OSM's default): bookbuyer is served.
	kubetest.Eventually(t, 60*time.Second, "bookbuyer served in permissive mode", func() error {
		a := stats(t, buyerIP)
		time.Sleep(2 * time.Second)
		b := stats(t, buyerIP)
		if b.OK-a.OK < 5 {
			return fmt.Errorf("bookbuyer: %d more 2xx in 2 s (reasons %v)", b.OK-a.OK, b.Reasons)
		}
		return nil
	})

	// Strict mode: both clients denied. The sidecar resources reach the pods
	// injected from now on (bookstore v2's, below).
	kubetest.KubectlApply(t, `apiVersion: config.openservicemesh.io/v1alpha2
kind: MeshConfig
metadata: {name: osm-mesh-config, namespace: `+store+`}
spec:
  traffic: {enablePermissiveTrafficPolicyMode: false, enableEgress: false}
  sidecar:
    resources: {limits: {cpu: "2", memory: 256Mi}, requests: {cpu: 10m, memory: 32Mi}}
`)
	deniedNow := func(ip, who string) func() error {
		return func() error {
			a := stats(t, ip)
			time.Sleep(2 * time.Second)
			b := stats(t, ip)
			if b.OK != a.OK || b.Denied-a.Denied < 5 {
				return fmt.Errorf("%s: %d more 2xx, %d more denied in 2 s (reasons %v)", who, b.OK-a.OK, b.Denied-a.Denied, b.Reasons)
			}
			return nil
		}
	}
	kubetest.Eventually(t, 30*time.Second, "bookbuyer denied in strict mode", deniedNow(buyerIP, "bookbuyer"))
	kubetest.Eventually(t, 30*time.Second, "bookthief denied in strict mode", deniedNow(thiefIP, "bookthief"))

	// Transparent capture closes the app's own port to callers outside the
	// mesh: this test, on the node, dials bookstore's app port directly; the
	// connection is captured, refused under strict mTLS and counted.
	plain := func() float64 {
		return counter(t, storeIP, "trellis_connections_refused_total", map[string]string{"direction": "inbound", "reason": "plaintext"})
	}
	plainBefore := plain()
	if conn, err := net.DialTimeout("tcp", net.JoinHostPort(storeIP, "14001"), 3*time.Second); err != nil {
		t.Errorf("dial bookstore's app port %s:14001: %v; want it captured (accepted, then closed)", storeIP, err)
	} else {
		conn.Write([]byte("GET /books-bought HTTP/1.1\r\nHost: bookstore\r\n\r\n"))
		conn.SetReadDeadline(time.Now().Add(3 * time.Second))
		b, _ := io.ReadAll(conn)
		conn.Close()
		if len(b) > 0 {
			t.Errorf("a plaintext caller outside the mesh read %q from bookstore's app port, want nothing under strict mTLS", b)
		}
	}
	kubetest.Eventually(t, 10*time.Second, "the plaintext caller counted as refused", func() error {
		if n := plain(); n <= plainBefore {
			return fmt.Errorf("bookstore's sidecar counts %v plaintext refusals, want more than %v", n, plainBefore)
		}
		return nil
	})

	// The walk-through's TrafficTarget and HTTPRouteGroup, for bookbuyer only.
	kubetest.KubectlApply(t, `apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: bookstore-service-routes, namespace: `+store+`}
spec:
  matches:
  - name: books-bought
    pathRegex: /books-bought
    methods: [GET]
    headers:
    - "user-agent": ".*-http-client/*.*"
    - "client-app": "bookbuyer"
  - name: buy-a-book
    pathRegex: ".*a-book.*new"
    methods: [GET]
`)
	kubetest.KubectlApply(t, `apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: bookstore, namespace: `+store+`}
spec:
  destination: {kind: ServiceAccount, name: bookstore, namespace: `+store+`}
  rules:
  - kind: HTTPRouteGroup
    name: bookstore-service-routes
    matches: [buy-a-book, books-bought]
  sources:
  - {kind: ServiceAccount, name: bookbuyer, namespace: `+buyer+`}
`)
	kubetest.Eventually(t, 30*time.Second, "bookbuyer served once the TrafficTarget allows it", func() error {
		a := stats(t, buyerIP)
		time.Sleep(2 * time.Second)
		b := stats(t, buyerIP)
		if b.OK-a.OK < 5 || b.Denied != a.Denied {
			return fmt.Errorf("bookbuyer: %d more 2xx, %d more denied in 2 s (reasons %v)", b.OK-a.OK, b.Denied-a.Denied, b.Reasons)
		}
		return nil
	})
	kubetest.Eventually(t, 10*time.Second, "bookthief still denied", deniedNow(thiefIP, "bookthief"))

	// The sidecars' own metrics agree with the apps: bookbuyer's sidecar
	// counted 2xx answers from bookstore, bookthief's counted its refusals,
	// naming the reason.
	if n := requests(t, buyerIP, map[string]string{"direction": "outbound", "response_code": "200", "destination_service": "bookstore." + store}); n < 5 {
		t.Errorf("bookbuyer's sidecar counted %v outbound 200s to bookstore, want some", n)
	}
	if n := requests(t, thiefIP, map[string]string{"direction": "outbound", "reason": "denied"}); n < 5 {
		t.Errorf("bookthief's sidecar counted %v denied requests, want some", n)
	}

	// trellis proxy config reads the sidecar through the API server's pod proxy.
	var out, errb bytes.Buffer
	if code := cli.Main(context.Background(), []string{"proxy", "config", "--kubernetes", "-n", buyer, buyerPod, "-o", "json",
		"--kubeconfig", os.Getenv(kubetest.KubeconfigEnv)}, &out, &errb); code != 0 {
		t.Fatalf("trellis proxy config: exit %d: %s", code, errb.String())
	}
	var pc struct {
		Identity     string `json:"identity"`
		Destinations []struct {
			Authority string `json:"authority"`
			Config    struct {
				Service string `json:"service"`
			} `json:"config"`
		} `json:"destinations"`
	}
	if err := json.Unmarshal(out.Bytes(), &pc); err != nil {
		t.Fatalf("trellis proxy config -o json: %v\n%s", err, out.String())
	}
	// bookbuyer called bookstore by name, which the cluster's DNS turned
	// into the Service's ClusterIP: capture hands the sidecar the address,
	// and it holds the destination by it, resolved to the service.
	storeSvc, err := m.c.Client.CoreV1().Services(store).Get(context.Background(), "bookstore", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	wantAuthority := net.JoinHostPort(storeSvc.Spec.ClusterIP, "14001")
	if pc.Identity != "spiffe://cluster.local/ns/"+buyer+"/sa/bookbuyer" || len(pc.Destinations) != 1 ||
		pc.Destinations[0].Authority != wantAuthority || pc.Destinations[0].Config.Service != "bookstore."+store {
		t.Errorf("proxy config of bookbuyer: identity %q, destinations %+v; want bookbuyer's identity and %s, service bookstore.%s", pc.Identity, pc.Destinations, wantAuthority, store)
	}

	// trellis stat reads the same sidecars' metrics and sees bookstore serve,
	// in a row for its Deployment.
	out.Reset()
	errb.Reset()
	if code := cli.Main(context.Background(), []string{"stat", "--kubernetes", "-n", store, "--window", "2s", "-o", "json",
		"--kubeconfig", os.Getenv(kubetest.KubeconfigEnv)}, &out, &errb); code != 0 {
		t.Fatalf("trellis stat: exit %d: %s", code, errb.String())
	}
	var rows []struct {
		Namespace    string  `json:"namespace"`
		Workload     string  `json:"workload"`
		TotalSuccess float64 `json:"total_success"`
	}
	if err := json.Unmarshal(out.Bytes(), &rows); err != nil {
		t.Fatalf("trellis stat -o json: %v\n%s", err, out.String())
	}
	served := 0.0
	for _, r := range rows {
		if r.Namespace == store && r.Workload == "deployment/bookstore-v1" {
			served = r.TotalSuccess
		}
	}
	if served < 5 {
		t.Errorf("trellis stat --kubernetes: bookstore-v1 served %v requests successfully, want some; rows %s", served, out.String())
	}

	// bookstore v2 joins; the split moves the traffic, 50/50 then all to v2.
	kubetest.KubectlApply(t, `apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: bookstore-v2, namespace: `+store+`}
spec:
  destination: {kind: ServiceAccount, name: bookstore-v2, namespace: `+store+`}
  rules:
  - kind: HTTPRouteGroup
    name: bookstore-service-routes
    matches: [buy-a-book, books-bought]
  sources:
  - {kind: ServiceAccount, name: bookbuyer, namespace: `+buyer+`}
`)
	// As in the walk-through, v2 arrives as a ServiceAccount and a
	// Deployment applied with kubectl; two replicas, so that one can be
	// deleted later with the other serving.
	kubetest.KubectlApply(t, fmt.Sprintf(`apiVersion: v1
kind: ServiceAccount
metadata: {name: bookstore-v2, namespace: %[1]s}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: bookstore-v2, namespace: %[1]s}
spec:
  replicas: 2
  selector:
    matchLabels: {app: bookstore, version: v2}
  template:
    metadata:
      labels: {app: bookstore, version: v2}
    spec:
      serviceAccountName: bookstore-v2
      terminationGracePeriodSeconds: 10
      containers:
      - name: bookstore
        image: localhost/trellis/trellis:dev
        imagePullPolicy: Never
        args: [demo-app, bookstore, --listen, 127.0.0.1:14001, --version, v2, --warehouse, %[2]s]
        ports: [{name: web, containerPort: 14001}]
`, store, warehouseURL))
	v2Pods := m.waitDeployment(t, store, "app=bookstore,version=v2", 2)
	// Injected after the MeshConfig: its sidecar resources, and as many
	// threads as the CPU limit.
	if p, err := m.c.Client.CoreV1().Pods(store).Get(context.Background(), v2Pods[0], metav1.GetOptions{}); err != nil {
		t.Error(err)
	} else {
		for _, c := range p.Spec.InitContainers {
			if c.Name != inject.ProxyContainer {
				continue
			}
			if c.Resources.Limits.Cpu().String() != "2" || c.Resources.Requests.Memory().String() != "32Mi" || !slices.Contains(c.Args, "--concurrency") || c.Args[slices.Index(c.Args, "--concurrency")+1] != "2" {
				t.Errorf("bookstore v2's sidecar: resources %+v, args %v; want the MeshConfig's resources and --concurrency 2", c.Resources, c.Args)
			}
		}
	}
	split := func(v1, v2 int) string {
		return fmt.Sprintf(`apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata: {name: bookstore-split, namespace: %s}
spec:
  service: bookstore.%[1]s
  backends: [{service: bookstore-v1, weight: %d}, {service: bookstore-v2, weight: %d}]
`, store, v1, v2)
	}
	// share measures v2's share of bookbuyer's successful requests over d.
	share := func(d time.Duration) (float64, int64) {
		a := stats(t, buyerIP)
		time.Sleep(d)
		b := stats(t, buyerIP)
		n := (b.ServedBy["bookstore-v1"] + b.ServedBy["bookstore-v2"]) - (a.ServedBy["bookstore-v1"] + a.ServedBy["bookstore-v2"])
		if n == 0 {
			return 0, 0
		}
		return float64(b.ServedBy["bookstore-v2"]-a.ServedBy["bookstore-v2"]) / float64(n), n
	}
	kubetest.KubectlApply(t, split(50, 50))
	kubetest.Eventually(t, 30*time.Second, "a 50/50 split", func() error {
		if sh, n := share(3 * time.Second); n < 20 || sh < 0.3 || sh > 0.7 {
			return fmt.Errorf("bookstore-v2 served %.0f%% of %d requests, want 30-70%%", 100*sh, n)
		}
		return nil
	})
	before := stats(t, buyerIP)
	applied := time.Now()
	kubetest.KubectlApply(t, split(0, 100)) // kubectl apply updates the split in place
	// The split has moved once a window of requests all went to v2.
	var took time.Duration
	kubetest.Eventually(t, 30*time.Second, "all traffic on bookstore-v2", func() error {
		if sh, n := share(500 * time.Millisecond); n < 3 || sh < 1 {
			return fmt.Errorf("bookstore-v2 served %.0f%% of %d requests", 100*sh, n)
		}
		took = time.Since(applied)
		return nil
	})
	t.Logf("TrafficSplit v2-only took effect in the pods within %s of being applied (a 500 ms window)", took.Round(10*time.Millisecond))
	if sh, n := share(3 * time.Second); n < 20 || sh < 0.99 {
		t.Errorf("after the v2-only split, bookstore-v2 served %.1f%% of %d requests, want >= 99%%", 100*sh, n)
	}
	after := stats(t, buyerIP)
	if after.Failed != before.Failed || after.Denied != before.Denied {
		t.Errorf("requests failed while the split moved: failed %d→%d, denied %d→%d (reasons %v)", before.Failed, after.Failed, before.Denied, after.Denied, after.Reasons)
	}

	// A v2 pod is deleted with all traffic on v2: its endpoint leaves the
	// mesh at once, its app serves out the injected preStop while callers
	// learn of it, and the other replica takes the requests. The Deployment
	// brings a new pod. No request fails: Trellis retries nothing, so the
	// retry budget is zero.
	before = stats(t, buyerIP)
	kubetest.Kubectl(t, "", "delete", "pod", "-n", store, v2Pods[0], "--wait=false")
	kubetest.Eventually(t, 60*time.Second, "the deleted v2 pod replaced", func() error {
		pods := m.deploymentPods(t, store, "app=bookstore,version=v2")
		if len(pods) != 2 || slices.Contains(pods, v2Pods[0]) {
			return fmt.Errorf("v2 pods running and ready: %v", pods)
		}
		return nil
	})
	if sh, n := share(3 * time.Second); n < 20 || sh < 0.99 {
		t.Errorf("after the pod deletion, bookstore-v2 served %.1f%% of %d requests, want >= 99%%", 100*sh, n)
	}
	after = stats(t, buyerIP)
	if after.Failed != before.Failed || after.Denied != before.Denied || after.OK-before.OK < 20 {
		t.Errorf("around the deletion of %s: failed %d→%d, denied %d→%d, served %d (reasons %v); want none failed", v2Pods[0], before.Failed, after.Failed, before.Denied, after.Denied, after.OK-before.OK, after.Reasons)
	}
}

// bookstoreApps is the walk-through's apps in the four namespaces, as seed
// 001 and OSM's demo deploy them: a ServiceAccount, a Service and a
// Deployment each (bookbuyer and bookthief serve no one and have no
// Service), the bookstore's root Service over every version and a leaf
// Service per version. The images are Trellis's own demo apps, the names
// and ports OSM's.
func bookstoreApps(store, buyer, thief, warehouse string) string {
	var b strings.Builder
	app := func(ns, name, account string, labels map[string]string, port int, args string) {
		var ls []string
		for _, k := range slices.Sorted(maps.Keys(labels)) {
			ls = append(ls, k+": "+labels[k])
		}
		sel := "{" + strings.Join(ls, ", ") + "}"
		fmt.Fprintf(&b, `apiVersion: v1
kind: ServiceAccount
metadata: {name: %[3]s, namespace: %[1]s}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: %[2]s, namespace: %[1]s}
spec:
  replicas: 1
  selector:
    matchLabels: %[4]s
  template:
    metadata:
      labels: %[4]s
`, ns, name, account, sel)
		if port == 0 {
			// A client's stats page (8080) is read by the test from the
			// node, outside the mesh: inbound capture leaves it alone.
			fmt.Fprintf(&b, "      annotations: {%s: \"8080\"}\n", inject.InboundPortExclusionAnnotation)
		}
		fmt.Fprintf(&b, `    spec:
      serviceAccountName: %[1]s
      terminationGracePeriodSeconds: 5
      containers:
      - name: %[2]s
        image: localhost/trellis/trellis:dev
        imagePullPolicy: Never
        args: [demo-app, %[3]s]
`, account, labels["app"], args)
		if port != 0 {
			fmt.Fprintf(&b, "        ports: [{name: web, containerPort: %d}]\n", port)
		}
		b.WriteString("---\n")
	}
	service := func(ns, name string, selector string) {
		fmt.Fprintf(&b, `apiVersion: v1
kind: Service
metadata: {name: %[2]s, namespace: %[1]s, labels: {app: %[2]s}}
spec:
  selector: %[3]s
  ports: [{name: %[2]s-port, port: 14001, targetPort: 14001}]
---
`, ns, name, selector)
	}
	warehouseURL := "http://bookwarehouse." + warehouse + ":14001"
	storeURL := "http://bookstore." + store + ":14001"
	service(warehouse, "bookwarehouse", "{app: bookwarehouse}")
	app(warehouse, "bookwarehouse", "bookwarehouse", map[string]string{"app": "bookwarehouse"}, 14001, "bookwarehouse, --listen, 127.0.0.1:14001")
	// As in OSM's demo: the root service holds every version; each version
	// has a leaf service of its own.
	service(store, "bookstore", "{app: bookstore}")
	service(store, "bookstore-v1", "{app: bookstore, version: v1}")
	service(store, "bookstore-v2", "{app: bookstore, version: v2}")
	app(store, "bookstore-v1", "bookstore", map[string]string{"app": "bookstore", "version": "v1"}, 14001,
		"bookstore, --listen, 127.0.0.1:14001, --version, v1, --warehouse, "+warehouseURL)
	app(buyer, "bookbuyer", "bookbuyer", map[string]string{"app": "bookbuyer"}, 0, "bookbuyer, --listen, 0.0.0.0:8080, --bookstore, "+storeURL)
	app(thief, "bookthief", "bookthief", map[string]string{"app": "bookthief"}, 0, "bookthief, --listen, 0.0.0.0:8080, --bookstore, "+storeURL)
	return b.String()
}

// podIP returns a running pod's address.
func (m *mesh) podIP(t *testing.T, ns, name string) string {
	t.Helper()
	p, err := m.c.Client.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Status.PodIP == "" {
		t.Fatalf("pod %s/%s has no IP", ns, name)
	}
	return p.Status.PodIP
}

// deploymentPods lists the running pods matching selector whose containers
// are all ready and that are not being deleted.
func (m *mesh) deploymentPods(t *testing.T, ns, selector string) []string {
	t.Helper()
	pods, err := m.c.Client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range pods.Items {
		if p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning || !injected(&p) {
			continue
		}
		ready := len(p.Status.ContainerStatuses) > 0
		for _, st := range p.Status.ContainerStatuses {
			ready = ready && st.Ready
		}
		if ready {
			out = append(out, p.Name)
		}
	}
	sort.Strings(out)
	return out
}

// waitDeployment waits until n meshed pods matching selector run ready, and
// returns their names.
func (m *mesh) waitDeployment(t *testing.T, ns, selector string, n int) []string {
	t.Helper()
	var pods []string
	kubetest.Eventually(t, 90*time.Second, fmt.Sprintf("%d ready meshed pods %s in %s", n, selector, ns), func() error {
		if pods = m.deploymentPods(t, ns, selector); len(pods) != n {
			return fmt.Errorf("ready: %v", pods)
		}
		return nil
	})
	return pods
}

// requests sums a sidecar's trellis_requests_total over the series with the
// given labels, read from its admin port in the pod.
func requests(t *testing.T, podIP string, want map[string]string) float64 {
	t.Helper()
	return counter(t, podIP, "trellis_requests_total", want)
}

// counter sums a sidecar's counter family over the series whose labels
// include want.
func counter(t *testing.T, podIP, family string, want map[string]string) float64 {
	t.Helper()
	hc := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{Proxy: nil}}
	resp, err := hc.Get("http://" + net.JoinHostPort(podIP, "15000") + "/metrics")
	if err != nil {
		t.Fatalf("sidecar metrics at %s: %v", podIP, err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("sidecar metrics at %s do not parse: %v", podIP, err)
	}
	var sum float64
	for _, m := range fams[family].GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		match := true
		for k, v := range want {
			match = match && labels[k] == v
		}
		if match {
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}
