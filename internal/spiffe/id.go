// Package spiffe owns workload identities on the wire: SPIFFE IDs of the form
// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>, the keys and
// certificate requests that carry them, the rotating credentials a process holds,
// and the TLS 1.3 configurations that present and check them.
//
// Both the sidecar proxy and the control plane import it, so it depends on the
// standard library only. It issues nothing: certificate authorities live in the
// control plane (internal/identity).
package spiffe

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

const (
	scheme = "spiffe://"
	// maxIDLength is the SPIFFE limit on the length of an ID, in bytes.
	maxIDLength = 2048
	// maxTrustDomainLength is the SPIFFE limit on a trust domain name, in bytes.
	maxTrustDomainLength = 255
	idForm               = "spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
)

// ErrInvalidID is wrapped by every error Parse and ID.Validate return.
var ErrInvalidID = errors.New("invalid SPIFFE ID")

// ID is a workload identity: a service account in a namespace of a trust domain.
// The zero ID means "no identity".
type ID struct {
	TrustDomain string
	Namespace   string
	Account     string
}

// Parse reads a SPIFFE ID of the form spiffe://<td>/ns/<ns>/sa/<sa>. It is strict:
// the scheme is lower case, the trust domain holds only lower-case letters, digits,
// '.', '-' and '_' (so no port and no user info), the path is exactly the four
// segments above, each made of letters, digits, '.', '-' and '_', and there is no
// query, fragment or percent-encoding. Parse(id.String()) returns id for every
// valid id, and id.String() returns s for every s that Parse accepts.
func Parse(s string) (ID, error) {
	if len(s) > maxIDLength {
		return ID{}, invalid(s, fmt.Sprintf("longer than %d bytes", maxIDLength))
	}
	rest, ok := strings.CutPrefix(s, scheme)
	if !ok {
		return ID{}, invalid(s, "does not start with "+scheme)
	}
	td, path, ok := strings.Cut(rest, "/")
	if !ok {
		return ID{}, invalid(s, "has no path")
	}
	if err := ValidateTrustDomain(td); err != nil {
		return ID{}, invalid(s, err.Error())
	}
	parts := strings.Split(path, "/")
	if len(parts) != 4 || parts[0] != "ns" || parts[2] != "sa" {
		return ID{}, invalid(s, "path is not /ns/<namespace>/sa/<service-account>")
	}
	id := ID{TrustDomain: td, Namespace: parts[1], Account: parts[3]}
	if err := checkSegment("namespace", id.Namespace); err != nil {
		return ID{}, invalid(s, err.Error())
	}
	if err := checkSegment("service account", id.Account); err != nil {
		return ID{}, invalid(s, err.Error())
	}
	return id, nil
}

// FromCertificate returns the SPIFFE ID of a certificate: its one and only URI
// SAN, which must parse. It does not verify the certificate. Errors wrap
// ErrNoSPIFFEID.
func FromCertificate(c *x509.Certificate) (ID, error) {
	if c == nil {
		return ID{}, fmt.Errorf("%w: no certificate", ErrNoSPIFFEID)
	}
	if n := len(c.URIs); n != 1 {
		return ID{}, fmt.Errorf("%w: certificate %q has %d URI SANs, want exactly one SPIFFE ID",
			ErrNoSPIFFEID, c.Subject.String(), n)
	}
	id, err := Parse(c.URIs[0].String())
	if err != nil {
		return ID{}, fmt.Errorf("%w: certificate %q: %w", ErrNoSPIFFEID, c.Subject.String(), err)
	}
	return id, nil
}

// String returns the ID as spiffe://<td>/ns/<ns>/sa/<sa>, or "" for the zero ID.
func (id ID) String() string {
	if id.IsZero() {
		return ""
	}
	return scheme + id.TrustDomain + "/ns/" + id.Namespace + "/sa/" + id.Account
}

// IsZero reports whether id is the zero ID.
func (id ID) IsZero() bool { return id == ID{} }

// Validate reports whether Parse would accept id.String(). Errors wrap ErrInvalidID.
func (id ID) Validate() error {
	_, err := Parse(id.String())
	return err
}

// URL returns the ID as a URL, the form certificates and requests carry in their
// URI SANs.
func (id ID) URL() *url.URL {
	return &url.URL{Scheme: "spiffe", Host: id.TrustDomain, Path: "/ns/" + id.Namespace + "/sa/" + id.Account}
}

// ValidateTrustDomain reports whether td is a valid SPIFFE trust domain name:
// 1 to 255 bytes of lower-case letters, digits, '.', '-' and '_', with no empty
// dot-separated label (certificates cannot carry one).
func ValidateTrustDomain(td string) error {
	if td == "" {
		return errors.New("trust domain is empty")
	}
	if len(td) > maxTrustDomainLength {
		return fmt.Errorf("trust domain is longer than %d bytes", maxTrustDomainLength)
	}
	for i := 0; i < len(td); i++ {
		if c := td[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			return fmt.Errorf("trust domain %q has character %q; use lower-case letters, digits, '.', '-' and '_' only (no port, no user info)", td, c)
		}
	}
	if td[0] == '.' || td[len(td)-1] == '.' || strings.Contains(td, "..") {
		return fmt.Errorf("trust domain %q has an empty label; remove the extra '.'", td)
	}
	return nil
}

func checkSegment(what, s string) error {
	switch s {
	case "":
		return fmt.Errorf("%s is empty", what)
	case ".", "..":
		return fmt.Errorf("%s is %q", what, s)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			return fmt.Errorf("%s %q has character %q; use letters, digits, '.', '-' and '_' only", what, s, c)
		}
	}
	return nil
}

func invalid(s, why string) error {
	if len(s) > 100 {
		s = s[:100] + "..."
	}
	return fmt.Errorf("%w %q: %s; the form is %s", ErrInvalidID, s, why, idForm)
}
