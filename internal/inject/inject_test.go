package inject

import (
	"bytes"
	"encoding/json"
	"flag"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite the golden files")

var cfg = Config{ProxyImage: "localhost/trellis/proxy:dev", ControlPlane: "10.96.0.20:15128"}

// bookstorePod is bookstore v1's pod as the OSM demo deploys it.
func bookstorePod() *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "bookstore-v1-", Namespace: "bookstore", Labels: map[string]string{"app": "bookstore", "version": "v1"}},
		Spec: corev1.PodSpec{
			ServiceAccountName: "bookstore",
			Containers: []corev1.Container{{
				Name: "bookstore", Image: "localhost/trellis/bookstore:dev",
				Ports: []corev1.ContainerPort{{Name: "web", ContainerPort: 14001}},
				Env:   []corev1.EnvVar{{Name: "IDENTITY", Value: "bookstore-v1"}},
				// The demo's probes, which injection moves to the sidecar.
				LivenessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/liveness", Port: intstr.FromInt32(14001)}},
					InitialDelaySeconds: 3, PeriodSeconds: 3},
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/readiness", Port: intstr.FromString("web"), Scheme: corev1.URISchemeHTTP,
					HTTPHeaders: []corev1.HTTPHeader{{Name: "Client-App", Value: "kubelet"}}}}, InitialDelaySeconds: 3, PeriodSeconds: 5, TimeoutSeconds: 2},
				StartupProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/startup", Port: intstr.FromInt32(14001)}},
					FailureThreshold: 30, PeriodSeconds: 5},
			}},
		},
	}
}

func nsWith(labels, annotations map[string]string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "bookstore", Labels: labels, Annotations: annotations}}
}

func TestDecide(t *testing.T) {
	withAnn := func(k, v string) *corev1.Pod {
		p := bookstorePod()
		p.Annotations = map[string]string{k: v}
		return p
	}
	injected, _ := Mutate(bookstorePod(), cfg)
	host := bookstorePod()
	host.Spec.HostNetwork = true
	trellisNS := nsWith(map[string]string{InjectKey: "enabled"}, nil)
	osmNS := nsWith(map[string]string{OSMMonitoredBy: "osm"}, map[string]string{OSMSidecarInjectKey: "enabled"})
	osmNoInject := nsWith(map[string]string{OSMMonitoredBy: "osm"}, nil)
	tests := []struct {
		name string
		pod  *corev1.Pod
		ns   *corev1.Namespace
		want bool
	}{
		{"trellis namespace", bookstorePod(), trellisNS, true},
		{"OSM namespace add", bookstorePod(), osmNS, true},
		{"OSM monitored, injection off", bookstorePod(), osmNoInject, false},
		{"OSM monitored, pod opts in", withAnn(OSMSidecarInjectKey, "enabled"), osmNoInject, true},
		{"namespace not in the mesh", bookstorePod(), nsWith(nil, nil), false},
		{"pod opts out (trellis)", withAnn(InjectKey, "disabled"), trellisNS, false},
		{"pod opts out (OSM)", withAnn(OSMSidecarInjectKey, "disabled"), osmNS, false},
		{"already injected", injected, trellisNS, false},
		{"host network", host, trellisNS, false},
		{"namespace unknown", bookstorePod(), nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := Decide(tt.pod, tt.ns)
			if d.Inject != tt.want || d.Reason == "" {
				t.Errorf("Decide = %+v, want inject %v with a reason", d, tt.want)
			}
		})
	}
}

func TestMutateGolden(t *testing.T) {
	pod := bookstorePod()
	before := pod.DeepCopy()
	got, err := Mutate(pod, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(before, pod); diff != "" {
		t.Errorf("Mutate changed its input (-before +after):\n%s", diff)
	}
	b, err := yaml.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join("testdata", "bookstore-v1.injected.yaml")
	if *update {
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (go test ./internal/inject -update)", err)
	}
	if diff := cmp.Diff(string(want), string(b)); diff != "" {
		t.Errorf("injected pod (-want +got):\n%s", diff)
	}
}

// The user's own proxy settings win over the ones injection adds.
func TestMutateKeepsUserEnv(t *testing.T) {
	pod := bookstorePod()
	pod.Spec.Containers[0].Env = append(pod.Spec.Containers[0].Env, corev1.EnvVar{Name: "NO_PROXY", Value: "internal.example"})
	got, err := Mutate(pod, cfg)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range got.Spec.Containers[0].Env {
		if e.Name == "NO_PROXY" {
			n++
			if e.Value != "internal.example" {
				t.Errorf("NO_PROXY = %q, want the user's", e.Value)
			}
		}
	}
	if n != 1 {
		t.Errorf("%d NO_PROXY entries, want 1", n)
	}
}

func TestMutateNeedsConfig(t *testing.T) {
	if _, err := Mutate(bookstorePod(), Config{}); err == nil || !strings.Contains(err.Error(), "not configured") {
		t.Errorf("Mutate without config = %v, want an error", err)
	}
}

// review sends an AdmissionReview for pod to the webhook over real HTTP.
func review(t *testing.T, wh *Webhook, pod *corev1.Pod) *admissionv1.AdmissionResponse {
	t.Helper()
	raw, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	in := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{UID: "uid-1", Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
			Namespace: "bookstore", Operation: admissionv1.Create, Object: runtime.RawExtension{Raw: raw}},
	}
	body, _ := json.Marshal(in)
	srv := httptest.NewServer(wh)
	defer srv.Close()
	resp, err := http.Post(srv.URL, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out admissionv1.AdmissionReview
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	if out.Response == nil || out.Response.UID != "uid-1" || !out.Response.Allowed {
		t.Fatalf("response = %+v, want allowed with the request's UID", out.Response)
	}
	return out.Response
}

func TestWebhookPatchApplies(t *testing.T) {
	wh := &Webhook{Config: cfg, Namespaces: func(string) (*corev1.Namespace, error) {
		return nsWith(map[string]string{InjectKey: "enabled"}, nil), nil
	}}
	pod := bookstorePod()
	got := patched(t, pod, review(t, wh, pod))
	want, _ := Mutate(pod, cfg)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("patched pod differs from Mutate's (-want +got):\n%s", diff)
	}
}

