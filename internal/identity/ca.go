// Package identity owns the control plane's built-in certificate authority: a root
// and an issuing intermediate kept on disk, the signing of workload certificates
// for identities the caller has already authenticated, the control plane's own
// serving certificate, and the join tokens local workloads prove themselves with.
//
// Only the control plane imports it; the proxy never does (it uses
// internal/spiffe).
package identity

import (
	"crypto/ecdsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/internal/spiffe"
)

// Files LoadOrCreate keeps in its directory. Keys are PKCS #8, certificates
// X.509, all PEM.
const (
	RootCertFile         = "root.crt"
	RootKeyFile          = "root.key"
	IntermediateCertFile = "intermediate.crt"
	IntermediateKeyFile  = "intermediate.key"
)

const (
	rootName         = "Trellis Root CA"
	intermediateName = "Trellis Intermediate CA"
	rootTTL          = 10 * 365 * 24 * time.Hour
	intermediateTTL  = 365 * 24 * time.Hour
	// caBackdate moves a CA certificate's NotBefore back to absorb clock skew
	// between the control plane and workloads.
	caBackdate = time.Hour
	// leafBackdate does the same for leaves.
	leafBackdate = time.Minute
	// DefaultLeafTTL is the lifetime of a workload certificate when none is asked for.
	DefaultLeafTTL = 24 * time.Hour
)

// Options configure LoadOrCreate.
type Options struct {
	// TrustDomain the CA issues identities in; default "cluster.local". A
	// directory created for one trust domain refuses to load for another.
	TrustDomain string
	// LeafTTL is the lifetime of workload and serving certificates when Sign is
	// given no TTL; default 24h.
	LeafTTL time.Duration
	// Now returns the current time; default time.Now. For tests.
	Now func() time.Time
}

// CA is the built-in certificate authority: a self-signed root and an
// intermediate that signs every leaf. It changes only through the steps of a
// root rotation (Prepare, Activate, Finish; see rotate.go) and is safe for
// concurrent use.
type CA struct {
	td      string
	leafTTL time.Duration
	now     func() time.Time
	dir     string

	mu       sync.RWMutex
	root     *x509.Certificate // the root in root.crt: the old one during a rotation
	inter    *x509.Certificate
	interKey *ecdsa.PrivateKey
	phase    Phase
	next     *generation // the new root and intermediate while prepared or activated
	version  string      // TrustVersion, computed at each change
}

// LoadOrCreate loads the CA kept in dir, or creates one there if dir holds none.
// It creates dir with mode 0700, key files with mode 0600 and certificates with
// mode 0644. A root found without an intermediate gets a new intermediate, so an
// operator may place their own root and key there. An intermediate with less than
// a third of its life left is replaced at load; certificates it signed stay valid
// because they chain to the same root.
func LoadOrCreate(dir string, opts Options) (*CA, error) {
	ca := &CA{td: opts.TrustDomain, leafTTL: opts.LeafTTL, now: opts.Now, dir: dir}
	if ca.td == "" {
		ca.td = model.DefaultTrustDomain
	}
	if err := spiffe.ValidateTrustDomain(ca.td); err != nil {
		return nil, fmt.Errorf("certificate authority: %w", err)
	}
	if ca.leafTTL == 0 {
		ca.leafTTL = DefaultLeafTTL
	}
	if ca.leafTTL < 0 {
		return nil, fmt.Errorf("certificate authority: leaf TTL %s is negative", ca.leafTTL)
	}
	if ca.now == nil {
		ca.now = time.Now
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("certificate authority: %w", err)
	}

	// A rotation that was finishing when the process stopped installs the new
	// pair first, so that what follows loads it as the current root.
	rot, err := ca.loadRotation()
	if err != nil {
		return nil, err
	}

	now := ca.now()
	root, rootKey, err := loadPair(dir, RootCertFile, RootKeyFile)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if exists(dir, IntermediateCertFile) || exists(dir, IntermediateKeyFile) {
			return nil, fmt.Errorf("certificate authority in %s: intermediate files exist without %s and %s; restore the root or empty the directory", dir, RootCertFile, RootKeyFile)
		}
		root, rootKey, err = ca.createRoot(dir, now)
		if err != nil {
			return nil, err
		}
	case err != nil:
		return nil, err
	}
	if err := ca.checkRoot(dir, root, now); err != nil {
		return nil, err
	}
	ca.root = root

	inter, interKey, err := loadPair(dir, IntermediateCertFile, IntermediateKeyFile)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		inter, interKey, err = ca.createIntermediate(dir, rootKey, now)
	case err != nil:
	default:
		if err = ca.checkIntermediate(dir, inter); err == nil && renewDue(inter, now) {
			inter, interKey, err = ca.createIntermediate(dir, rootKey, now)
		}
	}
	if err != nil {
		return nil, err
	}
	ca.inter, ca.interKey = inter, interKey
	if err := ca.resumeRotation(rot); err != nil {
		return nil, err
	}
	ca.setVersionLocked()
	return ca, nil
}

