package identity_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/spiffe"
)

// t0 is a fixed "now" for tests that check validity periods.
var t0 = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

func fixedNow(t time.Time) func() time.Time { return func() time.Time { return t } }

func newCA(t *testing.T, opts identity.Options) *identity.CA {
	t.Helper()
	ca, err := identity.LoadOrCreate(filepath.Join(t.TempDir(), "ca"), opts)
	if err != nil {
		t.Fatalf("LoadOrCreate: %v", err)
	}
	return ca
}

func mustParse(t *testing.T, s string) spiffe.ID {
	t.Helper()
	id, err := spiffe.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func newCSR(t *testing.T, id spiffe.ID) ([]byte, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := spiffe.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := spiffe.NewCSR(key, id)
	if err != nil {
		t.Fatal(err)
	}
	return csr, key
}

func parseChain(t *testing.T, chain [][]byte) []*x509.Certificate {
	t.Helper()
	var certs []*x509.Certificate
	for _, der := range chain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, c)
	}
	return certs
}

// verify checks a chain against the CA's bundle at time at, the way a peer does.
func verify(t *testing.T, ca *identity.CA, chain [][]byte, at time.Time) error {
	t.Helper()
	certs := parseChain(t, chain)
	roots, inters := x509.NewCertPool(), x509.NewCertPool()
	for _, der := range ca.Bundle() {
		root, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		roots.AddCert(root)
	}
	for _, c := range certs[1:] {
		inters.AddCert(c)
	}
	_, err := certs[0].Verify(x509.VerifyOptions{
		Roots: roots, Intermediates: inters, CurrentTime: at,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
	})
	return err
}

func TestSign(t *testing.T) {
	ca := newCA(t, identity.Options{Now: fixedNow(t0)})
	web := mustParse(t, "spiffe://cluster.local/ns/shop/sa/web")
	tests := []struct {
		name         string
		ttl          time.Duration
		wantNotAfter time.Time
	}{
		{"default TTL", 0, t0.Add(24 * time.Hour)},
		{"one hour", time.Hour, t0.Add(time.Hour)},
		{"longer than the intermediate", 5 * 365 * 24 * time.Hour, ca.NotAfter()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			csr, key := newCSR(t, web)
			chain, err := ca.Sign(csr, web, tt.ttl)
			if err != nil {
				t.Fatalf("Sign: %v", err)
			}
			if len(chain) != 2 {
				t.Fatalf("chain has %d certificates, want leaf and intermediate", len(chain))
			}
			if err := verify(t, ca, chain, t0); err != nil {
				t.Fatalf("leaf does not verify against Bundle: %v", err)
			}
			certs := parseChain(t, chain)
			leaf, inter := certs[0], certs[1]
			if inter.Subject.CommonName != "Trellis Intermediate CA" {
				t.Errorf("chain[1] CN = %q, want the intermediate", inter.Subject.CommonName)
			}
			got, err := spiffe.FromCertificate(leaf)
			if err != nil || got != web {
				t.Errorf("leaf identity = %v, %v; want %s", got, err, web)
			}
			if pub, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(key.Public()) {
				t.Error("leaf key is not the CSR's")
			}
			if leaf.IsCA {
				t.Error("leaf is a CA")
			}
			if leaf.KeyUsage != x509.KeyUsageDigitalSignature {
				t.Errorf("KeyUsage = %v, want DigitalSignature only", leaf.KeyUsage)
			}
			if diff := cmp.Diff([]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, leaf.ExtKeyUsage); diff != "" {
				t.Errorf("ExtKeyUsage (-want +got):\n%s", diff)
			}
			if want := t0.Add(-time.Minute); !leaf.NotBefore.Equal(want) {
				t.Errorf("NotBefore = %s, want %s", leaf.NotBefore, want)
			}
			if !leaf.NotAfter.Equal(tt.wantNotAfter) {
				t.Errorf("NotAfter = %s, want %s", leaf.NotAfter, tt.wantNotAfter)
			}
		})
	}
}

