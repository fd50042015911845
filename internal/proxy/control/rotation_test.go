package control

import (
	"context"
	"crypto/x509"
	"sync"
	"testing"
	"time"

	proxyv1 "github.com/trellis-mesh/trellis/api/proxy/v1"
	"github.com/trellis-mesh/trellis/internal/controlplane"
	"github.com/trellis-mesh/trellis/internal/source/local"
	"github.com/trellis-mesh/trellis/internal/spiffe"
)

// TestRotationRecertifies: at each step of a root rotation the control plane
// announces a new trust version on the inbound stream and the client certifies
// again soon, long before renewal is due; after the old root is dropped it
// still reaches the control plane, although the roots it was started with (the
// old ca.pem) no longer verify it.
func TestRotationRecertifies(t *testing.T) {
	addr, roots, cp := startControlPlane(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	reg, err := cp.Register(ctx, local.Registration{Name: "web", Namespace: "shop", Account: "web", Address: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	creds := &spiffe.Credentials{}
	c := New(Config{Address: addr, Roots: roots, Credential: reg.Token, WorkloadID: reg.ID, Credentials: creds, RecertifyJitter: 50 * time.Millisecond})
	if err := c.CertifyUntilDone(ctx); err != nil {
		t.Fatal(err)
	}
	first, _ := creds.Load()
	bg, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { c.Renew(bg) })
	wg.Go(func() { c.WatchInbound(bg, func(*proxyv1.InboundConfig) error { return nil }) })
	stopped := false
	stopBG := func() {
		if !stopped {
			stop()
			wg.Wait()
			stopped = true
		}
	}
	defer stopBG()

	for _, step := range []string{controlplane.StepPrepare, controlplane.StepActivate, controlplane.StepFinish} {
		st, err := cp.RotateStep(ctx, step)
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for creds.TrustVersion() != st.TrustVersion {
			if time.Now().After(deadline) {
				t.Fatalf("after %s: the client holds trust version %s, want %s within 10s", step, creds.TrustVersion(), st.TrustVersion)
			}
			time.Sleep(20 * time.Millisecond)
		}
		// The control plane learnt it too.
		deadline = time.Now().Add(5 * time.Second)
		for {
			cs, err := cp.CA(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(cs.Sidecars) == 1 && cs.Sidecars[0].Current {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("after %s: the control plane does not see the client as current: %+v", step, cs.Sidecars)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	m, _ := creds.Load()
	if len(m.Bundle) != 1 {
		t.Fatalf("bundle after finish has %d roots, want the new one only", len(m.Bundle))
	}
	newRoot, err := x509.ParseCertificate(m.Bundle[0])
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(m.Chain[0])
	inter, _ := x509.ParseCertificate(m.Chain[1])
	verify := func(root *x509.Certificate) error {
		p, i := x509.NewCertPool(), x509.NewCertPool()
		p.AddCert(root)
		i.AddCert(inter)
		_, err := leaf.Verify(x509.VerifyOptions{Roots: p, Intermediates: i, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
		return err
	}
	if err := verify(newRoot); err != nil {
		t.Errorf("leaf after finish does not chain to the new root: %v", err)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: poolWith(inter), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err == nil {
		t.Error("leaf after finish still chains to the old root")
	}
	if string(m.Chain[0]) == string(first.Chain[0]) {
		t.Error("the certificate was not replaced during the rotation")
	}
	// A new connection: the control plane's certificate now chains to the new
	// root only, which the client knows from its bundle.
	stopBG()
	if err := c.Certify(ctx); err != nil {
		t.Errorf("Certify after finish, with --ca-file roots of the old root: %v", err)
	}
}

func poolWith(c *x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c)
	return p
}
