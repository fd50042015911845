// Package inject is Trellis's mutating admission webhook: it adds the sidecar to
// the pods of meshed namespaces as a native sidecar (an init container with
// restartPolicy Always, so that it is ready before the app starts and outlives
// it at shutdown), with the pod's projected service-account token (audience
// trellis) as its credential and the mesh's CA bundle, and points the app
// containers' HTTP clients at it. The decision and the patch are pure functions
// of the pod, its namespace and the Config; the patch is all or nothing, so a
// pod is never left half-injected. ServeReview is the AdmissionReview plumbing
// every Trellis webhook shares. The control plane serves them; the proxy never
// imports this package.
package inject

import (
	"github.com/trellis-mesh/trellis/internal/proxy/procenv"

	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Labels and annotations that opt namespaces and pods in and out, Trellis's
// own and OSM's for migrating users (OSM-COMPAT 3.4).
const (
	InjectKey           = "trellis.io/inject"                    // namespace label or pod annotation: enabled | disabled
	OSMMonitoredBy      = "openservicemesh.io/monitored-by"      // namespace label
	OSMSidecarInjectKey = "openservicemesh.io/sidecar-injection" // namespace or pod annotation: enabled | disabled
	InjectedAnnotation  = "trellis.io/injected"                  // set on injected pods
	// OriginalProbesAnnotation records, on an injected pod, the app
	// containers' probes as they were before injection moved them to the
	// sidecar: container name → probe field → its original handler.
	OriginalProbesAnnotation = "trellis.io/original-probes"
	// ConcurrencyAnnotation on a pod sets how many threads run its
	// sidecar's Go code at once (trellis-proxy --concurrency, default
	// procenv.DefaultConcurrency; 0: the Go runtime's choice), for a pod
	// whose sidecar carries more than one core's worth of traffic.
	ConcurrencyAnnotation = "trellis.io/proxy-concurrency"
)

// MetricsAnnotation on a namespace (OSM's, set by trellis metrics enable)
// makes its meshed pods carry the prometheus.io scrape annotations.
const MetricsAnnotation = "openservicemesh.io/metrics"

// ScrapeAnnotations are the prometheus.io annotations that point a Prometheus
// at a sidecar's metrics.
func ScrapeAnnotations() map[string]string {
	return map[string]string{"prometheus.io/scrape": "true", "prometheus.io/port": strconv.Itoa(AdminPort), "prometheus.io/path": "/metrics"}
}

// Names and paths of what the webhook adds.
const (
	ProxyContainer = "trellis-proxy"
	tokenVolume    = "trellis-token"
	caVolume       = "trellis-ca"
	tokenDir       = "/var/run/trellis/token"
	caDir          = "/var/run/trellis/ca"
	// CABundleConfigMap holds ca.pem, the roots that verify the control plane,
	// in every meshed namespace.
	CABundleConfigMap = "trellis-ca-bundle"
	TokenAudience     = "trellis"
)

// WithdrawSeconds is how long an app keeps serving after its pod is deleted,
// while callers learn that its endpoint is gone (the injected preStop sleep).
const WithdrawSeconds = 2

// maxConcurrency bounds ConcurrencyAnnotation: more threads than a node has
// cores only adds hand-offs between them.
const maxConcurrency = 256

// Sidecar ports in the pod.
const (
	AdminPort    = 15000
	OutboundPort = 15001
	InboundPort  = 15003
)

// Config is what every injected sidecar gets.
type Config struct {
	// ProxyImage is the sidecar's image; required.
	ProxyImage string
	// ControlPlane is the control plane's gRPC address, host:port; required.
	ControlPlane string
	// PullPolicy of the sidecar image; default IfNotPresent.
	PullPolicy corev1.PullPolicy
	// TokenSeconds is the projected token's lifetime; default 3600.
	TokenSeconds int64
	// CaptureImage holds trellis-capture, for the init container that
	// programs transparent capture; empty: no capture, and the app reaches
	// the mesh through the HTTP_PROXY injection sets.
	CaptureImage string
	// KeyType of the key each sidecar makes for its certificate (ecdsa-p256,
	// ecdsa-p384, rsa-2048, rsa-3072); empty: the sidecar's default, P-256.
	KeyType string
	// Resources of the sidecar container (the MeshConfig's
	// spec.sidecar.resources, as OSM gives its Envoy); none by default. A CPU
	// limit also sets the sidecar's --concurrency, unless the pod's
	// ConcurrencyAnnotation does (concurrencyFor).
	Resources corev1.ResourceRequirements
}

// concurrencyFor is the number of threads a sidecar with this CPU limit runs
// its Go code on: the limit rounded up (a 2500m limit gives 3), as the Go
// runtime and Envoy-based meshes round it; 0 without a limit, which leaves
// the sidecar's own default.
func concurrencyFor(r corev1.ResourceRequirements) int {
	cpu, ok := r.Limits[corev1.ResourceCPU]
	if !ok || cpu.IsZero() {
		return 0
	}
	return int(min(max((cpu.MilliValue()+999)/1000, 1), maxConcurrency))
}

// Decision says whether a pod is injected and why.
type Decision struct {
	Inject bool
	Reason string
}

// Decide applies the opt-in and opt-out rules: the namespace opts in with
// trellis.io/inject=enabled, or with OSM's monitored-by label and
// sidecar-injection=enabled annotation; a pod opts out with either annotation
// set to disabled; a pod already injected, or on the host network, is left as
// it is.
func Decide(pod *corev1.Pod, ns *corev1.Namespace) Decision {
	for _, c := range append(append([]corev1.Container(nil), pod.Spec.InitContainers...), pod.Spec.Containers...) {
		if c.Name == ProxyContainer || c.Name == CaptureContainer {
			return Decision{false, "already injected"}
		}
	}
	if pod.Spec.HostNetwork {
		return Decision{false, "the pod uses the host's network"}
	}
	for _, k := range []string{InjectKey, OSMSidecarInjectKey} {
		if strings.EqualFold(pod.Annotations[k], "disabled") || strings.EqualFold(pod.Annotations[k], "false") {
			return Decision{false, "the pod opts out (" + k + "=" + pod.Annotations[k] + ")"}
		}
	}
	switch {
	case ns == nil:
		return Decision{false, "namespace unknown"}
	case ns.Labels[InjectKey] == "enabled":
		return Decision{true, "namespace " + ns.Name + " has " + InjectKey + "=enabled"}
	case ns.Labels[OSMMonitoredBy] != "" && strings.EqualFold(ns.Annotations[OSMSidecarInjectKey], "enabled"):
		return Decision{true, "namespace " + ns.Name + " is monitored by mesh " + ns.Labels[OSMMonitoredBy] + " with sidecar injection enabled"}
	case ns.Labels[OSMMonitoredBy] != "" && strings.EqualFold(pod.Annotations[OSMSidecarInjectKey], "enabled"):
		return Decision{true, "the pod opts in (" + OSMSidecarInjectKey + "=enabled) in monitored namespace " + ns.Name}
	}
	return Decision{false, "namespace " + ns.Name + " is not in the mesh"}
}

// Mutate returns the injected pod: the capture init container (with a
// capture image) and the sidecar first among the init containers, and its
// volumes. Without capture (no capture image, or the pod's opt-out) the app
// containers get HTTP_PROXY, their one way into the mesh; with capture their
// environment is left alone. It does not change pod.
func Mutate(pod *corev1.Pod, cfg Config) (*corev1.Pod, error) {
	if cfg.ProxyImage == "" || cfg.ControlPlane == "" {
		return nil, fmt.Errorf("injection is not configured: a proxy image and the control plane's address are required")
	}
	if cfg.PullPolicy == "" {
		cfg.PullPolicy = corev1.PullIfNotPresent
	}
	if cfg.TokenSeconds == 0 {
		cfg.TokenSeconds = 3600
	}
	out := pod.DeepCopy()
	always := corev1.ContainerRestartPolicyAlways
	args := []string{
		"--control-plane", cfg.ControlPlane,
		"--ca-file", caDir + "/ca.pem",
		"--token-file", tokenDir + "/token",
		"--workload-id", "$(POD_NAMESPACE)/$(POD_NAME)",
		"--inbound", "0.0.0.0:" + strconv.Itoa(InboundPort),
		"--outbound", "127.0.0.1:" + strconv.Itoa(OutboundPort),
		"--admin", "0.0.0.0:" + strconv.Itoa(AdminPort),
	}
	if p, ok := appPort(pod); ok {
		args = append(args, "--app", "127.0.0.1:"+strconv.Itoa(int(p)))
	}
	if cfg.KeyType != "" {
		args = append(args, "--key-type", cfg.KeyType)
	}
	if v, ok := pod.Annotations[ConcurrencyAnnotation]; ok {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < 0 || n > maxConcurrency {
			return nil, fmt.Errorf("annotation %s: %q is not a number of threads; want 0 to %d, such as \"2\"", ConcurrencyAnnotation, v, maxConcurrency)
		}
		args = append(args, "--concurrency", strconv.Itoa(n))
	} else if n := concurrencyFor(cfg.Resources); n > 0 {
		args = append(args, "--concurrency", strconv.Itoa(n))
	}
	captured := captureWanted(pod, cfg)
	var capInit corev1.Container
	if captured {
		var err error
		if capInit, err = captureContainer(pod, cfg); err != nil {
			return nil, err
		}
		args = append(args,
			"--capture-outbound", "127.0.0.1:"+strconv.Itoa(CaptureOutboundPort),
			"--capture-inbound", "0.0.0.0:"+strconv.Itoa(CaptureInboundPort))
	}
	probes, originals := rewriteProbes(out.Spec.Containers)
	if len(probes) > 0 {
		// The kubelet expands $(VAR) in args; $$( keeps a path's own literal.
		args = append(args, "--app-probes", strings.ReplaceAll(probes.String(), "$(", "$$("))
	}
	ready := &corev1.Probe{
		ProbeHandler:     corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intstr.FromInt32(AdminPort)}},
		PeriodSeconds:    1,
		FailureThreshold: 60,
	}
	sidecar := corev1.Container{
		Name:            ProxyContainer,
		Image:           cfg.ProxyImage,
		ImagePullPolicy: cfg.PullPolicy,
		Args:            args,
		RestartPolicy:   &always,
		Env: []corev1.EnvVar{
			{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
			{Name: "POD_NAMESPACE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
			// Keeps the runtime's monitor thread awake (package procenv).
			{Name: "GODEBUG", Value: procenv.Setting},
		},
		Resources: *cfg.Resources.DeepCopy(),
		Ports: []corev1.ContainerPort{
			{Name: "trellis-inbound", ContainerPort: InboundPort},
			{Name: "trellis-admin", ContainerPort: AdminPort},
		},
		// The app starts only once the sidecar is ready (native sidecar
		// start-up order): a startup probe gates it.
		StartupProbe:   ready,
		ReadinessProbe: &corev1.Probe{ProbeHandler: ready.ProbeHandler, PeriodSeconds: 5},
		VolumeMounts: []corev1.VolumeMount{
			{Name: tokenVolume, MountPath: tokenDir, ReadOnly: true},
			{Name: caVolume, MountPath: caDir, ReadOnly: true},
		},
		SecurityContext: &corev1.SecurityContext{
			RunAsNonRoot:             ptr(true),
			RunAsUser:                ptr(int64(ProxyUID)),
			AllowPrivilegeEscalation: ptr(false),
			ReadOnlyRootFilesystem:   ptr(true),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		},
	}
	first := []corev1.Container{sidecar}
	if captured {
		// Capture is programmed before the sidecar starts, so nothing the
		// pod sends slips past it.
		first = []corev1.Container{capInit, sidecar}
	}
	out.Spec.InitContainers = append(first, out.Spec.InitContainers...)
	exp := cfg.TokenSeconds
	out.Spec.Volumes = append(out.Spec.Volumes,
		corev1.Volume{Name: tokenVolume, VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
			Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Audience: TokenAudience, ExpirationSeconds: &exp, Path: "token"}}},
		}}},
		corev1.Volume{Name: caVolume, VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: CABundleConfigMap},
		}}},
	)
	proxyURL := "http://127.0.0.1:" + strconv.Itoa(OutboundPort)
	for i := range out.Spec.Containers {
		c := &out.Spec.Containers[i]
		// Withdraw first, stop after: a deleted pod leaves the mesh's
		// endpoints at once, and its app keeps serving WithdrawSeconds
		// longer, while callers' sidecars learn of it, before the kubelet
		// sends it SIGTERM. A preStop of the user's own is left as it is.
		if c.Lifecycle == nil || c.Lifecycle.PreStop == nil {
			if c.Lifecycle == nil {
				c.Lifecycle = &corev1.Lifecycle{}
			}
			c.Lifecycle.PreStop = &corev1.LifecycleHandler{Sleep: &corev1.SleepAction{Seconds: WithdrawSeconds}}
		}
		if captured {
			// Capture carries the app's connections to the sidecar: its
			// environment stays as the user wrote it.
			continue
		}
		c.Env = setEnvDefault(c.Env, "HTTP_PROXY", proxyURL)
		c.Env = setEnvDefault(c.Env, "http_proxy", proxyURL)
		c.Env = setEnvDefault(c.Env, "NO_PROXY", "localhost,127.0.0.1,::1")
		c.Env = setEnvDefault(c.Env, "no_proxy", "localhost,127.0.0.1,::1")
	}
	if out.Annotations == nil {
		out.Annotations = map[string]string{}
	}
	out.Annotations[InjectedAnnotation] = "true"
	if len(originals) > 0 {
		b, err := json.Marshal(originals)
		if err != nil {
			return nil, fmt.Errorf("recording the original probes: %w", err)
		}
		out.Annotations[OriginalProbesAnnotation] = string(b)
	}
	return out, nil
}

