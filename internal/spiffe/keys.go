package spiffe

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"fmt"
	"net/url"
	"reflect"
	"strings"
)

// NewKey makes a new ECDSA P-256 private key. Workload keys are made where they
// are used and never leave the process.
func NewKey() (*ecdsa.PrivateKey, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

// KeyType names the kind of key a sidecar makes for its certificate.
type KeyType string

// Key types: ECDSA P-256 is the default; P-384, and RSA for who must (RSA
// keys take tens to hundreds of milliseconds to make, at each renewal, and
// their handshakes cost more CPU).
const (
	KeyP256    KeyType = "ecdsa-p256"
	KeyP384    KeyType = "ecdsa-p384"
	KeyRSA2048 KeyType = "rsa-2048"
	KeyRSA3072 KeyType = "rsa-3072"
)

// KeyTypes lists the key types a sidecar can make, the default first.
func KeyTypes() []KeyType { return []KeyType{KeyP256, KeyP384, KeyRSA2048, KeyRSA3072} }

// ParseKeyType reads a key type; empty means P-256.
func ParseKeyType(s string) (KeyType, error) {
	if s == "" {
		return KeyP256, nil
	}
	names := make([]string, 0, 4)
	for _, t := range KeyTypes() {
		if KeyType(s) == t {
			return t, nil
		}
		names = append(names, string(t))
	}
	return "", fmt.Errorf("key type %q: use one of %s", s, strings.Join(names, ", "))
}

// NewKeyOf makes a private key of type t.
func NewKeyOf(t KeyType) (crypto.Signer, error) {
	var (
		key crypto.Signer
		err error
	)
	switch t {
	case KeyP256, "":
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case KeyP384:
		key, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case KeyRSA2048:
		key, err = rsa.GenerateKey(rand.Reader, 2048)
	case KeyRSA3072:
		key, err = rsa.GenerateKey(rand.Reader, 3072)
	default:
		return nil, fmt.Errorf("generate key: unknown key type %q", t)
	}
	if err != nil {
		return nil, fmt.Errorf("generate %s key: %w", t, err)
	}
	return key, nil
}

// TypeOfKey names the key type of a public key, and false for a key no
// sidecar makes (another curve, another RSA size, another algorithm).
func TypeOfKey(pub crypto.PublicKey) (KeyType, bool) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return KeyP256, true
		case elliptic.P384():
			return KeyP384, true
		}
	case *rsa.PublicKey:
		switch k.N.BitLen() {
		case 2048:
			return KeyRSA2048, true
		case 3072:
			return KeyRSA3072, true
		}
	}
	return "", false
}

// isNilKey reports whether key is nil, or a typed nil pointer.
func isNilKey(key crypto.Signer) bool {
	if key == nil {
		return true
	}
	v := reflect.ValueOf(key)
	return v.Kind() == reflect.Pointer && v.IsNil()
}

// NewCSR returns a DER certificate request signed by key that asks for id as its
// only URI SAN, or for no name at all when id is the zero ID (a workload that
// learns its identity from the CA). A CA may ignore the identity asked for; the
// request's value is the proof that the caller holds key.
func NewCSR(key crypto.Signer, id ID) ([]byte, error) {
	if isNilKey(key) {
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
