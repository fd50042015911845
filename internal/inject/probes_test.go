package inject

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	"github.com/trellis-mesh/trellis/internal/probe"
)

// probesPod has every kind of probe: those injection moves to the sidecar
// (HTTP by number and by name, HTTPS, TCP socket) and those it leaves alone
// (exec, gRPC, HTTP to another host, a named port the container lacks).
func probesPod() *corev1.Pod {
	httpGet := func(path string, port intstr.IntOrString) corev1.ProbeHandler {
		return corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: path, Port: port}}
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "ledger", Namespace: "bookstore"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{
			{
				Name: "ledger", Image: "localhost/trellis/ledger:dev",
				Ports:          []corev1.ContainerPort{{Name: "api", ContainerPort: 8443}, {Name: "db", ContainerPort: 7000}},
				LivenessProbe:  &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromString("db")}}, PeriodSeconds: 10},
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/ready?verbose=1", Port: intstr.FromString("api"), Scheme: corev1.URISchemeHTTPS}}, TimeoutSeconds: 3, SuccessThreshold: 1, FailureThreshold: 4},
				StartupProbe:   &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"/ledger", "check"}}}},
			},
			{
				Name: "exporter", Image: "localhost/trellis/exporter:dev",
				LivenessProbe:  &corev1.Probe{ProbeHandler: corev1.ProbeHandler{GRPC: &corev1.GRPCAction{Port: 9090}}},
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/up", Port: intstr.FromInt32(9100), Host: "10.0.0.9"}}},
				StartupProbe:   &corev1.Probe{ProbeHandler: httpGet("/started", intstr.FromString("metrics"))},
			},
			{
				Name: "sidecar-cache", Image: "localhost/trellis/cache:dev",
				StartupProbe: &corev1.Probe{ProbeHandler: httpGet("", intstr.FromInt32(6379))},
			},
		}},
	}
}

// TestMutateProbesGolden shows the rewritten probes, the table the sidecar
// gets and the annotation that records the originals.
func TestMutateProbesGolden(t *testing.T) {
	got, err := Mutate(probesPod(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	sidecar := got.Spec.InitContainers[0]
	i := slices.Index(sidecar.Args, "--app-probes")
	if i < 0 || i+1 >= len(sidecar.Args) {
		t.Fatalf("sidecar args %q: no --app-probes", sidecar.Args)
	}
	table, err := probe.Parse(sidecar.Args[i+1])
	if err != nil {
		t.Fatalf("the sidecar could not read its --app-probes: %v", err)
	}
	var originals any
	if err := json.Unmarshal([]byte(got.Annotations[OriginalProbesAnnotation]), &originals); err != nil {
		t.Fatalf("annotation %s: %v", OriginalProbesAnnotation, err)
	}
	b, err := yaml.Marshal(map[string]any{"containers": got.Spec.Containers, "appProbes": table, "originalProbes": originals})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join("testdata", "probes.injected.yaml")
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
		t.Errorf("rewritten probes (-want +got):\n%s", diff)
	}
}

// The annotation holds what it takes to put the pod's probes back as they
// were: restoring each recorded handler gives the original containers.
func TestOriginalProbesRestore(t *testing.T) {
	for _, pod := range []*corev1.Pod{bookstorePod(), probesPod()} {
		got, err := Mutate(pod, cfg)
		if err != nil {
			t.Fatal(err)
		}
		var originals map[string]map[string]corev1.ProbeHandler
		if err := json.Unmarshal([]byte(got.Annotations[OriginalProbesAnnotation]), &originals); err != nil {
			t.Fatal(err)
		}
		restored := got.DeepCopy().Spec.Containers
		for i := range restored {
			c := &restored[i]
			for field, p := range map[string]*corev1.Probe{"livenessProbe": c.LivenessProbe, "readinessProbe": c.ReadinessProbe, "startupProbe": c.StartupProbe} {
				if h, ok := originals[c.Name][field]; ok {
					p.ProbeHandler = h
				}
			}
		}
		// Injection also adds the proxy environment and the withdrawal
		// preStop; only the probes are compared.
		for i := range restored {
			restored[i].Env = pod.Spec.Containers[i].Env
			restored[i].Lifecycle = pod.Spec.Containers[i].Lifecycle
		}
		if diff := cmp.Diff(pod.Spec.Containers, restored); diff != "" {
			t.Errorf("pod %s: containers with the recorded probes put back (-original +restored):\n%s", pod.Name+pod.GenerateName, diff)
		}
	}
}

// A pod without probes to move gets neither the flag nor the annotation.
func TestMutateNoProbes(t *testing.T) {
	pod := bookstorePod()
	c := &pod.Spec.Containers[0]
	c.LivenessProbe, c.ReadinessProbe, c.StartupProbe = nil, nil, &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"true"}}}}
	got, err := Mutate(pod, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(got.Spec.InitContainers[0].Args, "--app-probes") {
		t.Errorf("sidecar args %q carry --app-probes for a pod with no HTTP or TCP probe", got.Spec.InitContainers[0].Args)
	}
	if v, ok := got.Annotations[OriginalProbesAnnotation]; ok {
		t.Errorf("annotation %s = %q on a pod whose probes were not moved", OriginalProbesAnnotation, v)
	}
	if diff := cmp.Diff(pod.Spec.Containers[0].StartupProbe, got.Spec.Containers[0].StartupProbe); diff != "" {
		t.Errorf("exec probe changed (-want +got):\n%s", diff)
	}
}

// The kubelet expands $(VAR) in a container's args: a probe path that holds
// one reaches the sidecar as written.
func TestMutateProbePathKeepsDollar(t *testing.T) {
	pod := bookstorePod()
	pod.Spec.Containers[0].ReadinessProbe.HTTPGet.Path = "/readiness/$(POD_NAME)"
	got, err := Mutate(pod, cfg)
	if err != nil {
		t.Fatal(err)
	}
	args := got.Spec.InitContainers[0].Args
	i := slices.Index(args, "--app-probes")
	if i < 0 || !strings.Contains(args[i+1], `"/readiness/$$(POD_NAME)"`) {
		t.Errorf("--app-probes %q; want the path with $( escaped as $$(", args[i+1:])
	}
}
