package controlplane

import (
	"crypto/tls"
	"crypto/x509"
	"path/filepath"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/spiffe"
)

// TestServingCertRenews checks that the control plane's own certificate is
// re-issued at two thirds of its life and kept in between.
func TestServingCertRenews(t *testing.T) {
	ca, err := identity.LoadOrCreate(filepath.Join(t.TempDir(), "ca"), identity.Options{LeafTTL: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	issued := 0
	s := &servingCert{issue: func() (tls.Certificate, error) {
		issued++
		return ca.ServingCert(spiffe.ID{TrustDomain: "cluster.local", Namespace: "trellis-system", Account: "cp"}, []string{"localhost"}, nil)
	}}
	now := time.Now()
	first, err := s.get(now)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(first.Certificate[0])
	life := leaf.NotAfter.Sub(now)
	if again, _ := s.get(now.Add(life / 2)); again != first || issued != 1 {
		t.Errorf("at half its life: issued %d certificates, want the first kept", issued)
	}
	if renewed, _ := s.get(now.Add(life * 3 / 4)); renewed == first || issued != 2 {
		t.Errorf("at three quarters of its life: issued %d certificates, want a renewal", issued)
	}
}
