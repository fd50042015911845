package translate

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/trellis-mesh/trellis/internal/model"
)

// TestMeshConfigEveryField: a MeshConfig setting every field OSM's schema has
// is accepted whole; the fields Trellis acts on change the mesh settings, and
// each other field is reported, by its path, as stored and not used yet.
func TestMeshConfigEveryField(t *testing.T) {
	objs, errs, warns := Translate(decodeFiles(t, "meshconfig-every-field.yaml"))
	if len(errs) > 0 {
		t.Fatalf("errors %v; want none: every field is valid", errs)
	}
	want := &model.MeshSettings{
		TrustDomain: "cluster.local", Permissive: false, Egress: false, CertValidity: 12 * time.Hour,
		SidecarLogLevel: "debug", ControlPlaneLogLevel: "debug",
		SidecarResources: `{"limits":{"cpu":"1","memory":"512Mi"},"requests":{"cpu":"100m","memory":"64Mi"}}`,
		Tracing:          model.Tracing{Enable: true, Address: "jaeger.osm-system.svc.cluster.local", Port: 9411, Endpoint: "/api/v2/spans"},
		Source:           "MeshConfig osm-system/osm-mesh-config",
	}
	if diff := cmp.Diff(want, objs.Mesh); diff != "" {
		t.Errorf("mesh settings (-want +got):\n%s", diff)
	}
	wantUnused := []string{
		"spec.certificate.certKeyBitSize",
		"spec.certificate.ingressGateway.secret.name",
		"spec.certificate.ingressGateway.secret.namespace",
		"spec.certificate.ingressGateway.subjectAltNames",
		"spec.certificate.ingressGateway.validityDuration",
		"spec.featureFlags.enableAsyncProxyServiceMapping",
		"spec.featureFlags.enableEgressPolicy",
		"spec.featureFlags.enableEnvoyActiveHealthChecks",
		"spec.featureFlags.enableIngressBackendPolicy",
		"spec.featureFlags.enableMeshRootCertificate",
		"spec.featureFlags.enableMulticlusterMode",
		"spec.featureFlags.enableRetryPolicy",
		"spec.featureFlags.enableSnapshotCacheMode",
		"spec.featureFlags.enableWASMStats",
		"spec.observability.enableDebugServer",
		"spec.observability.tracing.address",
		"spec.observability.tracing.enable",
		"spec.observability.tracing.endpoint",
		"spec.observability.tracing.port",
		"spec.sidecar.cipherSuites",
		"spec.sidecar.configResyncInterval",
		"spec.sidecar.ecdhCurves",
		"spec.sidecar.enablePrivilegedInitContainer",
		"spec.sidecar.envoyImage",
		"spec.sidecar.envoyWindowsImage",
		"spec.sidecar.initContainerImage",
		"spec.sidecar.localProxyMode",
		"spec.sidecar.maxDataPlaneConnections",
		"spec.sidecar.tlsMaxProtocolVersion",
		"spec.sidecar.tlsMinProtocolVersion",
		"spec.traffic.inboundExternalAuthorization.address",
		"spec.traffic.inboundExternalAuthorization.enable",
		"spec.traffic.inboundExternalAuthorization.failureModeAllow",
		"spec.traffic.inboundExternalAuthorization.port",
		"spec.traffic.inboundExternalAuthorization.statPrefix",
		"spec.traffic.inboundExternalAuthorization.timeout",
		"spec.traffic.inboundPortExclusionList",
		"spec.traffic.networkInterfaceExclusionList",
		"spec.traffic.outboundIPRangeExclusionList",
		"spec.traffic.outboundIPRangeInclusionList",
		"spec.traffic.outboundPortExclusionList",
	}
	var got []string
	for _, w := range warns {
		if w.Object != "MeshConfig osm-system/osm-mesh-config" || w.Message != NotUsedYet {
			t.Errorf("warning %+v; want a warning %q about MeshConfig osm-system/osm-mesh-config", w, NotUsedYet)
		}
		got = append(got, w.Field)
	}
	if diff := cmp.Diff(wantUnused, got); diff != "" {
		t.Errorf("fields reported as not used yet (-want +got):\n%s", diff)
	}
}
