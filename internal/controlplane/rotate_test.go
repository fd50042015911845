package controlplane

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/metrics"
	"github.com/trellis-mesh/trellis/internal/serve"
	"github.com/trellis-mesh/trellis/internal/source/local"
	"github.com/trellis-mesh/trellis/internal/spiffe"
)

var cpTestID = spiffe.ID{TrustDomain: "cluster.local", Namespace: "trellis-system", Account: "cp"}

func newTestCA(t *testing.T) *identity.CA {
	t.Helper()
	ca, err := identity.LoadOrCreate(filepath.Join(t.TempDir(), "ca"), identity.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// verifies reports whether chain verifies against pool.
func verifies(t *testing.T, chain [][]byte, pool *x509.CertPool) bool {
	t.Helper()
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		t.Fatal(err)
	}
	inters := x509.NewCertPool()
	for _, der := range chain[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		inters.AddCert(c)
	}
	_, err = leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inters, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err == nil
}

func poolOf(t *testing.T, ders ...[]byte) *x509.CertPool {
	t.Helper()
	p := x509.NewCertPool()
	for _, der := range ders {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		p.AddCert(c)
	}
	return p
}

// TestServingCertFollowsRotation: once the new intermediate signs, the control
// plane's own certificate comes from it at the next handshake, so sidecars that
// trust only the new root keep verifying the control plane after finish.
func TestServingCertFollowsRotation(t *testing.T) {
	ca := newTestCA(t)
	s := &servingCert{issue: func() (tls.Certificate, error) { return ca.ServingCert(cpTestID, []string{"localhost"}, nil) }, version: ca.TrustVersion}
	now := time.Now()
	first, err := s.get(now)
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := s.get(now); again != first {
		t.Error("the serving certificate changed with nothing rotated")
	}
	if err := ca.Prepare(); err != nil {
		t.Fatal(err)
	}
	newRoot := ca.Bundle()[1]
	if err := ca.Activate(); err != nil {
		t.Fatal(err)
	}
	got, err := s.get(now)
	if err != nil {
		t.Fatal(err)
	}
	if got == first || !verifies(t, got.Certificate, poolOf(t, newRoot)) {
		t.Error("after Activate: the serving certificate does not chain to the new root")
	}
}

// TestTrustedRootsFollowRotation: client certificates from the new
// intermediate verify once the rotation is prepared, and those of the old one
// stop verifying once it finishes.
func TestTrustedRootsFollowRotation(t *testing.T) {
	ca := newTestCA(t)
	roots := &trustedRoots{ca: ca}
	oldLeaf, err := ca.ServingCert(cpTestID, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.Prepare(); err != nil {
		t.Fatal(err)
	}
	if err := ca.Activate(); err != nil {
		t.Fatal(err)
	}
	newLeaf, err := ca.ServingCert(cpTestID, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := roots.get()
	if err != nil {
		t.Fatal(err)
	}
	if !verifies(t, oldLeaf.Certificate, pool) || !verifies(t, newLeaf.Certificate, pool) {
		t.Error("activated: leaves of both intermediates must verify")
	}
	if err := ca.Finish(); err != nil {
		t.Fatal(err)
	}
	if pool, err = roots.get(); err != nil {
		t.Fatal(err)
	}
	if verifies(t, oldLeaf.Certificate, pool) || !verifies(t, newLeaf.Certificate, pool) {
		t.Error("finished: only leaves of the new intermediate may verify")
	}
}

// TestRotationAPI takes the steps through the admin API as the CLI does: out of
// order they are refused with 409, and each one rewrites ca.pem and shows in
// GET /v1/ca, with what each workload's sidecar holds.
func TestRotationAPI(t *testing.T) {
	state := t.TempDir()
	store, err := local.Open(local.Options{Dir: state})
	if err != nil {
		t.Fatal(err)
	}
	wid, _, err := store.Register(local.Registration{Name: "web", Namespace: "shop", Account: "web", Address: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	ca := newTestCA(t)
	trust := newTrustTracker()
	srv := serve.New(serve.Config{Authenticator: store, Signer: ca, Trust: trust})
	srv.Update(store.Snapshot())
	caFile := filepath.Join(state, CAFile)
	rot := &rotator{ca: ca, srv: srv, store: store, trust: trust, caFile: caFile, log: slog.New(slog.DiscardHandler)}
	ts := httptest.NewServer(newAdmin(store, srv, metrics.NewHistogram(nil), "secret", slog.New(slog.DiscardHandler), rot))
	defer ts.Close()
	c := &Client{Info: Info{Admin: strings.TrimPrefix(ts.URL, "http://")}, token: "secret", hc: ts.Client()}
	ctx := context.Background()

	refused := func(step, want string) {
		t.Helper()
		_, err := c.RotateStep(ctx, step)
		var ae *APIError
		if !errors.As(err, &ae) || ae.Status != http.StatusConflict || !strings.Contains(ae.Error(), want) {
			t.Errorf("%s out of order: error %v, want 409 saying %q", step, err, want)
		}
	}
	pemCount := func() int {
		t.Helper()
		b, err := os.ReadFile(caFile)
		if err != nil {
			t.Fatal(err)
		}
		return strings.Count(string(b), "BEGIN CERTIFICATE")
	}

	refused(StepActivate, "prepare one first")
	refused(StepFinish, "prepare one first")
	st, err := c.RotateStep(ctx, StepPrepare)
	if err != nil {
		t.Fatalf("prepare: %v", err)
	}
	if st.Phase != identity.PhasePrepared || len(st.Roots) != 2 || pemCount() != 2 {
		t.Errorf("after prepare: phase %s, %d roots, ca.pem %d certificates; want prepared, 2, 2", st.Phase, len(st.Roots), pemCount())
	}
	refused(StepPrepare, "already in progress")
	refused(StepFinish, "activate it first")

	if len(st.Sidecars) != 1 || st.Sidecars[0].Workload != wid || st.Sidecars[0].Current {
		t.Fatalf("sidecars = %+v, want %s, not current (it reported nothing)", st.Sidecars, wid)
	}
	// The sidecar certifies with the prepared bundle.
	csrKey, err := spiffe.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := spiffe.NewCSR(csrKey, spiffe.ID{})
	if err != nil {
		t.Fatal(err)
	}
	chain, err := ca.Sign(csr, spiffe.ID{TrustDomain: "cluster.local", Namespace: "shop", Account: "web"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	trust.Holds(wid, spiffe.TrustVersion(ca.Bundle(), chain[1]), chain[1])
	if st, err = c.CA(ctx); err != nil {
		t.Fatal(err)
	}
	if s := st.Sidecars[0]; !s.Current || s.IssuerRole != "old" {
		t.Errorf("after the sidecar certified: current %v, issuer role %q; want current, old", s.Current, s.IssuerRole)
	}

	if _, err := c.RotateStep(ctx, StepActivate); err != nil {
		t.Fatalf("activate: %v", err)
	}
	refused(StepActivate, "already activated")
	if st, err = c.CA(ctx); err != nil {
		t.Fatal(err)
	}
	if st.Sidecars[0].Current {
		t.Error("after activate: the sidecar counts as current with a leaf of the old intermediate")
	}
	if st, err = c.RotateStep(ctx, StepFinish); err != nil {
		t.Fatalf("finish: %v", err)
	}
	b, _ := os.ReadFile(caFile)
	block, _ := pem.Decode(b)
	if st.Phase != identity.PhaseFinished || pemCount() != 1 || block == nil || identity.Fingerprint(mustParseDER(t, block.Bytes)) != st.Roots[0].Fingerprint {
		t.Errorf("after finish: phase %s, ca.pem %d certificates; want finished with the new root only", st.Phase, pemCount())
	}
	if _, err := c.RotateStep(ctx, "restart"); err == nil {
		t.Error("an unknown step was accepted")
	}
}

func mustParseDER(t *testing.T, der []byte) *x509.Certificate {
	t.Helper()
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