// TestSignIgnoresRequestedIdentity: the CA issues the identity the caller
// authenticated, never the one the request asks for.
func TestSignIgnoresRequestedIdentity(t *testing.T) {
	ca := newCA(t, identity.Options{})
	key, err := spiffe.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	admin := mustParse(t, "spiffe://cluster.local/ns/kube-system/sa/admin")
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		URIs:           []*url.URL{admin.URL()},
		DNSNames:       []string{"kubernetes.default"},
		IPAddresses:    []net.IP{net.IPv4(10, 0, 0, 1)},
		EmailAddresses: []string{"root@example.com"},
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	web := mustParse(t, "spiffe://cluster.local/ns/shop/sa/web")
	chain, err := ca.Sign(csr, web, 0)
	if err != nil {
		t.Fatal(err)
	}
	leaf := parseChain(t, chain)[0]
	var uris []string
	for _, u := range leaf.URIs {
		uris = append(uris, u.String())
	}
	if diff := cmp.Diff([]string{web.String()}, uris); diff != "" {
		t.Errorf("leaf URI SANs (-want +got):\n%s", diff)
	}
	if len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 {
		t.Errorf("leaf carries requested SANs: DNS %v, IP %v, email %v", leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses)
	}
}

func TestSignRejects(t *testing.T) {
	ca := newCA(t, identity.Options{})
	web := mustParse(t, "spiffe://cluster.local/ns/shop/sa/web")
	good, _ := newCSR(t, web)
	tampered := bytes.Clone(good)
	tampered[len(tampered)-1] ^= 0xff
	p521, err := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p521CSR, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, p521)
	if err != nil {
		t.Fatal(err)
	}
	rsaCSR := func(bits int) []byte {
		t.Helper()
		k, err := rsa.GenerateKey(rand.Reader, bits)
		if err != nil {
			t.Fatal(err)
		}
		csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, k)
		if err != nil {
			t.Fatal(err)
		}
		return csr
	}
	tests := []struct {
		name string
		csr  []byte
		id   spiffe.ID
		ttl  time.Duration
	}{
		{"garbage request", []byte("not a CSR"), web, 0},
		{"bad signature", tampered, web, 0},
		{"P-521 key", p521CSR, web, 0},
		{"RSA 1024 key", rsaCSR(1024), web, 0},
		{"RSA 4096 key", rsaCSR(4096), web, 0},
		{"other trust domain", good, mustParse(t, "spiffe://other.domain/ns/shop/sa/web"), 0},
		{"invalid identity", good, spiffe.ID{TrustDomain: "cluster.local", Namespace: "shop"}, 0},
		{"negative TTL", good, web, -time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if chain, err := ca.Sign(tt.csr, tt.id, tt.ttl); err == nil {
				t.Errorf("Sign succeeded with %d certificates, want an error", len(chain))
			}
		})
	}
}

// A sidecar made to use any key type it offers (trellis-proxy --key-type)
// gets a certificate for its key, of that type, which verifies to the root.
func TestSignKeyTypes(t *testing.T) {
	ca := newCA(t, identity.Options{})
	web := mustParse(t, "spiffe://cluster.local/ns/shop/sa/web")
	for _, kt := range spiffe.KeyTypes() {
		t.Run(string(kt), func(t *testing.T) {
			key, err := spiffe.NewKeyOf(kt)
			if err != nil {
				t.Fatal(err)
			}
			csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
			if err != nil {
				t.Fatal(err)
			}
			chain, err := ca.Sign(csr, web, 0)
			if err != nil {
				t.Fatalf("Sign(%s request) = %v", kt, err)
			}
			leaf := parseChain(t, chain)[0]
			if got, _ := spiffe.TypeOfKey(leaf.PublicKey); got != kt {
				t.Errorf("leaf key type = %q, want %q", got, kt)
			}
			if pub, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(key.Public()) {
				t.Errorf("leaf key = %T, not the request's key", leaf.PublicKey)
			}
			var creds spiffe.Credentials
			if err := creds.Store(chain, key, ca.Bundle()); err != nil {
				t.Errorf("the sidecar would not store its %s certificate: %v", kt, err)
			}
		})
	}
}

