package inject

import (
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func argValue(args []string, flag string) string {
	for i, a := range args {
		if a == flag && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}

// TestMutateCapture injects the capture init container ahead of the sidecar,
// with the sidecar's own ports and the pod's exclusion annotations left alone,
// and the sidecar's capture listeners on.
func TestMutateCapture(t *testing.T) {
	c := cfg
	c.CaptureImage = "localhost/trellis/capture:dev"
	pod := bookstorePod()
	pod.Annotations = map[string]string{
		InboundPortExclusionAnnotation:     "9090",
		OutboundPortExclusionAnnotation:    "3306, 6379",
		OutboundIPRangeExclusionAnnotation: "10.96.0.1/32",
	}
	out, err := Mutate(pod, c)
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Spec.InitContainers) < 2 || out.Spec.InitContainers[0].Name != CaptureContainer || out.Spec.InitContainers[1].Name != ProxyContainer {
		t.Fatalf("init containers %v, want %s then %s first", names(out.Spec.InitContainers), CaptureContainer, ProxyContainer)
	}
	ci := out.Spec.InitContainers[0]
	if ci.RestartPolicy != nil {
		t.Errorf("capture init container has restartPolicy %v: it must run once, to completion", *ci.RestartPolicy)
	}
	for flag, want := range map[string]string{
		"--exclude-inbound-ports":  "15000,15003,9090",
		"--exclude-outbound-ports": "3306,6379",
		"--exclude-outbound-cidrs": "10.96.0.1/32",
		"--proxy-uid":              "1500",
		"--outbound-port":          "15002",
		"--inbound-port":           "15006",
	} {
		if got := argValue(ci.Args, flag); got != want {
			t.Errorf("capture %s = %q, want %q (args %v)", flag, got, want, ci.Args)
		}
	}
	if caps := ci.SecurityContext.Capabilities; caps == nil || !slices.Contains(caps.Add, "NET_ADMIN") || !slices.Contains(caps.Drop, "ALL") {
		t.Errorf("capture capabilities %+v, want NET_ADMIN only", caps)
	}
	sc := out.Spec.InitContainers[1]
	if argValue(sc.Args, "--capture-outbound") != "127.0.0.1:15002" || argValue(sc.Args, "--capture-inbound") != "0.0.0.0:15006" {
		t.Errorf("sidecar args %v lack the capture listeners", sc.Args)
	}
	if u := sc.SecurityContext.RunAsUser; u == nil || *u != ProxyUID {
		t.Errorf("sidecar runs as %v, want %d, the uid capture lets pass", u, ProxyUID)
	}
	// Capture carries the app's traffic: its environment is its own.
	for _, e := range out.Spec.Containers[0].Env {
		if strings.EqualFold(e.Name, "HTTP_PROXY") || strings.EqualFold(e.Name, "NO_PROXY") {
			t.Errorf("captured app got %s=%q; want its environment left alone", e.Name, e.Value)
		}
	}
	// Injecting the injected pod again adds nothing.
	if d := Decide(out, nsWith(map[string]string{InjectKey: "enabled"}, nil)); d.Inject {
		t.Errorf("an injected pod would be injected again: %s", d.Reason)
	}
}

func names(cs []corev1.Container) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Name)
	}
	return out
}

