package spiffe

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"net/url"
)

// NewKey makes a new ECDSA P-256 private key. Workload keys are made where they
// are used and never leave the process.
func NewKey() (*ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate P-256 key: %w", err)
	}
	return key, nil
}

// NewCSR returns a DER certificate request signed by key that asks for id as its
// only URI SAN, or for no name at all when id is the zero ID (a workload that
// learns its identity from the CA). A CA may ignore the identity asked for; the
// request's value is the proof that the caller holds key.
func NewCSR(key *ecdsa.PrivateKey, id ID) ([]byte, error) {
	if key == nil {
		return nil, fmt.Errorf("certificate request for %q: no key", id)
	}
	tmpl := &x509.CertificateRequest{}
	if !id.IsZero() {
		if err := id.Validate(); err != nil {
			return nil, fmt.Errorf("certificate request: %w", err)
		}
		tmpl.URIs = []*url.URL{id.URL()}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		return nil, fmt.Errorf("certificate request for %q: %w", id, err)
	}
	return der, nil
}
