package spiffe

import (
	"bytes"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"sync/atomic"
	"time"
)

// Credentials holds a process's current workload credentials: its certificate
// chain, the private key of the leaf, and the trust bundle (root certificates) it
// checks peers against. Store replaces all three at once, and every TLS handshake
// made with ServerTLS or ClientTLS reads the values current at that moment, so a
// rotation takes effect on the next handshake and never disturbs established
// connections.
//
// The zero value is ready to use and holds nothing. A Credentials is safe for
// concurrent use and must not be copied after first use.
type Credentials struct {
	cur atomic.Pointer[credState]
}

// Material is one set of credentials as stored. The byte slices are shared with
// the Credentials and must not be modified.
type Material struct {
	// Chain is the leaf certificate followed by its intermediates, DER encoded;
	// empty while the Credentials hold a trust bundle only.
	Chain [][]byte
	// Key is the leaf's private key; nil while the Credentials hold a trust
	// bundle only.
	Key crypto.Signer
	// Bundle is the trust bundle: root certificates, DER encoded.
	Bundle [][]byte
	// ID is the leaf's SPIFFE ID; zero while there is no leaf.
	ID ID
	// NotBefore and NotAfter bound the leaf's validity; zero while there is no
	// leaf.
	NotBefore, NotAfter time.Time
}

// credState is one immutable generation of credentials.
type credState struct {
	m     Material
	cert  *tls.Certificate // nil while there is no leaf
	roots *x509.CertPool
}

// Store checks and installs new credentials, replacing the previous ones
// atomically. The chain must start with a leaf that carries one SPIFFE ID, is not
// a CA, matches key, has not expired, and chains to a root in bundle. A nil chain
// with a nil key stores a trust bundle alone, which is what a workload has before
// its first certificate: ClientTLS can then check a server without presenting a
// certificate. Store copies its inputs. On error the previous credentials stay.
func (c *Credentials) Store(chain [][]byte, key crypto.Signer, bundle [][]byte) error {
	st, err := newCredState(chain, key, bundle, time.Now())
	if err != nil {
		return err
	}
	c.cur.Store(st)
	return nil
}

// Load returns the current credentials, and false if nothing was stored yet.
func (c *Credentials) Load() (Material, bool) {
	st := c.cur.Load()
	if st == nil {
		return Material{}, false
	}
	m := st.m
	m.Chain = append([][]byte(nil), m.Chain...)
	m.Bundle = append([][]byte(nil), m.Bundle...)
	return m, true
}

// ID returns the SPIFFE ID of the current leaf, or the zero ID if there is none.
func (c *Credentials) ID() ID {
	if st := c.cur.Load(); st != nil {
		return st.m.ID
	}
	return ID{}
}

// NotBefore returns the start of the current leaf's validity, or the zero time if
// there is no leaf.
func (c *Credentials) NotBefore() time.Time {
	if st := c.cur.Load(); st != nil {
		return st.m.NotBefore
	}
	return time.Time{}
}

// NotAfter returns the end of the current leaf's validity, or the zero time if
// there is no leaf.
func (c *Credentials) NotAfter() time.Time {
	if st := c.cur.Load(); st != nil {
		return st.m.NotAfter
	}
	return time.Time{}
}

func newCredState(chain [][]byte, key crypto.Signer, bundle [][]byte, now time.Time) (*credState, error) {
	if isNilKey(key) {
		key = nil
	}
	if len(bundle) == 0 {
		return nil, errors.New("store credentials: trust bundle is empty; pass the CA's root certificates")
	}
	st := &credState{roots: x509.NewCertPool()}
	for i, der := range bundle {
		root, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("store credentials: trust bundle certificate %d: %w", i, err)
		}
		if !root.IsCA {
			return nil, fmt.Errorf("store credentials: trust bundle certificate %d (%q) is not a CA certificate", i, root.Subject.String())
		}
		st.roots.AddCert(root)
		st.m.Bundle = append(st.m.Bundle, bytes.Clone(der))
	}

	switch {
	case len(chain) == 0 && key == nil:
		return st, nil
	case len(chain) == 0:
		return nil, errors.New("store credentials: key given without a certificate chain")
	case key == nil:
		return nil, errors.New("store credentials: certificate chain given without its private key")
	}

	certs := make([]*x509.Certificate, len(chain))
	for i, der := range chain {
		der = bytes.Clone(der)
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("store credentials: chain certificate %d: %w", i, err)
		}
		certs[i] = cert
		st.m.Chain = append(st.m.Chain, der)
	}
	leaf := certs[0]
	id, err := FromCertificate(leaf)
	if err != nil {
		return nil, fmt.Errorf("store credentials: leaf: %w", err)
	}
	if leaf.IsCA {
		return nil, fmt.Errorf("store credentials: leaf for %s is a CA certificate", id)
	}
	if pub, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(key.Public()) {
		return nil, fmt.Errorf("store credentials: leaf for %s does not match the private key; request a certificate for this key", id)
	}
	if now.After(leaf.NotAfter) {
		return nil, fmt.Errorf("store credentials: leaf for %s expired at %s; request a new certificate", id, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	// Check the chain at a moment inside the leaf's validity rather than now, so
	// that a local clock a little behind the CA's does not refuse a fresh leaf;
	// peers apply their own clocks anyway.
	at := now
	if at.Before(leaf.NotBefore) {
		at = leaf.NotBefore
	}
	if _, err := verifyChain(certs, st.roots, x509.ExtKeyUsageAny, at); err != nil {
		return nil, fmt.Errorf("store credentials: leaf for %s: %w", id, err)
	}
	st.m.Key = key
	st.m.ID = id
	st.m.NotBefore = leaf.NotBefore
	st.m.NotAfter = leaf.NotAfter
	st.cert = &tls.Certificate{Certificate: st.m.Chain, PrivateKey: key, Leaf: leaf}
	return st, nil
}
