package spiffe_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/trellis-mesh/trellis/internal/spiffe"
)

// testCA is a one-level CA, written here because the real one
// (internal/identity) imports this package.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "test root"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	return &testCA{cert: createCert(t, tmpl, tmpl, &key.PublicKey, key), key: key}
}

func (ca *testCA) bundle() [][]byte { return [][]byte{ca.cert.Raw} }

// leaf issues a certificate for uri ("" for none) to a new key; edit may change
// the template.
func (ca *testCA) leaf(t *testing.T, uri string, edit func(*x509.Certificate)) ([][]byte, *ecdsa.PrivateKey) {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	if uri != "" {
		u, err := url.Parse(uri)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = []*url.URL{u}
	} else {
		tmpl.Subject = pkix.Name{CommonName: "no SPIFFE ID"}
	}
	if edit != nil {
		edit(tmpl)
	}
	return [][]byte{createCert(t, tmpl, ca.cert, &key.PublicKey, ca.key).Raw}, key
}

// creds issues a leaf for uri and stores it with the CA's bundle.
func (ca *testCA) creds(t *testing.T, uri string) *spiffe.Credentials {
	t.Helper()
	chain, key := ca.leaf(t, uri, nil)
	c := &spiffe.Credentials{}
	if err := c.Store(chain, key, ca.bundle()); err != nil {
		t.Fatalf("Store: %v", err)
	}
	return c
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	key, err := spiffe.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func createCert(t *testing.T, tmpl, parent *x509.Certificate, pub *ecdsa.PublicKey, signer *ecdsa.PrivateKey) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

const (
	web   = "spiffe://cluster.local/ns/shop/sa/web"
	cart  = "spiffe://cluster.local/ns/shop/sa/cart"
	other = "spiffe://other.domain/ns/shop/sa/web"
)

func TestNewCSR(t *testing.T) {
	key := newKey(t)
	if key.Curve != elliptic.P256() {
		t.Fatalf("NewKey curve = %s, want P-256", key.Curve.Params().Name)
	}
	id, err := spiffe.Parse(web)
	if err != nil {
		t.Fatal(err)
	}
	der, err := spiffe.NewCSR(key, id)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := csr.CheckSignature(); err != nil {
		t.Errorf("CheckSignature: %v", err)
	}
	if pub, ok := csr.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(key.Public()) {
		t.Errorf("CSR public key is not the key's")
	}
	var uris []string
	for _, u := range csr.URIs {
		uris = append(uris, u.String())
	}
	if diff := cmp.Diff([]string{web}, uris); diff != "" {
		t.Errorf("CSR URIs (-want +got):\n%s", diff)
	}
	if _, err := spiffe.NewCSR(key, spiffe.ID{TrustDomain: "td", Namespace: "a/b", Account: "c"}); !errors.Is(err, spiffe.ErrInvalidID) {
		t.Errorf("NewCSR with an invalid ID = %v, want ErrInvalidID", err)
	}
	if _, err := spiffe.NewCSR(nil, id); err == nil {
		t.Error("NewCSR with a nil key succeeded")
	}

	// A workload that does not know its identity asks for none.
	der, err = spiffe.NewCSR(key, spiffe.ID{})
	if err != nil {
		t.Fatalf("NewCSR with the zero ID: %v", err)
	}
	csr, err = x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := csr.CheckSignature(); err != nil {
		t.Errorf("CheckSignature: %v", err)
	}
	if len(csr.URIs)+len(csr.DNSNames) != 0 {
		t.Errorf("CSR for the zero ID asks for URIs %v, DNS names %v; want none", csr.URIs, csr.DNSNames)
	}
}

func TestCredentialsStore(t *testing.T) {
	ca, foreign := newTestCA(t), newTestCA(t)
	chain, key := ca.leaf(t, web, nil)
	foreignChain, foreignKey := foreign.leaf(t, web, nil)
	noID, noIDKey := ca.leaf(t, "", nil)
	expired, expiredKey := ca.leaf(t, web, func(c *x509.Certificate) {
		c.NotBefore = time.Now().Add(-2 * time.Hour)
		c.NotAfter = time.Now().Add(-time.Minute)
	})
	future, futureKey := ca.leaf(t, web, func(c *x509.Certificate) {
		c.NotBefore = time.Now().Add(10 * time.Minute) // a CA clock ahead of ours
	})
	caAsLeaf, caAsLeafKey := ca.leaf(t, web, func(c *x509.Certificate) { c.IsCA = true })

	tests := []struct {
		name    string
		chain   [][]byte
		key     *ecdsa.PrivateKey
		bundle  [][]byte
		wantErr bool
		wantID  string
	}{
		{"leaf", chain, key, ca.bundle(), false, web},
		{"bundle only", nil, nil, ca.bundle(), false, ""},
		{"leaf not yet valid by our clock", future, futureKey, ca.bundle(), false, web},
		{"no bundle", chain, key, nil, true, ""},
		{"bundle is not a CA", chain, key, chain, true, ""},
		{"chain without key", chain, nil, ca.bundle(), true, ""},
		{"key without chain", nil, key, ca.bundle(), true, ""},
		{"key of another leaf", chain, foreignKey, ca.bundle(), true, ""},
		{"leaf from another CA", foreignChain, foreignKey, ca.bundle(), true, ""},
		{"leaf without SPIFFE ID", noID, noIDKey, ca.bundle(), true, ""},
		{"expired leaf", expired, expiredKey, ca.bundle(), true, ""},
		{"CA as leaf", caAsLeaf, caAsLeafKey, ca.bundle(), true, ""},
		{"garbage chain", [][]byte{[]byte("junk")}, key, ca.bundle(), true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := ca.creds(t, cart) // what a failed Store must leave in place
			prevM, _ := c.Load()
			err := c.Store(tt.chain, tt.key, tt.bundle)
			if tt.wantErr {
				if err == nil {
					t.Fatal("Store succeeded, want an error")
				}
				if got, _ := c.Load(); got.ID != prevM.ID || !got.NotAfter.Equal(prevM.NotAfter) {
					t.Errorf("after a failed Store, Load = %s, want the previous %s", got.ID, prevM.ID)
				}
				return
			}
			if err != nil {
				t.Fatalf("Store: %v", err)
			}
			m, ok := c.Load()
			if !ok {
				t.Fatal("Load after Store returned false")
			}
			if got := c.ID().String(); got != tt.wantID {
				t.Errorf("ID() = %q, want %q", got, tt.wantID)
			}
			if m.ID != c.ID() {
				t.Errorf("Load().ID = %s, ID() = %s", m.ID, c.ID())
			}
			if diff := cmp.Diff(tt.chain, m.Chain); diff != "" {
				t.Errorf("Load().Chain (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.bundle, m.Bundle); diff != "" {
				t.Errorf("Load().Bundle (-want +got):\n%s", diff)
			}
			if tt.key == nil && m.Key != nil || tt.key != nil && m.Key != crypto.Signer(tt.key) {
				t.Errorf("Load().Key is not the stored key")
			}
			if tt.chain != nil {
				leaf, err := x509.ParseCertificate(tt.chain[0])
				if err != nil {
					t.Fatal(err)
				}
				if !c.NotAfter().Equal(leaf.NotAfter) || !c.NotBefore().Equal(leaf.NotBefore) {
					t.Errorf("validity = %s..%s, want %s..%s", c.NotBefore(), c.NotAfter(), leaf.NotBefore, leaf.NotAfter)
				}
			} else if !c.NotAfter().IsZero() {
				t.Errorf("NotAfter() = %s with no leaf, want zero", c.NotAfter())
			}
		})
	}
}

func TestCredentialsEmpty(t *testing.T) {
	var c spiffe.Credentials
	if _, ok := c.Load(); ok {
		t.Error("Load on empty Credentials returned true")
	}
	if !c.ID().IsZero() || !c.NotAfter().IsZero() || !c.NotBefore().IsZero() {
		t.Errorf("empty Credentials: ID %q, NotBefore %s, NotAfter %s; want zeros", c.ID(), c.NotBefore(), c.NotAfter())
	}
}

// handshakeResult is what each side of one TLS handshake saw.
type handshakeResult struct {
	serverErr  error
	clientErr  error // the handshake's error or, failing that, the first read's
	serverPeer spiffe.ID
	clientPeer spiffe.ID
	alpn       string
}

// handshake runs one TLS handshake over TCP on 127.0.0.1. After a successful
// server handshake the server writes one byte, so that a client whose handshake
// completed learns of a rejection on its first read.
func handshake(t *testing.T, server, client *tls.Config) handshakeResult {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	type serverSide struct {
		err  error
		peer spiffe.ID
	}
	done := make(chan serverSide, 1)
	go func() {
		raw, err := ln.Accept()
		if err != nil {
			done <- serverSide{err: err}
			return
		}
		conn := tls.Server(raw, server)
		defer conn.Close()
		if err := conn.HandshakeContext(ctx); err != nil {
			done <- serverSide{err: err}
			return
		}
		peer, err := spiffe.PeerID(conn.ConnectionState())
		if err == nil {
			_, err = conn.Write([]byte{'x'})
		}
		done <- serverSide{err: err, peer: peer}
	}()

	var res handshakeResult
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	conn := tls.Client(raw, client)
	defer conn.Close()
	if res.clientErr = conn.HandshakeContext(ctx); res.clientErr == nil {
		res.clientPeer, res.clientErr = spiffe.PeerID(conn.ConnectionState())
		res.alpn = conn.ConnectionState().NegotiatedProtocol
		if res.clientErr == nil {
			_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, res.clientErr = io.ReadFull(conn, make([]byte, 1))
		}
	} else {
		conn.Close() // unblock the server
	}
	s := <-done
	res.serverErr, res.serverPeer = s.err, s.peer
	return res
}

func TestHandshake(t *testing.T) {
	ca, foreign := newTestCA(t), newTestCA(t)
	server := ca.creds(t, web)
	bundleOnly := &spiffe.Credentials{}
	if err := bundleOnly.Store(nil, nil, ca.bundle()); err != nil {
		t.Fatal(err)
	}
	// raw presents a certificate without checking the server, as a client that
	// does not use ClientTLS might.
	raw := func(chain [][]byte, key *ecdsa.PrivateKey) *tls.Config {
		return &tls.Config{
			MinVersion:         tls.VersionTLS13,
			InsecureSkipVerify: true,
			Certificates:       []tls.Certificate{{Certificate: chain, PrivateKey: key}},
		}
	}

	tests := []struct {
		name          string
		client        *tls.Config
		wantReason    string // server side; "" for success
		wantServerErr error  // errors.Is target on the server side, if any
		wantClientErr error  // errors.Is target on the client side; nil for success
		wantMismatch  bool
	}{
		{name: "any identity in the trust domain", client: spiffe.ClientTLS(ca.creds(t, cart), "")},
		{name: "expected identity", client: spiffe.ClientTLS(ca.creds(t, cart), web)},
		{name: "wrong expected identity", client: spiffe.ClientTLS(ca.creds(t, cart), cart),
			wantReason: spiffe.ReasonHandshakeFailed, wantMismatch: true},
		{name: "invalid expected identity", client: spiffe.ClientTLS(ca.creds(t, cart), "spiffe://cluster.local/web"),
			wantReason: spiffe.ReasonHandshakeFailed, wantClientErr: spiffe.ErrInvalidID},
		{name: "server from another CA", client: spiffe.ClientTLS(foreign.creds(t, cart), ""),
			wantReason: spiffe.ReasonHandshakeFailed, wantClientErr: spiffe.ErrUntrusted},
		{name: "server in another trust domain", client: spiffe.ClientTLS(ca.creds(t, other), ""),
			wantReason: spiffe.ReasonHandshakeFailed, wantClientErr: spiffe.ErrTrustDomainMismatch},
		{name: "bundle-only client without certificate", client: spiffe.ClientTLS(bundleOnly, web),
			wantReason: spiffe.ReasonNoClientCertificate, wantClientErr: errAny},
		{name: "client from another CA", client: raw(foreign.leaf(t, cart, nil)),
			wantReason: spiffe.ReasonUntrusted, wantServerErr: spiffe.ErrUntrusted, wantClientErr: errAny},
		{name: "client in another trust domain", client: raw(ca.leaf(t, other, nil)),
			wantReason: spiffe.ReasonUntrusted, wantServerErr: spiffe.ErrTrustDomainMismatch, wantClientErr: errAny},
		{name: "client without SPIFFE ID", client: raw(ca.leaf(t, "", nil)),
			wantReason: spiffe.ReasonNoSPIFFEID, wantServerErr: spiffe.ErrNoSPIFFEID, wantClientErr: errAny},
		{name: "client with two SPIFFE IDs", client: raw(ca.leaf(t, cart, func(c *x509.Certificate) {
			c.URIs = append(c.URIs, &url.URL{Scheme: "spiffe", Host: "cluster.local", Path: "/ns/shop/sa/web"})
		})), wantReason: spiffe.ReasonNoSPIFFEID, wantServerErr: spiffe.ErrNoSPIFFEID, wantClientErr: errAny},
		{name: "expired client", client: raw(ca.leaf(t, cart, func(c *x509.Certificate) {
			c.NotBefore, c.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(-time.Second)
		})), wantReason: spiffe.ReasonUntrusted, wantServerErr: spiffe.ErrUntrusted, wantClientErr: errAny},
		{name: "client certificate for servers only", client: raw(ca.leaf(t, cart, func(c *x509.Certificate) {
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		})), wantReason: spiffe.ReasonUntrusted, wantServerErr: spiffe.ErrUntrusted, wantClientErr: errAny},
		{name: "client certificate that is a CA", client: raw(ca.leaf(t, cart, func(c *x509.Certificate) { c.IsCA = true })),
			wantReason: spiffe.ReasonUntrusted, wantServerErr: spiffe.ErrUntrusted, wantClientErr: errAny},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := handshake(t, spiffe.ServerTLS(server), tt.client)
			if got := spiffe.HandshakeReason(res.serverErr); got != tt.wantReason {
				t.Errorf("server HandshakeReason = %q (error %v), want %q", got, res.serverErr, tt.wantReason)
			}
			if tt.wantServerErr != nil && !errors.Is(res.serverErr, tt.wantServerErr) {
				t.Errorf("server error = %v, want %v", res.serverErr, tt.wantServerErr)
			}
			var mismatch *spiffe.IdentityMismatchError
			switch {
			case tt.wantMismatch:
				if !errors.As(res.clientErr, &mismatch) {
					t.Fatalf("client error = %v, want *IdentityMismatchError", res.clientErr)
				}
				want := &spiffe.IdentityMismatchError{Want: mustParse(t, cart), Got: mustParse(t, web)}
				if diff := cmp.Diff(want, mismatch); diff != "" {
					t.Errorf("IdentityMismatchError (-want +got):\n%s", diff)
				}
				if got := spiffe.HandshakeReason(res.clientErr); got != spiffe.ReasonIdentityMismatch {
					t.Errorf("client HandshakeReason = %q, want %q", got, spiffe.ReasonIdentityMismatch)
				}
			case tt.wantClientErr == errAny:
				if res.clientErr == nil {
					t.Error("client succeeded, want an error")
				}
			case tt.wantClientErr != nil:
				if !errors.Is(res.clientErr, tt.wantClientErr) {
					t.Errorf("client error = %v, want %v", res.clientErr, tt.wantClientErr)
				}
			default:
				if res.clientErr != nil {
					t.Fatalf("client error: %v", res.clientErr)
				}
				if res.clientPeer.String() != web {
					t.Errorf("client saw server %q, want %q", res.clientPeer, web)
				}
				if res.serverPeer.String() != cart {
					t.Errorf("server saw client %q, want %q", res.serverPeer, cart)
				}
			}
		})
	}
}

