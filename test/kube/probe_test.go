package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/trellis-mesh/trellis/internal/inject"
	"github.com/trellis-mesh/trellis/test/kubetest"
)

// TestProbesUnderStrictMTLS runs bookstore, listening on the pod's loopback
// only, with an HTTP readiness probe and a TCP-socket liveness probe, twice in
// a strict-mode mesh: injected, and opted out. The kubelet's probes of the
// opted-out pod go to the pod's address, where nothing listens, so it never
// becomes Ready; the injected pod's probes were rewritten to the sidecar's
// admin port, which sends them on to the app, so it becomes Ready and stays
// alive. The app's own answer (its Identity header) comes back through the
// admin port, and the sidecar counts the kubelet's probes.
func TestProbesUnderStrictMTLS(t *testing.T) {
	if os.Getenv(ImagesEnv) == "" {
		t.Skipf("Trellis's images are not in the cluster: set $%s after test/cluster/images.sh (make e2e-kube does)", ImagesEnv)
	}
	c := kubetest.New(t)
	ns := c.Namespace(t, "probes", true)
	startMesh(t, c, ns) // its webhook injects the pods below
	c.Apply(t, `apiVersion: config.openservicemesh.io/v1alpha2
kind: MeshConfig
metadata: {name: osm-mesh-config, namespace: `+ns+`}
spec:
  traffic: {enablePermissiveTrafficPolicyMode: false, enableEgress: false}
`)
	ctx := context.Background()
	if _, err := c.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "bookstore"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := func(name string, annotations map[string]string) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": name}, Annotations: annotations},
			Spec: corev1.PodSpec{
				ServiceAccountName: "bookstore",
				Containers: []corev1.Container{{
					Name: "bookstore", Image: "localhost/trellis/trellis:dev", ImagePullPolicy: corev1.PullNever,
					Args:  []string{"demo-app", "bookstore", "--listen", "127.0.0.1:14001", "--version", "v1", "--warehouse", "http://bookwarehouse." + ns + ":14001"},
					Ports: []corev1.ContainerPort{{Name: "web", ContainerPort: 14001}},
					ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
						Path: "/readiness", Port: intstr.FromString("web"), HTTPHeaders: []corev1.HTTPHeader{{Name: "Client-App", Value: "kubelet"}}}},
						PeriodSeconds: 1, TimeoutSeconds: 2, FailureThreshold: 3},
					LivenessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(14001)}},
						InitialDelaySeconds: 2, PeriodSeconds: 2, FailureThreshold: 3},
				}},
				TerminationGracePeriodSeconds: kubetest.Ptr(int64(5)),
			},
		}
	}
	for _, p := range []*corev1.Pod{pod("bookstore-meshed", nil), pod("bookstore-unmeshed", map[string]string{inject.InjectKey: "disabled"})} {
		if _, err := c.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatalf("pod %s/%s: %v", ns, p.Name, err)
		}
	}

	start := time.Now()
	var meshed *corev1.Pod
	kubetest.Eventually(t, 90*time.Second, "the injected pod Ready in strict mode", func() error {
		p, err := c.Client.CoreV1().Pods(ns).Get(ctx, "bookstore-meshed", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if !podReady(p) {
			return fmt.Errorf("not Ready: phase %s, conditions %+v", p.Status.Phase, p.Status.Conditions)
		}
		meshed = p
		return nil
	})
	t.Logf("injected pod Ready %s after it was created", time.Since(start).Round(100*time.Millisecond))
	if rp := meshed.Spec.Containers[0].ReadinessProbe.HTTPGet; rp == nil || rp.Path != "/app-health/bookstore/readyz" || rp.Port.IntValue() != inject.AdminPort {
		t.Errorf("the injected pod's readiness probe is %+v, want GET /app-health/bookstore/readyz on port %d", rp, inject.AdminPort)
	}
	var originals map[string]map[string]corev1.ProbeHandler
	if err := json.Unmarshal([]byte(meshed.Annotations[inject.OriginalProbesAnnotation]), &originals); err != nil ||
		originals["bookstore"]["readinessProbe"].HTTPGet == nil || originals["bookstore"]["readinessProbe"].HTTPGet.Path != "/readiness" ||
		originals["bookstore"]["livenessProbe"].TCPSocket == nil {
		t.Errorf("annotation %s = %q (%v); want the original /readiness and TCP probes", inject.OriginalProbesAnnotation, meshed.Annotations[inject.OriginalProbesAnnotation], err)
	}

	// Strict mode is in force in the sidecar that serves the probes.
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil}}
	admin := "http://" + net.JoinHostPort(meshed.Status.PodIP, "15000")
	kubetest.Eventually(t, 30*time.Second, "strict mode in the injected pod's sidecar", func() error {
		resp, err := hc.Get(admin + "/config")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var cfg struct {
			Inbound struct {
				Permissive bool `json:"permissive"`
			} `json:"inbound"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&cfg); err != nil {
			return err
		}
		if cfg.Inbound.Permissive {
			return fmt.Errorf("the sidecar's inbound policy is permissive")
		}
		return nil
	})

	// The app answers through the admin port: its own Identity header.
	resp, err := hc.Get(admin + "/app-health/bookstore/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "ok\n" || resp.Header.Get("Identity") != "bookstore-v1" {
		t.Errorf("GET %s/app-health/bookstore/readyz = %d %q, Identity %q; want the app's 200 \"ok\" from bookstore-v1", admin, resp.StatusCode, body, resp.Header.Get("Identity"))
	}

	// The kubelet's probes: counted by the sidecar with the app's answers,
	// and the liveness probe kept the app running.
	time.Sleep(5 * time.Second)
	probes := appProbes(t, hc, admin)
	if probes["readyz/200"] < 3 || probes["livez/200"] < 1 {
		t.Errorf("trellis_app_probes_total of the injected pod = %v; want at least 3 readiness and 1 liveness probe answered 200", probes)
	}
	for k, n := range probes {
		if k != "readyz/200" && k != "livez/200" {
			t.Errorf("trellis_app_probes_total %s = %v; want only answers of 200", k, n)
		}
	}
	p, err := c.Client.CoreV1().Pods(ns).Get(ctx, "bookstore-meshed", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range p.Status.ContainerStatuses {
		if st.RestartCount != 0 {
			t.Errorf("container %s restarted %d times: its liveness probe failed", st.Name, st.RestartCount)
		}
	}

	// The same pod without the sidecar: the kubelet's probes find nothing on
	// the pod's address, so it is not Ready, though its app runs.
	u, err := c.Client.CoreV1().Pods(ns).Get(ctx, "bookstore-unmeshed", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(u.Spec.InitContainers) != 0 {
		t.Fatalf("the opted-out pod was injected: %+v", u.Spec.InitContainers)
	}
	running := false
	for _, st := range u.Status.ContainerStatuses {
		running = running || st.State.Running != nil || st.RestartCount > 0
	}
	if !running || podReady(u) {
		t.Errorf("the pod without the sidecar: running %v, Ready %v; want its app started and the pod never Ready (conditions %+v)", running, podReady(u), u.Status.Conditions)
	}
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// appProbes reads a sidecar's trellis_app_probes_total for the bookstore
// container, by "probe/code".
func appProbes(t *testing.T, hc *http.Client, admin string) map[string]float64 {
	t.Helper()
	resp, err := hc.Get(admin + "/metrics")
	if err != nil {
		t.Fatalf("sidecar metrics at %s: %v", admin, err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("sidecar metrics at %s do not parse: %v", admin, err)
	}
	out := map[string]float64{}
	for _, m := range fams["trellis_app_probes_total"].GetMetric() {
		l := map[string]string{}
		for _, lp := range m.GetLabel() {
			l[lp.GetName()] = lp.GetValue()
		}
		if l["container"] == "bookstore" {
			out[l["probe"]+"/"+l["code"]] = m.GetCounter().GetValue()
		}
	}
	return out
}
