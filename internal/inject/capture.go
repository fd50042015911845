package inject

import (
	"fmt"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/trellis-mesh/trellis/internal/capture"
)

// Transparent capture in a meshed pod (docs/adr/0010): an init container
// with CAP_NET_ADMIN programs the pod's network namespace before the sidecar
// and the app start; the sidecar, running as ProxyUID, is what the rules let
// pass.
const (
	CaptureContainer = "trellis-capture"
	// CaptureOutboundPort and CaptureInboundPort are the sidecar's capture
	// listeners.
	CaptureOutboundPort = capture.DefaultOutboundPort
	CaptureInboundPort  = capture.DefaultInboundPort
	// ProxyUID is the user the sidecar runs as, as OSM's Envoy does.
	ProxyUID = 1500

	// CaptureAnnotation on a pod, set to disabled, injects the sidecar
	// without capture (the app then reaches the mesh through HTTP_PROXY only).
	CaptureAnnotation = "trellis.io/capture"
	// OSM's exclusion annotations, honoured as OSM reads them: comma-separated
	// ports or CIDRs.
	InboundPortExclusionAnnotation     = "openservicemesh.io/inbound-port-exclusion-list"
	OutboundPortExclusionAnnotation    = "openservicemesh.io/outbound-port-exclusion-list"
	OutboundIPRangeExclusionAnnotation = "openservicemesh.io/outbound-ip-range-exclusion-list"
	OutboundIPRangeInclusionAnnotation = "openservicemesh.io/outbound-ip-range-inclusion-list"
)

// captureWanted says whether the pod is captured, given an image to do it with.
func captureWanted(pod *corev1.Pod, cfg Config) bool {
	if cfg.CaptureImage == "" {
		return false
	}
	v := strings.ToLower(pod.Annotations[CaptureAnnotation])
	return v != "disabled" && v != "false"
}

// captureContainer is the init container that programs capture, from the
// pod's exclusion annotations. A value that does not parse is an error that
// names the annotation, so the pod is admitted unmeshed with a warning rather
// than half-captured.
func captureContainer(pod *corev1.Pod, cfg Config) (corev1.Container, error) {
	args := []string{
		"--outbound-port", strconv.Itoa(CaptureOutboundPort),
		"--inbound-port", strconv.Itoa(CaptureInboundPort),
		"--proxy-uid", strconv.Itoa(ProxyUID),
	}
	inPorts := []int{AdminPort, InboundPort}
	for _, a := range []struct {
		key, flag string
		cidr      bool
	}{
		{InboundPortExclusionAnnotation, "--exclude-inbound-ports", false},
		{OutboundPortExclusionAnnotation, "--exclude-outbound-ports", false},
		{OutboundIPRangeExclusionAnnotation, "--exclude-outbound-cidrs", true},
		{OutboundIPRangeInclusionAnnotation, "--include-outbound-cidrs", true},
	} {
		v := pod.Annotations[a.key]
		if a.key == InboundPortExclusionAnnotation {
			ports, err := capture.ParsePorts(v)
			if err != nil {
				return corev1.Container{}, fmt.Errorf("annotation %s: %w; want ports such as \"8080,9090\"", a.key, err)
			}
			inPorts = append(inPorts, ports...)
			continue
		}
		if v == "" {
			continue
		}
		var err error
		if a.cidr {
			_, err = capture.ParseCIDRs(v)
		} else {
			_, err = capture.ParsePorts(v)
		}
		if err != nil {
			want := `ports such as "3306,6379"`
			if a.cidr {
				want = `CIDRs such as "10.0.0.0/8,192.168.1.7/32,fd00::/8"`
			}
			return corev1.Container{}, fmt.Errorf("annotation %s: %w; want %s", a.key, err, want)
		}
		args = append(args, a.flag, strings.ReplaceAll(v, " ", ""))
	}
	ps := make([]string, len(inPorts))
	for i, p := range inPorts {
		ps[i] = strconv.Itoa(p)
	}
	args = append(args, "--exclude-inbound-ports", strings.Join(ps, ","))
	return corev1.Container{
		Name:            CaptureContainer,
		Image:           cfg.CaptureImage,
		ImagePullPolicy: cfg.PullPolicy,
		Args:            args,
		SecurityContext: &corev1.SecurityContext{
			RunAsUser:                ptr(int64(0)),
			RunAsNonRoot:             ptr(false),
			AllowPrivilegeEscalation: ptr(false),
			ReadOnlyRootFilesystem:   ptr(true),
			Capabilities: &corev1.Capabilities{
				Drop: []corev1.Capability{"ALL"},
				Add:  []corev1.Capability{"NET_ADMIN"},
			},
		},
	}, nil
}