// patched applies the webhook's JSON patch to pod as the API server would
// (add/replace of whole members).
func patched(t *testing.T, pod *corev1.Pod, resp *admissionv1.AdmissionResponse) *corev1.Pod {
	t.Helper()
	if resp.PatchType == nil || *resp.PatchType != admissionv1.PatchTypeJSONPatch {
		t.Fatalf("no JSON patch: %+v", resp)
	}
	var ops []struct {
		Op, Path string
		Value    json.RawMessage
	}
	if err := json.Unmarshal(resp.Patch, &ops); err != nil {
		t.Fatal(err)
	}
	doc := map[string]any{}
	raw, _ := json.Marshal(pod)
	json.Unmarshal(raw, &doc)
	for _, op := range ops {
		parts := strings.Split(strings.TrimPrefix(op.Path, "/"), "/")
		m := doc
		for _, p := range parts[:len(parts)-1] {
			next, ok := m[p].(map[string]any)
			if !ok {
				next = map[string]any{}
				m[p] = next
			}
			m = next
		}
		var v any
		json.Unmarshal(op.Value, &v)
		m[parts[len(parts)-1]] = v
	}
	b, _ := json.Marshal(doc)
	var got corev1.Pod
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	return &got
}

// TestWebhookSidecarResources: the mesh's sidecar resources (the
// MeshConfig's spec.sidecar.resources, read at each review) reach every pod
// injected after they are set, and their CPU limit, rounded up, is the
// sidecar's --concurrency; a pod's own trellis.io/proxy-concurrency wins.
func TestWebhookSidecarResources(t *testing.T) {
	resources := ""
	wh := &Webhook{Config: cfg, SidecarResources: func() string { return resources }, Namespaces: func(string) (*corev1.Namespace, error) {
		return nsWith(map[string]string{InjectKey: "enabled"}, nil), nil
	}}
	sidecar := func(p *corev1.Pod) corev1.Container {
		for _, c := range p.Spec.InitContainers {
			if c.Name == ProxyContainer {
				return c
			}
		}
		t.Fatalf("no %s container in %v", ProxyContainer, names(p.Spec.InitContainers))
		return corev1.Container{}
	}
	pod := bookstorePod()
	if c := sidecar(patched(t, pod, review(t, wh, pod))); len(c.Resources.Limits)+len(c.Resources.Requests) > 0 || argValue(c.Args, "--concurrency") != "" {
		t.Errorf("no resources in the mesh, yet resources %+v and --concurrency %q", c.Resources, argValue(c.Args, "--concurrency"))
	}

	resources = `{"limits":{"cpu":"2500m","memory":"128Mi"},"requests":{"cpu":"100m"}}`
	c := sidecar(patched(t, pod, review(t, wh, pod)))
	if got := c.Resources.Limits[corev1.ResourceCPU]; got.String() != "2500m" || c.Resources.Requests.Cpu().String() != "100m" || c.Resources.Limits.Memory().String() != "128Mi" {
		t.Errorf("sidecar resources %+v, want the mesh's", c.Resources)
	}
	if got := argValue(c.Args, "--concurrency"); got != "3" {
		t.Errorf("with a 2500m CPU limit, --concurrency %q, want 3", got)
	}
	own := bookstorePod()
	own.Annotations = map[string]string{ConcurrencyAnnotation: "1"}
	if got := argValue(sidecar(patched(t, own, review(t, wh, own))).Args, "--concurrency"); got != "1" {
		t.Errorf("with the pod's own annotation 1, --concurrency %q, want 1", got)
	}
	for limit, want := range map[string]int{"100m": 1, "1": 1, "1001m": 2, "64": 64, "1000": maxConcurrency} {
		r := corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(limit)}}
		if got := concurrencyFor(r); got != want {
			t.Errorf("concurrencyFor(cpu limit %s) = %d, want %d", limit, got, want)
		}
	}
}

// When the namespace cannot be read the pod is admitted unmeshed, with a
// warning, never refused.
func TestWebhookFailsOpen(t *testing.T) {
	wh := &Webhook{Config: cfg, Namespaces: func(string) (*corev1.Namespace, error) {
		return nil, os.ErrNotExist
	}}
	resp := review(t, wh, bookstorePod())
	if resp.Patch != nil || len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], "without the sidecar") {
		t.Errorf("response = %+v, want allowed, no patch, one warning", resp)
	}
}

func TestWebhookBadBody(t *testing.T) {
	srv := httptest.NewServer(&Webhook{Config: cfg})
	defer srv.Close()
	resp, err := http.Post(srv.URL, "application/json", strings.NewReader("{not json"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("status = %d, want 400", resp.StatusCode)
	}
}