func TestSignAfterIntermediateExpiry(t *testing.T) {
	now := t0
	ca, err := identity.LoadOrCreate(t.TempDir(), identity.Options{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	web := mustParse(t, "spiffe://cluster.local/ns/shop/sa/web")
	csr, _ := newCSR(t, web)
	now = ca.NotAfter()
	if _, err := ca.Sign(csr, web, 0); err == nil {
		t.Error("Sign after the intermediate expired succeeded")
	}
}

func TestLoadOrCreate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state", "ca")
	first, err := identity.LoadOrCreate(dir, identity.Options{})
	if err != nil {
		t.Fatal(err)
	}
	web := mustParse(t, "spiffe://cluster.local/ns/shop/sa/web")
	csr, _ := newCSR(t, web)
	chain, err := first.Sign(csr, web, 0)
	if err != nil {
		t.Fatal(err)
	}

	second, err := identity.LoadOrCreate(dir, identity.Options{})
	if err != nil {
		t.Fatalf("second LoadOrCreate: %v", err)
	}
	if diff := cmp.Diff(first.Bundle(), second.Bundle()); diff != "" {
		t.Errorf("root changed across restart (-first +second):\n%s", diff)
	}
	if !bytes.Equal(first.BundlePEM(), second.BundlePEM()) {
		t.Error("BundlePEM changed across restart")
	}
	chain2, err := second.Sign(csr, web, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(chain[1], chain2[1]) {
		t.Error("intermediate changed across restart")
	}
	if err := verify(t, second, chain, time.Now()); err != nil {
		t.Errorf("leaf from before the restart does not verify after it: %v", err)
	}

	wantModes := map[string]os.FileMode{
		"":                            0o700 | os.ModeDir,
		identity.RootKeyFile:          0o600,
		identity.IntermediateKeyFile:  0o600,
		identity.RootCertFile:         0o644,
		identity.IntermediateCertFile: 0o644,
	}
	gotModes := map[string]os.FileMode{}
	for name := range wantModes {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		gotModes[name] = fi.Mode()
	}
	if diff := cmp.Diff(wantModes, gotModes); diff != "" {
		t.Errorf("file modes (-want +got):\n%s", diff)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 4 {
		t.Errorf("directory holds %d entries, want the 4 CA files", len(entries))
	}

	root := parseChain(t, first.Bundle())[0]
	if root.Subject.CommonName != "Trellis Root CA" || !root.IsCA {
		t.Errorf("root CN %q, IsCA %v; want Trellis Root CA, true", root.Subject.CommonName, root.IsCA)
	}
	if err := root.CheckSignatureFrom(root); err != nil {
		t.Errorf("root is not self-signed: %v", err)
	}
	if life := root.NotAfter.Sub(root.NotBefore); life < 10*365*24*time.Hour {
		t.Errorf("root lives %s, want 10 years", life)
	}
	block, _ := pem.Decode(first.BundlePEM())
	if block == nil || !bytes.Equal(block.Bytes, root.Raw) {
		t.Error("BundlePEM does not hold the root")
	}
}

func TestLoadOrCreateRenewsIntermediate(t *testing.T) {
	dir := t.TempDir()
	first, err := identity.LoadOrCreate(dir, identity.Options{Now: fixedNow(t0)})
	if err != nil {
		t.Fatal(err)
	}
	web := mustParse(t, "spiffe://cluster.local/ns/shop/sa/web")
	csr, _ := newCSR(t, web)
	old, err := first.Sign(csr, web, 0)
	if err != nil {
		t.Fatal(err)
	}

	later := t0.Add(300 * 24 * time.Hour) // less than a third of a year left
	second, err := identity.LoadOrCreate(dir, identity.Options{Now: fixedNow(later)})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(first.Bundle(), second.Bundle()); diff != "" {
		t.Errorf("root changed (-first +second):\n%s", diff)
	}
	if !second.NotAfter().After(first.NotAfter()) {
		t.Errorf("intermediate expiry %s, want later than %s", second.NotAfter(), first.NotAfter())
	}
	fresh, err := second.Sign(csr, web, 0)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(old[1], fresh[1]) {
		t.Error("intermediate was not replaced")
	}
	if err := verify(t, second, old, t0.Add(time.Hour)); err != nil {
		t.Errorf("leaf from the old intermediate no longer verifies: %v", err)
	}
	if err := verify(t, second, fresh, later); err != nil {
		t.Errorf("leaf from the new intermediate does not verify: %v", err)
	}
}

func TestLoadOrCreateRefuses(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, dir string)
		opts  identity.Options
	}{
		{"other trust domain", func(t *testing.T, dir string) {}, identity.Options{TrustDomain: "other.domain"}},
		{"invalid trust domain", nil, identity.Options{TrustDomain: "Cluster.Local:80"}},
		{"negative leaf TTL", nil, identity.Options{LeafTTL: -time.Hour}},
		{"root key missing", func(t *testing.T, dir string) {
			remove(t, dir, identity.RootKeyFile)
		}, identity.Options{}},
		{"intermediate without root", func(t *testing.T, dir string) {
			remove(t, dir, identity.RootKeyFile)
			remove(t, dir, identity.RootCertFile)
		}, identity.Options{}},
		{"corrupt root", func(t *testing.T, dir string) {
			write(t, dir, identity.RootCertFile, []byte("junk"))
		}, identity.Options{}},
		{"keys swapped", func(t *testing.T, dir string) {
			rk := read(t, dir, identity.RootKeyFile)
			write(t, dir, identity.RootKeyFile, read(t, dir, identity.IntermediateKeyFile))
			write(t, dir, identity.IntermediateKeyFile, rk)
		}, identity.Options{}},
		{"intermediate from another root", func(t *testing.T, dir string) {
			otherDir := t.TempDir()
			if _, err := identity.LoadOrCreate(otherDir, identity.Options{}); err != nil {
				t.Fatal(err)
			}
			write(t, dir, identity.IntermediateCertFile, read(t, otherDir, identity.IntermediateCertFile))
			write(t, dir, identity.IntermediateKeyFile, read(t, otherDir, identity.IntermediateKeyFile))
		}, identity.Options{}},
		{"root expired", func(t *testing.T, dir string) {}, identity.Options{Now: fixedNow(time.Now().Add(11 * 365 * 24 * time.Hour))}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if tt.setup != nil {
				if _, err := identity.LoadOrCreate(dir, identity.Options{}); err != nil {
					t.Fatal(err)
				}
				tt.setup(t, dir)
			}
			if _, err := identity.LoadOrCreate(dir, tt.opts); err == nil {
				t.Error("LoadOrCreate succeeded, want an error")
			}
		})
	}
}

