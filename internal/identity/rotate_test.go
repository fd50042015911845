package identity_test

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/identity"
)

var wl = "spiffe://cluster.local/ns/bookstore/sa/bookstore"

// chainsTo reports whether chain verifies against exactly the roots given.
func chainsTo(t *testing.T, chain [][]byte, roots ...[]byte) bool {
	t.Helper()
	pool, inters := x509.NewCertPool(), x509.NewCertPool()
	for _, der := range roots {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		pool.AddCert(c)
	}
	certs := parseChain(t, chain)
	for _, c := range certs[1:] {
		inters.AddCert(c)
	}
	_, err := certs[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inters, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err == nil
}

func sign(t *testing.T, ca *identity.CA) [][]byte {
	t.Helper()
	csr, _ := newCSR(t, mustParse(t, wl))
	chain, err := ca.Sign(csr, mustParse(t, wl), time.Hour)
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	return chain
}

// TestRotationPhases walks a rotation and checks, at each step, the bundle,
// which root the new leaves chain to, and that the trust version changes.
func TestRotationPhases(t *testing.T) {
	ca := newCA(t, identity.Options{})
	oldRoot := ca.Bundle()[0]
	if got := ca.Status().Phase; got != identity.PhaseNone {
		t.Fatalf("phase of a new CA = %q, want none", got)
	}
	versions := map[string]string{"none": ca.TrustVersion()}

	if err := ca.Prepare(); err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	b := ca.Bundle()
	if len(b) != 2 || !x509Equal(b[0], oldRoot) {
		t.Fatalf("prepared bundle has %d roots (first is old: %v), want the old root then the new", len(b), len(b) > 0 && x509Equal(b[0], oldRoot))
	}
	newRoot := b[1]
	if c := sign(t, ca); !chainsTo(t, c, oldRoot) || chainsTo(t, c, newRoot) {
		t.Error("prepared: leaf does not chain to the old root only; the old intermediate must still sign")
	}
	versions["prepared"] = ca.TrustVersion()

	if err := ca.Activate(); err != nil {
		t.Fatalf("Activate: %v", err)
	}
	if got := len(ca.Bundle()); got != 2 {
		t.Errorf("activated bundle has %d roots, want 2", got)
	}
	if c := sign(t, ca); !chainsTo(t, c, newRoot) || chainsTo(t, c, oldRoot) {
		t.Error("activated: leaf does not chain to the new root only")
	}
	versions["activated"] = ca.TrustVersion()

	if err := ca.Finish(); err != nil {
		t.Fatalf("Finish: %v", err)
	}
	b = ca.Bundle()
	if len(b) != 1 || !x509Equal(b[0], newRoot) {
		t.Errorf("finished bundle has %d roots, want the new root only", len(b))
	}
	if c := sign(t, ca); !chainsTo(t, c, newRoot) {
		t.Error("finished: leaf does not chain to the new root")
	}
	versions["finished"] = ca.TrustVersion()
	if got := ca.Status().Phase; got != identity.PhaseFinished {
		t.Errorf("phase = %q, want finished", got)
	}
	seen := map[string]string{}
	for phase, v := range versions {
		if other, dup := seen[v]; dup {
			t.Errorf("trust version %s is the same in phases %s and %s; want one per phase", v, phase, other)
		}
		seen[v] = phase
	}
	// Another rotation may follow a finished one.
	if err := ca.Prepare(); err != nil {
		t.Errorf("Prepare after a finished rotation: %v", err)
	}
}

func x509Equal(a, b []byte) bool { return string(a) == string(b) }

func TestRotationRefusesOutOfOrder(t *testing.T) {
	type step struct {
		name string
		do   func(*identity.CA) error
	}
	prepare := step{"prepare", (*identity.CA).Prepare}
	activate := step{"activate", (*identity.CA).Activate}
	finish := step{"finish", (*identity.CA).Finish}
	for _, tc := range []struct {
		name   string
		before []step
		bad    step
		phase  identity.Phase
	}{
		{"activate before prepare", nil, activate, identity.PhaseNone},
		{"finish before prepare", nil, finish, identity.PhaseNone},
		{"finish before activate", []step{prepare}, finish, identity.PhasePrepared},
		{"prepare twice", []step{prepare}, prepare, identity.PhasePrepared},
		{"prepare while activated", []step{prepare, activate}, prepare, identity.PhaseActivated},
		{"activate twice", []step{prepare, activate}, activate, identity.PhaseActivated},
		{"activate after finish", []step{prepare, activate, finish}, activate, identity.PhaseFinished},
		{"finish twice", []step{prepare, activate, finish}, finish, identity.PhaseFinished},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ca := newCA(t, identity.Options{})
			for _, s := range tc.before {
				if err := s.do(ca); err != nil {
					t.Fatalf("%s: %v", s.name, err)
				}
			}
			bundle, version := ca.Bundle(), ca.TrustVersion()
			err := tc.bad.do(ca)
			var se *identity.StepError
			if !errors.As(err, &se) {
				t.Fatalf("%s: error %v, want a *StepError", tc.bad.name, err)
			}
			if se.Step != tc.bad.name || se.Phase != tc.phase {
				t.Errorf("StepError = {%s, %s}, want {%s, %s}", se.Step, se.Phase, tc.bad.name, tc.phase)
			}
			if got := ca.Status().Phase; got != tc.phase {
				t.Errorf("phase after the refusal = %s, want %s unchanged", got, tc.phase)
			}
			if got := ca.TrustVersion(); got != version || len(ca.Bundle()) != len(bundle) {
				t.Errorf("a refused step changed the CA: version %s → %s", version, got)
			}
		})
	}
}