// TestMutateCaptureOptOutAndBadInput: without an image or with the pod's
// opt-out there is no capture; an exclusion that does not parse refuses to
// inject, naming the annotation, so the webhook admits the pod unmeshed.
func TestMutateCaptureOptOutAndBadInput(t *testing.T) {
	out, err := Mutate(bookstorePod(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(names(out.Spec.InitContainers), CaptureContainer) || argValue(out.Spec.InitContainers[0].Args, "--capture-outbound") != "" {
		t.Errorf("no capture image, yet capture was injected: %v", out.Spec.InitContainers[0].Args)
	}
	c := cfg
	c.CaptureImage = "localhost/trellis/capture:dev"
	pod := bookstorePod()
	pod.Annotations = map[string]string{CaptureAnnotation: "disabled"}
	if out, err = Mutate(pod, c); err != nil || slices.Contains(names(out.Spec.InitContainers), CaptureContainer) {
		t.Errorf("capture opted out, yet injected (err %v): %v", err, names(out.Spec.InitContainers))
	}
	// Without capture, HTTP_PROXY is the app's way into the mesh.
	if !slices.ContainsFunc(out.Spec.Containers[0].Env, func(e corev1.EnvVar) bool {
		return e.Name == "HTTP_PROXY" && e.Value == "http://127.0.0.1:15001"
	}) {
		t.Errorf("capture opted out, and the app has no HTTP_PROXY to the sidecar: %v", out.Spec.Containers[0].Env)
	}
	for key, val := range map[string]string{
		InboundPortExclusionAnnotation:     "http",
		OutboundPortExclusionAnnotation:    "70000",
		OutboundIPRangeExclusionAnnotation: "fd00::/129",
		OutboundIPRangeInclusionAnnotation: "10.0.0.0/40",
	} {
		pod := bookstorePod()
		pod.Annotations = map[string]string{key: val}
		if _, err := Mutate(pod, c); err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("%s=%q: err %v, want one naming the annotation", key, val, err)
		}
	}
}

// TestMutatePreStop: each app container keeps serving WithdrawSeconds after
// its pod is deleted, unless it has a preStop of its own, which is kept.
func TestMutatePreStop(t *testing.T) {
	pod := bookstorePod()
	own := &corev1.LifecycleHandler{Exec: &corev1.ExecAction{Command: []string{"/drain"}}}
	pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: "own", Image: "x", Lifecycle: &corev1.Lifecycle{PreStop: own}})
	out, err := Mutate(pod, cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range out.Spec.Containers {
		ps := c.Lifecycle.PreStop
		switch {
		case c.Name == "own" && ps.Exec == nil:
			t.Errorf("container own: its preStop was replaced by %+v", ps)
		case c.Name != "own" && (ps.Sleep == nil || ps.Sleep.Seconds != WithdrawSeconds):
			t.Errorf("container %s: preStop %+v, want a %d s sleep", c.Name, ps, WithdrawSeconds)
		}
	}
}

// TestMutateKeyType passes the configured key type to every sidecar.
func TestMutateKeyType(t *testing.T) {
	c := cfg
	c.KeyType = "rsa-3072"
	out, err := Mutate(bookstorePod(), c)
	if err != nil {
		t.Fatal(err)
	}
	if got := argValue(out.Spec.InitContainers[0].Args, "--key-type"); got != "rsa-3072" {
		t.Errorf("sidecar --key-type = %q, want rsa-3072", got)
	}
}

// TestMutateConcurrency passes the pod's trellis.io/proxy-concurrency to its
// sidecar, leaves the sidecar's default alone without it, and refuses a
// value that is not a number of threads, naming the annotation.
func TestMutateConcurrency(t *testing.T) {
	out, err := Mutate(bookstorePod(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got := argValue(out.Spec.InitContainers[0].Args, "--concurrency"); got != "" {
		t.Errorf("no annotation, yet --concurrency %q", got)
	}
	for val, want := range map[string]string{"4": "4", " 0 ": "0"} {
		pod := bookstorePod()
		pod.Annotations = map[string]string{ConcurrencyAnnotation: val}
		out, err := Mutate(pod, cfg)
		if err != nil {
			t.Fatalf("%s=%q: %v", ConcurrencyAnnotation, val, err)
		}
		if got := argValue(out.Spec.InitContainers[0].Args, "--concurrency"); got != want {
			t.Errorf("%s=%q: --concurrency %q, want %q", ConcurrencyAnnotation, val, got, want)
		}
	}
	for _, val := range []string{"", "two", "-1", "1.5", "257"} {
		pod := bookstorePod()
		pod.Annotations = map[string]string{ConcurrencyAnnotation: val}
		if _, err := Mutate(pod, cfg); err == nil || !strings.Contains(err.Error(), ConcurrencyAnnotation) {
			t.Errorf("%s=%q: err %v, want one naming the annotation", ConcurrencyAnnotation, val, err)
		}
	}
}
