package identity_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/spiffe"
)

const (
	webID  = "spiffe://cluster.local/ns/shop/sa/web"
	cartID = "spiffe://cluster.local/ns/shop/sa/cart"
)

// certify does what a proxy does: make a key, ask ca for a certificate for id,
// and store it with extra roots added to the CA's bundle.
func certify(t *testing.T, ca *identity.CA, id string, extraRoots ...[]byte) *spiffe.Credentials {
	t.Helper()
	csr, key := newCSR(t, mustParse(t, id))
	chain, err := ca.Sign(csr, mustParse(t, id), 0)
	if err != nil {
		t.Fatal(err)
	}
	creds := &spiffe.Credentials{}
	if err := creds.Store(chain, key, append(ca.Bundle(), extraRoots...)); err != nil {
		t.Fatalf("Store: %v", err)
	}
	return creds
}

type result struct {
	serverErr, clientErr   error
	serverPeer, clientPeer spiffe.ID
}

// handshake runs one TLS handshake over TCP on 127.0.0.1. The server writes a
// byte after its handshake so that the client learns of a late rejection.
func handshake(t *testing.T, server, client *tls.Config) result {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type side struct {
		err  error
		peer spiffe.ID
	}
	done := make(chan side, 1)
	go func() {
		raw, err := ln.Accept()
		if err != nil {
			done <- side{err: err}
			return
		}
		conn := tls.Server(raw, server)
		defer conn.Close()
		if err := conn.HandshakeContext(ctx); err != nil {
			done <- side{err: err}
			return
		}
		var s side
		if len(conn.ConnectionState().PeerCertificates) > 0 {
			s.peer, s.err = spiffe.PeerID(conn.ConnectionState())
		}
		if s.err == nil {
			_, s.err = conn.Write([]byte{'x'})
		}
		done <- s
	}()

	var r result
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	conn := tls.Client(raw, client)
	defer conn.Close()
	if r.clientErr = conn.HandshakeContext(ctx); r.clientErr == nil {
		r.clientPeer, r.clientErr = spiffe.PeerID(conn.ConnectionState())
		if r.clientErr == nil {
			_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, r.clientErr = io.ReadFull(conn, make([]byte, 1))
		}
	} else {
		conn.Close()
	}
	s := <-done
	r.serverErr, r.serverPeer = s.err, s.peer
	return r
}

func TestMutualTLS(t *testing.T) {
	ca := newCA(t, identity.Options{})
	foreign := newCA(t, identity.Options{})
	server := spiffe.ServerTLS(certify(t, ca, webID))

	t.Run("matching identity", func(t *testing.T) {
		r := handshake(t, server, spiffe.ClientTLS(certify(t, ca, cartID), webID))
		if r.serverErr != nil || r.clientErr != nil {
			t.Fatalf("server error %v, client error %v", r.serverErr, r.clientErr)
		}
		got := []string{r.serverPeer.String(), r.clientPeer.String()}
		if diff := cmp.Diff([]string{cartID, webID}, got); diff != "" {
			t.Errorf("peers seen by server, client (-want +got):\n%s", diff)
		}
	})

	t.Run("wrong expected identity", func(t *testing.T) {
		want := "spiffe://cluster.local/ns/shop/sa/payments"
		r := handshake(t, server, spiffe.ClientTLS(certify(t, ca, cartID), want))
		var mismatch *spiffe.IdentityMismatchError
		if !errors.As(r.clientErr, &mismatch) {
			t.Fatalf("client error = %v, want *IdentityMismatchError", r.clientErr)
		}
		if diff := cmp.Diff(&spiffe.IdentityMismatchError{Want: mustParse(t, want), Got: mustParse(t, webID)}, mismatch); diff != "" {
			t.Errorf("IdentityMismatchError (-want +got):\n%s", diff)
		}
		if r.serverErr == nil {
			t.Error("server handshake succeeded after the client refused it")
		}
	})

	t.Run("client certificate from another CA", func(t *testing.T) {
		// The client trusts our root too, so it accepts the server; the server
		// must refuse the client's certificate.
		client := certify(t, foreign, cartID, ca.Bundle()...)
		r := handshake(t, server, spiffe.ClientTLS(client, webID))
		if got := spiffe.HandshakeReason(r.serverErr); got != spiffe.ReasonUntrusted {
			t.Errorf("server HandshakeReason = %q (error %v), want %q", got, r.serverErr, spiffe.ReasonUntrusted)
		}
		if r.clientErr == nil {
			t.Error("client saw no error")
		}
	})

	t.Run("plaintext client", func(t *testing.T) {
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
			conn := tls.Server(raw, server)
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
			done <- conn.Handshake()
		}()
		conn, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if _, err := io.WriteString(conn, "GET /books HTTP/1.1\r\nHost: web\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		err = <-done
		if got := spiffe.HandshakeReason(err); got != spiffe.ReasonPlaintext {
			t.Errorf("HandshakeReason(%v) = %q, want %q", err, got, spiffe.ReasonPlaintext)
		}
	})
}

// TestServingCertBootstrap: a workload that holds only the trust bundle can check
// the control plane's serving certificate before it has a certificate of its own.
func TestServingCertBootstrap(t *testing.T) {
	ca := newCA(t, identity.Options{})
	cpID := "spiffe://cluster.local/ns/trellis-system/sa/trellis-control-plane"
	cert, err := ca.ServingCert(mustParse(t, cpID), []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	// The serving certificate also works as control-plane Credentials.
	cpCreds := &spiffe.Credentials{}
	if err := cpCreds.Store(cert.Certificate, cert.PrivateKey.(*ecdsa.PrivateKey), ca.Bundle()); err != nil {
		t.Fatalf("Store serving certificate: %v", err)
	}
	// The certification endpoint cannot ask for a client certificate yet.
	server := &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}}

	workload := &spiffe.Credentials{}
	if err := workload.Store(nil, nil, ca.Bundle()); err != nil {
		t.Fatal(err)
	}
	r := handshake(t, server, spiffe.ClientTLS(workload, cpID))
	if r.serverErr != nil || r.clientErr != nil {
		t.Fatalf("server error %v, client error %v", r.serverErr, r.clientErr)
	}
	if r.clientPeer.String() != cpID {
		t.Errorf("client saw %q, want %q", r.clientPeer, cpID)
	}

	r = handshake(t, server, spiffe.ClientTLS(workload, webID))
	var mismatch *spiffe.IdentityMismatchError
	if !errors.As(r.clientErr, &mismatch) {
		t.Errorf("client expecting %s: error %v, want *IdentityMismatchError", webID, r.clientErr)
	}
}