// TestRotationSurvivesReload reloads the CA from its directory after each step:
// the phase, the bundle and the signing intermediate come back as they were.
func TestRotationSurvivesReload(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	ca, err := identity.LoadOrCreate(dir, identity.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		name  string
		do    func(*identity.CA) error
		phase identity.Phase
		roots int
	}{
		{"prepare", (*identity.CA).Prepare, identity.PhasePrepared, 2},
		{"activate", (*identity.CA).Activate, identity.PhaseActivated, 2},
		{"finish", (*identity.CA).Finish, identity.PhaseFinished, 1},
	} {
		if err := step.do(ca); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		want := ca.Status()
		ca, err = identity.LoadOrCreate(dir, identity.Options{})
		if err != nil {
			t.Fatalf("reload after %s: %v", step.name, err)
		}
		got := ca.Status()
		if got.Phase != step.phase || len(got.Roots) != step.roots {
			t.Errorf("after %s and reload: phase %s with %d roots, want %s with %d", step.name, got.Phase, len(got.Roots), step.phase, step.roots)
		}
		if got.TrustVersion != want.TrustVersion || got.Signing != want.Signing {
			t.Errorf("after %s and reload: version %s signing %.16s, want version %s signing %.16s", step.name, got.TrustVersion, got.Signing, want.TrustVersion, want.Signing)
		}
	}
	fi, err := os.Stat(filepath.Join(dir, identity.RotationFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s mode = %v, want 0600 (it holds keys)", identity.RotationFile, fi.Mode().Perm())
	}
}

// TestRotationCompletesInterruptedFinish simulates a stop after Finish wrote
// its decision (the rotation file says finished, install pending) but before
// it replaced the root files: the next load completes the install.
func TestRotationCompletesInterruptedFinish(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	ca, err := identity.LoadOrCreate(dir, identity.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.Prepare(); err != nil {
		t.Fatal(err)
	}
	if err := ca.Activate(); err != nil {
		t.Fatal(err)
	}
	newRoot := ca.Bundle()[1]
	path := filepath.Join(dir, identity.RotationFile)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var rf map[string]any
	if err := json.Unmarshal(b, &rf); err != nil {
		t.Fatal(err)
	}
	rf["phase"], rf["install_pending"] = "finished", true
	if b, err = json.Marshal(rf); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}

	ca, err = identity.LoadOrCreate(dir, identity.Options{})
	if err != nil {
		t.Fatalf("reload: %v", err)
	}
	got := ca.Bundle()
	if st := ca.Status(); st.Phase != identity.PhaseFinished || len(got) != 1 || !x509Equal(got[0], newRoot) {
		t.Errorf("after the interrupted finish: phase %s, %d roots (new: %v); want finished with the new root only", st.Phase, len(got), len(got) == 1 && x509Equal(got[0], newRoot))
	}
	if c := sign(t, ca); !chainsTo(t, c, newRoot) {
		t.Error("after the interrupted finish: leaf does not chain to the new root")
	}
	// A third load sees a plain finished rotation.
	if ca, err = identity.LoadOrCreate(dir, identity.Options{}); err != nil || ca.Status().Phase != identity.PhaseFinished || !x509Equal(ca.Bundle()[0], newRoot) {
		t.Errorf("load after the completed install: err %v; want the finished rotation with the new root", err)
	}
}

func TestRotationFileRefused(t *testing.T) {
	for name, body := range map[string]string{
		"not json":        "{",
		"unknown phase":   `{"phase":"halfway"}`,
		"prepared no new": `{"phase":"prepared"}`,
	} {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "ca")
			if _, err := identity.LoadOrCreate(dir, identity.Options{}); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, identity.RotationFile), []byte(body), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := identity.LoadOrCreate(dir, identity.Options{})
			if err == nil || !strings.Contains(err.Error(), identity.RotationFile) {
				t.Errorf("LoadOrCreate with rotation file %s: error %v, want one naming %s", body, err, identity.RotationFile)
			}
		})
	}
}

// TestRotationConcurrentSigning signs from many goroutines while the rotation
// steps run; every leaf must verify against the bundle of its moment's phase
// (run with -race).
func TestRotationConcurrentSigning(t *testing.T) {
	ca := newCA(t, identity.Options{})
	oldRoot := ca.Bundle()[0]
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var chains [][][]byte
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				csr, _ := newCSR(t, mustParse(t, wl))
				c, err := ca.Sign(csr, mustParse(t, wl), time.Hour)
				if err != nil {
					t.Error(err)
					return
				}
				_ = ca.Bundle()
				mu.Lock()
				chains = append(chains, c)
				mu.Unlock()
			}
		}()
	}
	var newRoot []byte
	for i, step := range []func() error{ca.Prepare, ca.Activate, ca.Finish} {
		time.Sleep(10 * time.Millisecond)
		if err := step(); err != nil {
			close(stop)
			wg.Wait()
			t.Fatal(err)
		}
		if i == 0 {
			newRoot = ca.Bundle()[1]
		}
	}
	time.Sleep(10 * time.Millisecond)
	close(stop)
	wg.Wait()
	onlyNew := 0
	for i, c := range chains {
		if !chainsTo(t, c, oldRoot, newRoot) {
			t.Fatalf("leaf %d of %d verifies against neither root", i, len(chains))
		}
		if !chainsTo(t, c, oldRoot) {
			onlyNew++
		}
	}
	if onlyNew == 0 || onlyNew == len(chains) {
		t.Errorf("%d of %d leaves chain to the new root only; want some signed before activation and some after", onlyNew, len(chains))
	}
}
