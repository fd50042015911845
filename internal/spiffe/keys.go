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
func NewKey() (*ecdsa.PrivateKey, error) { return NewKeyOf(KeyP256) }

// KeyType names the kind of key a sidecar makes for its certificate.
type KeyType string

// Key types: ECDSA P-256 is the default; P-384 for who must.
const (
	KeyP256 KeyType = "ecdsa-p256"
	KeyP384 KeyType = "ecdsa-p384"
)

// ParseKeyType reads a key type; empty means P-256.
func ParseKeyType(s string) (KeyType, error) {
	switch t := KeyType(s); t {
	case "":
		return KeyP256, nil
	case KeyP256, KeyP384:
		return t, nil
	}
	return "", fmt.Errorf("key type %q: use %s or %s", s, KeyP256, KeyP384)
}

// Curve returns the key type's curve, or nil for an unknown type.
func (t KeyType) Curve() elliptic.Curve {
	switch t {
	case KeyP256, "":
		return elliptic.P256()
	case KeyP384:
		return elliptic.P384()
	}
	return nil
}

// NewKeyOf makes a private key of type t.
func NewKeyOf(t KeyType) (*ecdsa.PrivateKey, error) {
	c := t.Curve()
	if c == nil {
		return nil, fmt.Errorf("generate key: unknown key type %q", t)
	}
	key, err := ecdsa.GenerateKey(c, rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate %s key: %w", t, err)
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