// TrustDomain returns the trust domain the CA issues identities in.
func (ca *CA) TrustDomain() string { return ca.td }

// NotAfter returns when the intermediate that signs now expires; no leaf
// outlives it.
func (ca *CA) NotAfter() time.Time {
	inter, _ := ca.signer()
	return inter.NotAfter
}

func (ca *CA) createRoot(dir string, now time.Time) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	cert, key, err := ca.newRoot(now)
	if err != nil {
		return nil, nil, fmt.Errorf("certificate authority in %s: root: %w", dir, err)
	}
	if err := writePair(dir, RootCertFile, RootKeyFile, cert, key); err != nil {
		return nil, nil, err
	}
	return cert, key, nil
}

// newRoot makes a self-signed root, in memory.
func (ca *CA) newRoot(now time.Time) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := spiffe.NewKey()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: rootName, Organization: []string{"Trellis"}},
		NotBefore:             now.Add(-caBackdate),
		NotAfter:              now.Add(rootTTL),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            1,
		URIs:                  []*url.URL{ca.trustDomainURL()},
	}
	cert, err := createCert(tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	return cert, key, nil
}

func (ca *CA) createIntermediate(dir string, rootKey *ecdsa.PrivateKey, now time.Time) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	cert, key, err := ca.newIntermediate(ca.root, rootKey, now)
	if err != nil {
		return nil, nil, fmt.Errorf("certificate authority in %s: intermediate: %w", dir, err)
	}
	if err := writePair(dir, IntermediateCertFile, IntermediateKeyFile, cert, key); err != nil {
		return nil, nil, err
	}
	return cert, key, nil
}

// newIntermediate makes an intermediate signed by root, in memory.
func (ca *CA) newIntermediate(root *x509.Certificate, rootKey *ecdsa.PrivateKey, now time.Time) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := spiffe.NewKey()
	if err != nil {
		return nil, nil, err
	}
	notAfter := now.Add(intermediateTTL)
	if notAfter.After(root.NotAfter) {
		notAfter = root.NotAfter
	}
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: intermediateName, Organization: []string{"Trellis"}},
		NotBefore:             now.Add(-caBackdate),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		URIs:                  []*url.URL{ca.trustDomainURL()},
	}
	cert, err := createCert(tmpl, root, &key.PublicKey, rootKey)
	if err != nil {
		return nil, nil, err
	}
	return cert, key, nil
}

// checkRoot refuses a root that is not a usable CA, has expired, or names
// another trust domain.
func (ca *CA) checkRoot(dir string, root *x509.Certificate, now time.Time) error {
	where := filepath.Join(dir, RootCertFile)
	if !root.IsCA {
		return fmt.Errorf("certificate authority: %s is not a CA certificate; replace it or empty the directory", where)
	}
	if now.After(root.NotAfter) {
		return fmt.Errorf("certificate authority: root %s expired at %s; move the directory away to create a new CA, then re-certify every workload",
			where, root.NotAfter.UTC().Format(time.RFC3339))
	}
	for _, u := range root.URIs {
		if u.Scheme == "spiffe" && u.Host != ca.td {
			return fmt.Errorf("certificate authority: root %s was made for trust domain %q, but %q is configured; configure %q or use another directory",
				where, u.Host, ca.td, u.Host)
		}
	}
	return nil
}