func TestHandshakePlaintext(t *testing.T) {
	ca := newTestCA(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		raw, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		conn := tls.Server(raw, spiffe.ServerTLS(ca.creds(t, web)))
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		done <- conn.Handshake()
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "GET / HTTP/1.1\r\nHost: web\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	err = <-done
	if got := spiffe.HandshakeReason(err); got != spiffe.ReasonPlaintext {
		t.Errorf("HandshakeReason(%v) = %q, want %q", err, got, spiffe.ReasonPlaintext)
	}
}

func TestHandshakeReason(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{nil, ""},
		{io.EOF, spiffe.ReasonHandshakeFailed},
		{tls.RecordHeaderError{Msg: "first record does not look like a TLS handshake"}, spiffe.ReasonPlaintext},
		{fmt.Errorf("wrapped: %w", spiffe.ErrUntrusted), spiffe.ReasonUntrusted},
		{spiffe.ErrTrustDomainMismatch, spiffe.ReasonUntrusted},
		{spiffe.ErrNoClientCertificate, spiffe.ReasonNoClientCertificate},
		{spiffe.ErrNoSPIFFEID, spiffe.ReasonNoSPIFFEID},
		{&spiffe.IdentityMismatchError{}, spiffe.ReasonIdentityMismatch},
		{spiffe.ErrNoCredentials, spiffe.ReasonHandshakeFailed},
	}
	for _, tt := range tests {
		if got := spiffe.HandshakeReason(tt.err); got != tt.want {
			t.Errorf("HandshakeReason(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}
}

// TestRotation stores new credentials, from a new CA, under a running
// configuration: the next handshake uses them, and a client still on the old CA
// is refused.
func TestRotation(t *testing.T) {
	oldCA, newCA := newTestCA(t), newTestCA(t)
	server := oldCA.creds(t, web)
	serverCfg := spiffe.ServerTLS(server)

	oldClient := spiffe.ClientTLS(oldCA.creds(t, cart), web)
	if res := handshake(t, serverCfg, oldClient); res.serverErr != nil || res.clientErr != nil {
		t.Fatalf("before rotation: server %v, client %v", res.serverErr, res.clientErr)
	}

	chain, key := newCA.leaf(t, web, nil)
	if err := server.Store(chain, key, newCA.bundle()); err != nil {
		t.Fatal(err)
	}
	newClient := spiffe.ClientTLS(newCA.creds(t, cart), web)
	if res := handshake(t, serverCfg, newClient); res.serverErr != nil || res.clientErr != nil {
		t.Errorf("new CA after rotation: server %v, client %v", res.serverErr, res.clientErr)
	}
	res := handshake(t, serverCfg, oldClient)
	if !errors.Is(res.clientErr, spiffe.ErrUntrusted) {
		t.Errorf("old client after rotation: client error %v, want ErrUntrusted", res.clientErr)
	}
}

// TestCloneKeepsALPN checks that callers may Clone the configurations and add
// NextProtos, as gRPC does, and still get both the protocol and the checks.
func TestCloneKeepsALPN(t *testing.T) {
	ca := newTestCA(t)
	server := spiffe.ServerTLS(ca.creds(t, web)).Clone()
	server.NextProtos = []string{"h2"}
	client := spiffe.ClientTLS(ca.creds(t, cart), web).Clone()
	client.NextProtos = []string{"h2"}
	res := handshake(t, server, client)
	if res.serverErr != nil || res.clientErr != nil {
		t.Fatalf("server %v, client %v", res.serverErr, res.clientErr)
	}
	if res.alpn != "h2" {
		t.Errorf("negotiated protocol %q, want h2", res.alpn)
	}
	if res.serverPeer.String() != cart {
		t.Errorf("server saw client %q, want %q", res.serverPeer, cart)
	}
}

func TestServerWithoutCredentials(t *testing.T) {
	ca := newTestCA(t)
	res := handshake(t, spiffe.ServerTLS(&spiffe.Credentials{}), spiffe.ClientTLS(ca.creds(t, cart), ""))
	if !errors.Is(res.serverErr, spiffe.ErrNoCredentials) {
		t.Errorf("server error = %v, want ErrNoCredentials", res.serverErr)
	}
	if res.clientErr == nil {
		t.Error("client succeeded against a server with no certificate")
	}
}

func TestPeerIDWithoutCertificate(t *testing.T) {
	if _, err := spiffe.PeerID(tls.ConnectionState{}); !errors.Is(err, spiffe.ErrNoSPIFFEID) {
		t.Errorf("PeerID(no certificates) = %v, want ErrNoSPIFFEID", err)
	}
}

// errAny marks a case where the client fails for a reason it cannot name.
var errAny = errors.New("any error")

func mustParse(t *testing.T, s string) spiffe.ID {
	t.Helper()
	id, err := spiffe.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}
