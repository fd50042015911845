package identity

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"net/url"
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
	pub, ok := csr.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, fmt.Errorf("sign certificate for %s: certificate request key is %s, want ECDSA P-256", id, csr.PublicKeyAlgorithm)
	}
	leaf, err := ca.issue(id, pub, ttl, nil, nil)
	if err != nil {
		return nil, err
	}
	return [][]byte{leaf.Raw, bytes.Clone(ca.inter.Raw)}, nil
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
	leaf, err := ca.issue(id, &key.PublicKey, 0, dnsNames, ips)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{
		Certificate: [][]byte{leaf.Raw, bytes.Clone(ca.inter.Raw)},
		PrivateKey:  key,
		Leaf:        leaf,
	}, nil
}

// Bundle returns the trust bundle workloads verify peers against: the root
// certificate, DER encoded.
func (ca *CA) Bundle() [][]byte { return [][]byte{bytes.Clone(ca.root.Raw)} }

// BundlePEM returns the trust bundle PEM encoded.
func (ca *CA) BundlePEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.root.Raw})
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

func (ca *CA) issue(id spiffe.ID, pub *ecdsa.PublicKey, ttl time.Duration, dnsNames []string, ips []net.IP) (*x509.Certificate, error) {
	switch {
	case ttl < 0:
		return nil, fmt.Errorf("sign certificate for %s: TTL %s is negative", id, ttl)
	case ttl == 0:
		ttl = ca.leafTTL
	}
	now := ca.now()
	if !now.Before(ca.inter.NotAfter) {
		return nil, fmt.Errorf("sign certificate for %s: intermediate CA expired at %s; restart the control plane to issue a new intermediate",
			id, ca.inter.NotAfter.UTC().Format(time.RFC3339))
	}
	notAfter := now.Add(ttl)
	if notAfter.After(ca.inter.NotAfter) {
		notAfter = ca.inter.NotAfter
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
	leaf, err := createCert(tmpl, ca.inter, pub, ca.interKey)
	if err != nil {
		return nil, fmt.Errorf("sign certificate for %s: %w", id, err)
	}
	return leaf, nil
}

// createCert signs tmpl with signer as parent and parses the result. A nil
// SerialNumber makes crypto/x509 choose a random one.
func createCert(tmpl, parent *x509.Certificate, pub *ecdsa.PublicKey, signer *ecdsa.PrivateKey) (*x509.Certificate, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}
