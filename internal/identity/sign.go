package identity

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/trellis-mesh/trellis/internal/spiffe"
)

// Sign issues a workload certificate for id to the holder of the key in csrDER.
// The caller decides id from a credential it has checked: Sign only verifies the
// request's signature and ignores every name the request asks for. The leaf's one
// URI SAN is id; it is valid from a minute ago for ttl (the CA's LeafTTL when ttl
// is 0), cut short at the intermediate's expiry. The chain is the leaf, then the
// intermediate, DER encoded.
func (ca *CA) Sign(csrDER []byte, id spiffe.ID, ttl time.Duration) ([][]byte, error) {
	if err := ca.checkID(id); err != nil {
		return nil, err
	}
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, fmt.Errorf("sign certificate for %s: certificate request does not parse: %w", id, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("sign certificate for %s: certificate request signature is invalid: %w", id, err)
	}
	if _, ok := spiffe.TypeOfKey(csr.PublicKey); !ok {
		return nil, fmt.Errorf("sign certificate for %s: certificate request key is %s, want one of %s", id, describeKey(csr.PublicKey), keyTypeList())
	}
	inter, interKey := ca.signer()
	leaf, err := ca.issue(inter, interKey, id, csr.PublicKey, ttl, nil, nil)
	if err != nil {
		return nil, err
	}
	return [][]byte{leaf.Raw, bytes.Clone(inter.Raw)}, nil
}

// ServingCert issues a certificate for the control plane's own server, with a
// key made here: its SANs are id's URI plus dnsNames and ips, it lives for the
// CA's LeafTTL, and its chain includes the intermediate. Leaf is set.
func (ca *CA) ServingCert(id spiffe.ID, dnsNames []string, ips []net.IP) (tls.Certificate, error) {
	if err := ca.checkID(id); err != nil {
		return tls.Certificate{}, err
	}
	key, err := spiffe.NewKey()
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("serving certificate for %s: %w", id, err)
	}
	inter, interKey := ca.signer()
	leaf, err := ca.issue(inter, interKey, id, &key.PublicKey, 0, dnsNames, ips)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{
		Certificate: [][]byte{leaf.Raw, bytes.Clone(inter.Raw)},
		PrivateKey:  key,
		Leaf:        leaf,
	}, nil
}

// Bundle returns the trust bundle workloads verify peers against: the root
// certificate, DER encoded; during a rotation, until it finishes, the old root
// and then the new one.
func (ca *CA) Bundle() [][]byte {
	ca.mu.RLock()
	defer ca.mu.RUnlock()
	return ca.bundleLocked()
}

func (ca *CA) bundleLocked() [][]byte {
	b := [][]byte{bytes.Clone(ca.root.Raw)}
	if ca.next != nil {
		b = append(b, bytes.Clone(ca.next.root.Raw))
	}
	return b
}

// BundlePEM returns the trust bundle PEM encoded.
func (ca *CA) BundlePEM() []byte {
	var out []byte
	for _, der := range ca.Bundle() {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	return out
}

// TrustVersion returns the version of the CA's current state as workloads see
// it (spiffe.TrustVersion of the bundle and the signing intermediate); it
// changes at each step of a rotation.
func (ca *CA) TrustVersion() string {
	ca.mu.RLock()
	defer ca.mu.RUnlock()
	return ca.trustVersionLocked()
}

func (ca *CA) trustVersionLocked() string { return ca.version }

// setVersionLocked computes the trust version after the CA changed.
func (ca *CA) setVersionLocked() {
	inter, _ := ca.signerLocked()
	ca.version = spiffe.TrustVersion(ca.bundleLocked(), inter.Raw)
}

// signer returns the intermediate that signs now, and its key.
func (ca *CA) signer() (*x509.Certificate, *ecdsa.PrivateKey) {
	ca.mu.RLock()
	defer ca.mu.RUnlock()
	return ca.signerLocked()
}

func (ca *CA) signerLocked() (*x509.Certificate, *ecdsa.PrivateKey) {
	if ca.phase == PhaseActivated {
		return ca.next.inter, ca.next.interKey
	}
	return ca.inter, ca.interKey
}

func (ca *CA) checkID(id spiffe.ID) error {
	if err := id.Validate(); err != nil {
		return fmt.Errorf("sign certificate: %w", err)
	}
	if id.TrustDomain != ca.td {
		return fmt.Errorf("sign certificate for %s: this CA issues identities in trust domain %q only", id, ca.td)
	}
	return nil
}

func (ca *CA) issue(inter *x509.Certificate, interKey *ecdsa.PrivateKey, id spiffe.ID, pub crypto.PublicKey, ttl time.Duration, dnsNames []string, ips []net.IP) (*x509.Certificate, error) {
	switch {
	case ttl < 0:
		return nil, fmt.Errorf("sign certificate for %s: TTL %s is negative", id, ttl)
	case ttl == 0:
		ttl = ca.leafTTL
	}
	now := ca.now()
	if !now.Before(inter.NotAfter) {
		return nil, fmt.Errorf("sign certificate for %s: intermediate CA expired at %s; restart the control plane to issue a new intermediate",
			id, inter.NotAfter.UTC().Format(time.RFC3339))
	}
	notAfter := now.Add(ttl)
	if notAfter.After(inter.NotAfter) {
		notAfter = inter.NotAfter
	}
	tmpl := &x509.Certificate{
		// The subject stays empty, so the SAN extension is marked critical, as
		// the X509-SVID specification asks; the identity is the URI SAN.
		NotBefore:             now.Add(-leafBackdate),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{id.URL()},
		DNSNames:              dnsNames,
		IPAddresses:           ips,
	}
	leaf, err := createCert(tmpl, inter, pub, interKey)
	if err != nil {
		return nil, fmt.Errorf("sign certificate for %s: %w", id, err)
	}
	return leaf, nil
}

// createCert signs tmpl with signer as parent and parses the result. A nil
// SerialNumber makes crypto/x509 choose a random one.
func createCert(tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer *ecdsa.PrivateKey) (*x509.Certificate, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// describeKey names a public key's algorithm and size, for refusals.
func describeKey(pub crypto.PublicKey) string {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		return "ECDSA " + k.Curve.Params().Name
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA %d", k.N.BitLen())
	}
	return fmt.Sprintf("%T", pub)
}

func keyTypeList() string {
	var b strings.Builder
	for i, t := range spiffe.KeyTypes() {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(string(t))
	}
	return b.String()
}