// appPort is the port the sidecar forwards inbound requests to: the first TCP
// port the app containers declare.
func appPort(pod *corev1.Pod) (int32, bool) {
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			if p.Protocol == "" || p.Protocol == corev1.ProtocolTCP {
				return p.ContainerPort, true
			}
		}
	}
	return 0, false
}

func setEnvDefault(env []corev1.EnvVar, name, value string) []corev1.EnvVar {
	for _, e := range env {
		if e.Name == name {
			return env // the user's own setting wins
		}
	}
	return append(env, corev1.EnvVar{Name: name, Value: value})
}

func ptr[T any](v T) *T { return &v }

// patchOp is one JSON Patch (RFC 6902) operation.
type patchOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value,omitempty"`
}

// Patch is the JSON Patch that turns pod into injected.
func Patch(pod, injected *corev1.Pod) ([]byte, error) {
	ops := []patchOp{
		{Op: "add", Path: "/spec/initContainers", Value: injected.Spec.InitContainers},
		{Op: "replace", Path: "/spec/containers", Value: injected.Spec.Containers},
		{Op: "add", Path: "/spec/volumes", Value: injected.Spec.Volumes},
		{Op: "add", Path: "/metadata/annotations", Value: injected.Annotations},
	}
	return json.Marshal(ops)
}
