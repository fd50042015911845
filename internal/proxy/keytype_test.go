package proxy_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"testing"

	"github.com/trellis-mesh/trellis/internal/spiffe"
)

// A sidecar whose key is ECDSA P-384 (--key-type ecdsa-p384) and one with the
// default P-256 talk mutual TLS both ways.
func TestMixedKeyTypes(t *testing.T) {
	t.Parallel()
	store := newApp(t, "bookstore-v1", nil)
	m := newMesh(t, permissiveMesh)
	server := m.sidecar(sidecarSpec{reg: bookstoreReg("bookstore-v1", "bookstore"), app: store.addr(), ready: true, keyType: spiffe.KeyP384})
	client := m.sidecar(sidecarSpec{reg: bookbuyerReg()})
	client.getUntil(t, bookstoreURL+"/", statusIs(http.StatusOK))
	if resp, body := client.get(t, bookstoreURL+"/"); resp.StatusCode != http.StatusOK || string(body) != "bookstore-v1" {
		t.Fatalf("through a P-384 server sidecar: %d %q", resp.StatusCode, body)
	}
	// What the server sidecar presents, read in a handshake it then refuses
	// (this client has no certificate).
	var leaf *x509.Certificate
	conn, err := tls.Dial("tcp", server.p.Inbound.String(), &tls.Config{
		InsecureSkipVerify: true, // only to read the certificate
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			leaf, _ = x509.ParseCertificate(raw[0])
			return nil
		},
	})
	if err == nil {
		conn.Close()
	}
	if leaf == nil {
		t.Fatalf("no certificate from the server sidecar (%v)", err)
	}
	if pub, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P384() {
		t.Errorf("the server sidecar's leaf key is %T, want ECDSA P-384", leaf.PublicKey)
	}
}