// TestLoadOrCreateOwnRoot: an operator may place their own root and key; the CA
// makes an intermediate under it.
func TestLoadOrCreateOwnRoot(t *testing.T) {
	src, dir := t.TempDir(), t.TempDir()
	own, err := identity.LoadOrCreate(src, identity.Options{})
	if err != nil {
		t.Fatal(err)
	}
	write(t, dir, identity.RootCertFile, read(t, src, identity.RootCertFile))
	write(t, dir, identity.RootKeyFile, read(t, src, identity.RootKeyFile))
	ca, err := identity.LoadOrCreate(dir, identity.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(own.Bundle(), ca.Bundle()); diff != "" {
		t.Errorf("bundle is not the placed root (-want +got):\n%s", diff)
	}
	web := mustParse(t, "spiffe://cluster.local/ns/shop/sa/web")
	csr, _ := newCSR(t, web)
	chain, err := ca.Sign(csr, web, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := verify(t, own, chain, time.Now()); err != nil {
		t.Errorf("leaf does not verify against the placed root: %v", err)
	}
}

func TestServingCert(t *testing.T) {
	ca := newCA(t, identity.Options{})
	id := mustParse(t, "spiffe://cluster.local/ns/trellis-system/sa/trellis-control-plane")
	dns := []string{"trellis-control-plane.trellis-system.svc", "localhost"}
	ips := []net.IP{net.IPv4(127, 0, 0, 1).To4()}
	cert, err := ca.ServingCert(id, dns, ips)
	if err != nil {
		t.Fatal(err)
	}
	if err := verify(t, ca, cert.Certificate, time.Now()); err != nil {
		t.Fatalf("serving certificate does not verify: %v", err)
	}
	leaf := cert.Leaf
	if got, err := spiffe.FromCertificate(leaf); err != nil || got != id {
		t.Errorf("identity = %v, %v; want %s", got, err, id)
	}
	if diff := cmp.Diff(dns, leaf.DNSNames); diff != "" {
		t.Errorf("DNS SANs (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(ips, leaf.IPAddresses); diff != "" {
		t.Errorf("IP SANs (-want +got):\n%s", diff)
	}
	if err := leaf.VerifyHostname("127.0.0.1"); err != nil {
		t.Errorf("VerifyHostname: %v", err)
	}
	key, ok := cert.PrivateKey.(*ecdsa.PrivateKey)
	if !ok || !key.PublicKey.Equal(leaf.PublicKey) {
		t.Error("private key does not match the leaf")
	}
}

func remove(t *testing.T, dir, name string) {
	t.Helper()
	if err := os.Remove(filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
}

func read(t *testing.T, dir, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func write(t *testing.T, dir, name string, b []byte) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
		t.Fatal(err)
	}
}
