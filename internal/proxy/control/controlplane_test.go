package control

import (
	"context"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	proxyv1 "github.com/trellis-mesh/trellis/api/proxy/v1"
	"github.com/trellis-mesh/trellis/internal/controlplane"
	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/internal/source/local"
	"github.com/trellis-mesh/trellis/internal/spiffe"
)

// startControlPlane runs the real control plane on loopback and returns its
// gRPC address, the roots that verify it and an admin client.
func startControlPlane(t *testing.T) (string, *x509.CertPool, *controlplane.Client) {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan controlplane.Info, 1)
	done := make(chan error, 1)
	go func() {
		done <- controlplane.Run(ctx, controlplane.Options{
			StateDir: dir, GRPCAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", Grace: time.Millisecond,
			Ready: func(i controlplane.Info) { ready <- i },
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("control plane: %v", err)
		}
	})
	var info controlplane.Info
	select {
	case info = <-ready:
	case err := <-done:
		t.Fatalf("control plane: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("control plane not listening after 10s")
	}
	pem, err := os.ReadFile(filepath.Join(dir, controlplane.CAFile))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		t.Fatal("ca.pem holds no certificate")
	}
	c, err := controlplane.Dial(dir)
	if err != nil {
		t.Fatal(err)
	}
	return info.GRPC, roots, c
}

func TestCertifyAndWatchInbound(t *testing.T) {
	addr, roots, cp := startControlPlane(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	reg, err := cp.Register(ctx, local.Registration{
		Name: "bookstore-v1", Namespace: "bookstore", Account: "bookstore", Address: "127.0.0.1:1",
		Services: []model.ServiceMembership{{Service: "bookstore", ServicePort: 14001, Protocol: "http"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	creds := &spiffe.Credentials{}
	c := New(Config{Address: addr, Roots: roots, Credential: reg.Token, WorkloadID: reg.ID, Credentials: creds})
	if err := c.CertifyUntilDone(ctx); err != nil {
		t.Fatalf("CertifyUntilDone: %v", err)
	}
	if got, want := creds.ID().String(), "spiffe://cluster.local/ns/bookstore/sa/bookstore"; got != want {
		t.Errorf("certified identity = %q, want %q", got, want)
	}

	wctx, stop := context.WithCancel(ctx)
	got := make(chan *proxyv1.InboundConfig, 1)
	var wg sync.WaitGroup
	wg.Go(func() {
		c.WatchInbound(wctx, func(m *proxyv1.InboundConfig) error {
			select {
			case got <- m:
			default:
			}
			return nil
		})
	})
	select {
	case m := <-got:
		if m.GetIdentity() != "spiffe://cluster.local/ns/bookstore/sa/bookstore" || m.GetWorkload() != "bookstore-v1" {
			t.Errorf("inbound config for %s (%s), want bookstore's", m.GetIdentity(), m.GetWorkload())
		}
	case <-ctx.Done():
		t.Fatal("no inbound config")
	}
	stop()
	wg.Wait() // WatchInbound returns once its context ends
}

func TestCertifyRefusedCredentialIsPermanent(t *testing.T) {
	addr, roots, _ := startControlPlane(t)
	c := New(Config{Address: addr, Roots: roots, Credential: "not-a-join-token", WorkloadID: "bookstore/x", Credentials: &spiffe.Credentials{}})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	err := c.CertifyUntilDone(ctx)
	if err == nil || !strings.Contains(err.Error(), "credential refused") {
		t.Fatalf("CertifyUntilDone = %v, want the control plane's refusal of the credential", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("CertifyUntilDone took %v: a refused credential must not be retried", d)
	}
}

// A credential in a file is read at each certification: a rotated token is
// used at the next renewal, and a missing file is an error naming it.
func TestCertifyCredentialFile(t *testing.T) {
	addr, roots, cp := startControlPlane(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	reg, err := cp.Register(ctx, local.Registration{Name: "bookbuyer", Namespace: "bookbuyer", Account: "bookbuyer", Address: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "token")
	c := New(Config{Address: addr, Roots: roots, CredentialFile: file, WorkloadID: reg.ID, Credentials: &spiffe.Credentials{}})
	if err := c.Certify(ctx); err == nil || !strings.Contains(err.Error(), file) {
		t.Errorf("Certify without the file = %v, want an error naming %s", err, file)
	}
	if err := os.WriteFile(file, []byte("wrong-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := c.Certify(ctx); err == nil {
		t.Error("Certify with a wrong token in the file succeeded")
	}
	if err := os.WriteFile(file, []byte(reg.Token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := c.Certify(ctx); err != nil {
		t.Errorf("Certify after the token was written: %v", err)
	}
}
