package control

import (
	"testing"

	"github.com/trellis-mesh/trellis/api/proxy/v1/proxyv1grpc"
)

// TestProcedureNames checks that the procedures the sidecar calls are the ones
// the control plane's generated stubs serve.
func TestProcedureNames(t *testing.T) {
	for _, tt := range []struct{ ours, generated string }{
		{procCertify, proxyv1grpc.Identity_Certify_FullMethodName},
		{procDestinations, proxyv1grpc.Destinations_Watch_FullMethodName},
		{procInbound, proxyv1grpc.Inbound_Watch_FullMethodName},
	} {
		if tt.ours != tt.generated {
			t.Errorf("sidecar calls %q, control plane serves %q", tt.ours, tt.generated)
		}
	}
}