// checkIntermediate refuses an intermediate that does not chain to the root.
// An expired one is not an error: renewDue replaces it.
func (ca *CA) checkIntermediate(dir string, inter *x509.Certificate) error {
	if !inter.IsCA {
		return fmt.Errorf("certificate authority: %s is not a CA certificate; delete it and its key to issue a new one",
			filepath.Join(dir, IntermediateCertFile))
	}
	if err := inter.CheckSignatureFrom(ca.root); err != nil {
		return fmt.Errorf("certificate authority: %s was not signed by %s (%w); delete it and its key to issue a new one",
			filepath.Join(dir, IntermediateCertFile), RootCertFile, err)
	}
	return nil
}

// renewDue reports whether less than a third of c's lifetime is left at now.
func renewDue(c *x509.Certificate, now time.Time) bool {
	life := c.NotAfter.Sub(c.NotBefore)
	return c.NotAfter.Sub(now) < life/3
}

func (ca *CA) trustDomainURL() *url.URL { return &url.URL{Scheme: "spiffe", Host: ca.td} }

// loadPair reads a certificate and its key from dir. It returns an error wrapping
// fs.ErrNotExist only when both files are missing.
func loadPair(dir, certFile, keyFile string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	certPEM, certErr := os.ReadFile(filepath.Join(dir, certFile))
	keyPEM, keyErr := os.ReadFile(filepath.Join(dir, keyFile))
	switch {
	case errors.Is(certErr, fs.ErrNotExist) && errors.Is(keyErr, fs.ErrNotExist):
		return nil, nil, fmt.Errorf("certificate authority in %s: %w", dir, certErr)
	case errors.Is(certErr, fs.ErrNotExist) || errors.Is(keyErr, fs.ErrNotExist):
		return nil, nil, fmt.Errorf("certificate authority in %s: one of %s and %s is missing; restore it or remove both",
			dir, certFile, keyFile)
	case certErr != nil:
		return nil, nil, fmt.Errorf("certificate authority: %w", certErr)
	case keyErr != nil:
		return nil, nil, fmt.Errorf("certificate authority: %w", keyErr)
	}
	cert, err := parseCertPEM(certPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("certificate authority: %s: %w", filepath.Join(dir, certFile), err)
	}
	key, err := parseKeyPEM(keyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("certificate authority: %s: %w", filepath.Join(dir, keyFile), err)
	}
	if pub, ok := cert.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(key.Public()) {
		return nil, nil, fmt.Errorf("certificate authority in %s: %s does not hold the key of %s; restore the matching pair",
			dir, keyFile, certFile)
	}
	return cert, key, nil
}

func parseCertPEM(b []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM CERTIFICATE block")
	}
	return x509.ParseCertificate(block.Bytes)
}

func parseKeyPEM(b []byte) (*ecdsa.PrivateKey, error) {
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	var key any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("PEM block is %q, want PRIVATE KEY or EC PRIVATE KEY", block.Type)
	}
	if err != nil {
		return nil, err
	}
	ec, ok := key.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("key is %T, want an ECDSA key", key)
	}
	return ec, nil
}

func writePair(dir, certFile, keyFile string, cert *x509.Certificate, key *ecdsa.PrivateKey) error {
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("certificate authority: encode %s: %w", keyFile, err)
	}
	// The key goes first: a crash between the two writes leaves a key without a
	// certificate, which loadPair reports, never a certificate without its key.
	if err := writeFile(dir, keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return err
	}
	return writeFile(dir, certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), 0o644)
}

// writeFile replaces dir/name atomically with data, with the given mode.
func writeFile(dir, name string, data []byte, mode os.FileMode) (err error) {
	f, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return fmt.Errorf("certificate authority: write %s: %w", name, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
			err = fmt.Errorf("certificate authority: write %s: %w", filepath.Join(dir, name), err)
		}
	}()
	if err = f.Chmod(mode); err != nil {
		return err
	}
	if _, err = f.Write(data); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), filepath.Join(dir, name))
}

func exists(dir, name string) bool {
	_, err := os.Stat(filepath.Join(dir, name))
	return err == nil
}
