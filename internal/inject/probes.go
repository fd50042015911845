package inject

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/trellis-mesh/trellis/internal/probe"
)

// rewriteProbes moves the HTTP and TCP-socket probes of the containers cs to
// the sidecar's admin port, which is plaintext and reachable from the kubelet
// whatever the mesh's mTLS mode: each becomes an HTTP GET of
// /app-health/<container>/<livez|readyz|startupz> on the admin port, with the
// probe's own headers, timeouts and thresholds, and the sidecar sends it on to
// the app on 127.0.0.1 at the original port, path and scheme (for a TCP
// probe, it opens a connection). It changes cs in place and returns the table
// the sidecar serves and the original handlers, container → probe field →
// handler, for the pod's annotation. Probes it leaves alone: exec and gRPC
// ones, those with a host of their own (they do not probe this pod) and those
// whose named port no container port of the container resolves.
func rewriteProbes(cs []corev1.Container) (probe.Table, map[string]map[string]corev1.ProbeHandler) {
	table := probe.Table{}
	originals := map[string]map[string]corev1.ProbeHandler{}
	for i := range cs {
		c := &cs[i]
		for _, pr := range []struct {
			field string
			kind  probe.Kind
			p     *corev1.Probe
		}{
			{"livenessProbe", probe.Liveness, c.LivenessProbe},
			{"readinessProbe", probe.Readiness, c.ReadinessProbe},
			{"startupProbe", probe.Startup, c.StartupProbe},
		} {
			if pr.p == nil {
				continue
			}
			target, headers, ok := probeTarget(c, pr.p)
			if !ok {
				continue
			}
			path := probe.Path(c.Name, pr.kind)
			table[path] = target
			if originals[c.Name] == nil {
				originals[c.Name] = map[string]corev1.ProbeHandler{}
			}
			originals[c.Name][pr.field] = *pr.p.ProbeHandler.DeepCopy()
			pr.p.ProbeHandler = corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
				Path: path, Port: intstr.FromInt32(AdminPort), Scheme: corev1.URISchemeHTTP, HTTPHeaders: headers,
			}}
		}
	}
	return table, originals
}

// probeTarget says where the sidecar sends probe p of container c, and which
// headers the rewritten probe keeps; ok is false for a probe left as it is.
func probeTarget(c *corev1.Container, p *corev1.Probe) (t probe.Target, headers []corev1.HTTPHeader, ok bool) {
	t.TimeoutSeconds = p.TimeoutSeconds
	if t.TimeoutSeconds == 0 {
		t.TimeoutSeconds = 1 // the kubelet's default
	}
	switch {
	case p.HTTPGet != nil:
		h := p.HTTPGet
		if h.Host != "" {
			return t, nil, false
		}
		t.Scheme, t.Path = probe.SchemeHTTP, h.Path
		if h.Scheme == corev1.URISchemeHTTPS {
			t.Scheme = probe.SchemeHTTPS
		}
		t.Port, ok = resolvePort(c, h.Port)
		return t, append([]corev1.HTTPHeader(nil), h.HTTPHeaders...), ok
	case p.TCPSocket != nil:
		if p.TCPSocket.Host != "" {
			return t, nil, false
		}
		t.Scheme = probe.SchemeTCP
		t.Port, ok = resolvePort(c, p.TCPSocket.Port)
		return t, nil, ok
	}
	return t, nil, false
}

// resolvePort is a probe's port as a number: as given, or the container port
// of that name, as the kubelet resolves it.
func resolvePort(c *corev1.Container, port intstr.IntOrString) (int, bool) {
	if port.Type == intstr.Int {
		return port.IntValue(), port.IntValue() > 0 && port.IntValue() < 65536
	}
	for _, cp := range c.Ports {
		if cp.Name == port.StrVal && (cp.Protocol == "" || cp.Protocol == corev1.ProtocolTCP) {
			return int(cp.ContainerPort), true
		}
	}
	return 0, false
}
