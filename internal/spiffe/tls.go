package spiffe

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Errors a handshake made with ServerTLS or ClientTLS fails with, wrapped with
// detail; tell them apart with errors.Is, or map them to a metric label with
// HandshakeReason.
var (
	// ErrNoCredentials: this process has no certificate to present yet.
	ErrNoCredentials = errors.New("no workload certificate yet")
	// ErrNoClientCertificate: the peer presented no certificate.
	ErrNoClientCertificate = errors.New("peer presented no certificate")
	// ErrUntrusted: the peer's chain does not verify against the current trust
	// bundle (unknown CA, expired, wrong key usage, or a CA as leaf).
	ErrUntrusted = errors.New("peer certificate is not trusted")
	// ErrNoSPIFFEID: the certificate carries no SPIFFE ID, several, or an invalid one.
	ErrNoSPIFFEID = errors.New("certificate has no valid SPIFFE ID")
	// ErrTrustDomainMismatch: the peer's SPIFFE ID is in another trust domain.
	ErrTrustDomainMismatch = errors.New("peer is in another trust domain")
)

// IdentityMismatchError reports a server whose SPIFFE ID is not the one the
// client expected.
type IdentityMismatchError struct {
	Want, Got ID
}

func (e *IdentityMismatchError) Error() string {
	return fmt.Sprintf("server identity is %s, want %s; the endpoint is not the workload discovery promised", e.Got, e.Want)
}

// ServerTLS returns a TLS 1.3 server configuration that presents c's current
// certificate, requires a client certificate, and accepts it only if it verifies
// against c's current trust bundle for client authentication and carries a SPIFFE
// ID in the trust domain of c's own ID. Both are read at every handshake, so a
// rotation applies to the next connection.
//
// The configuration uses GetCertificate and VerifyConnection rather than a
// per-handshake GetConfigForClient, so that callers may Clone it and set fields
// such as NextProtos (gRPC adds "h2") without losing them. VerifyConnection also
// runs on resumed sessions, so a resumed client is checked against the current
// bundle too.
func ServerTLS(c *Credentials) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		ClientAuth: tls.RequireAnyClientCert,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			st := c.cur.Load()
			if st == nil || st.cert == nil {
				return nil, ErrNoCredentials
			}
			return st.cert, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			st := c.cur.Load()
			if st == nil || st.cert == nil {
				return ErrNoCredentials
			}
			_, err := st.verifyPeer(cs.PeerCertificates, x509.ExtKeyUsageClientAuth, st.m.ID.TrustDomain, time.Now())
			return err
		},
	}
}

// ClientTLS returns a TLS 1.3 client configuration that presents c's current
// certificate (none while c holds a trust bundle only), verifies the server's
// chain against c's current trust bundle for server authentication, and requires
// the server's SPIFFE ID to be expect, or, when expect is "", any ID in the trust
// domain of c's own ID. Host names play no part: InsecureSkipVerify turns off the
// standard name check and VerifyConnection does the checking above instead.
//
// An expect that does not parse makes every handshake fail with an error wrapping
// ErrInvalidID. A wrong server fails with *IdentityMismatchError.
func ClientTLS(c *Credentials, expect string) *tls.Config {
	var want ID
	var wantErr error
	if expect != "" {
		want, wantErr = Parse(expect)
		if wantErr != nil {
			wantErr = fmt.Errorf("expected server identity: %w", wantErr)
		}
	}
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			st := c.cur.Load()
			if st == nil || st.cert == nil {
				// An empty certificate sends none; a server that requires one
				// refuses the handshake and says so.
				return &tls.Certificate{}, nil
			}
			return st.cert, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			if wantErr != nil {
				return wantErr
			}
			st := c.cur.Load()
			if st == nil {
				return fmt.Errorf("%w: no trust bundle to check the server against", ErrNoCredentials)
			}
			td := st.m.ID.TrustDomain
			if td == "" {
				td = want.TrustDomain
			}
			if td == "" {
				return fmt.Errorf("%w: no own identity, so the server's trust domain cannot be checked; name the expected server identity", ErrNoCredentials)
			}
			got, err := st.verifyPeer(cs.PeerCertificates, x509.ExtKeyUsageServerAuth, td, time.Now())
			if err != nil {
				return err
			}
			if !want.IsZero() && got != want {
				return &IdentityMismatchError{Want: want, Got: got}
			}
			return nil
		},
	}
}

// PeerID returns the SPIFFE ID of the peer's leaf certificate. It does not verify
// the certificate: use it on connections whose handshake ServerTLS or ClientTLS
// checked.
func PeerID(cs tls.ConnectionState) (ID, error) {
	if len(cs.PeerCertificates) == 0 {
		return ID{}, fmt.Errorf("%w: the peer presented no certificate", ErrNoSPIFFEID)
	}
	return FromCertificate(cs.PeerCertificates[0])
}

// verifyPeer checks a peer's chain against the roots of st and returns the
// peer's SPIFFE ID, which must be in trust domain td.
func (st *credState) verifyPeer(certs []*x509.Certificate, usage x509.ExtKeyUsage, td string, now time.Time) (ID, error) {
	if len(certs) == 0 {
		return ID{}, ErrNoClientCertificate
	}
	if _, err := verifyChain(certs, st.roots, usage, now); err != nil {
		return ID{}, err
	}
	id, err := FromCertificate(certs[0])
	if err != nil {
		return ID{}, err
	}
	if id.TrustDomain != td {
		return ID{}, fmt.Errorf("%w: peer %s is not in trust domain %s", ErrTrustDomainMismatch, id, td)
	}
	return id, nil
}

// verifyChain verifies certs[0] with certs[1:] as intermediates. Errors wrap
// ErrUntrusted.
func verifyChain(certs []*x509.Certificate, roots *x509.CertPool, usage x509.ExtKeyUsage, now time.Time) ([][]*x509.Certificate, error) {
	leaf := certs[0]
	if leaf.IsCA {
		return nil, fmt.Errorf("%w: leaf %q is a CA certificate", ErrUntrusted, leaf.Subject.String())
	}
	opts := x509.VerifyOptions{
		Roots:         roots,
		Intermediates: x509.NewCertPool(),
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{usage},
	}
	for _, c := range certs[1:] {
		opts.Intermediates.AddCert(c)
	}
	chains, err := leaf.Verify(opts)
	if err != nil {
		return nil, fmt.Errorf("%w by the current trust bundle: %w", ErrUntrusted, err)
	}
	return chains, nil
}

// Reasons HandshakeReason returns, short enough for a metric label.
const (
	ReasonPlaintext           = "plaintext"
	ReasonUntrusted           = "untrusted_certificate"
	ReasonNoClientCertificate = "no_client_certificate"
	ReasonNoSPIFFEID          = "no_spiffe_id"
	ReasonIdentityMismatch    = "identity_mismatch"
	ReasonHandshakeFailed     = "handshake_failed"
)

// HandshakeReason classifies an error from a TLS handshake made with ServerTLS
// (or ClientTLS) into one of the Reason constants, for a metric label. It returns
// "" for a nil error. Bytes that are not a TLS record are ReasonPlaintext; a peer
// in another trust domain counts as ReasonUntrusted.
func HandshakeReason(err error) string {
	if err == nil {
		return ""
	}
	var mismatch *IdentityMismatchError
	switch {
	case errors.As(err, new(tls.RecordHeaderError)):
		return ReasonPlaintext
	case errors.Is(err, ErrUntrusted), errors.Is(err, ErrTrustDomainMismatch):
		return ReasonUntrusted
	case errors.Is(err, ErrNoClientCertificate), isStdlibNoClientCert(err):
		return ReasonNoClientCertificate
	case errors.Is(err, ErrNoSPIFFEID):
		return ReasonNoSPIFFEID
	case errors.As(err, &mismatch):
		return ReasonIdentityMismatch
	}
	return ReasonHandshakeFailed
}

// isStdlibNoClientCert recognises crypto/tls's own refusal of a client that sent
// no certificate to a server requiring one: crypto/tls reports it with an untyped
// error before any callback runs. A test pins the message.
func isStdlibNoClientCert(err error) bool {
	return strings.Contains(err.Error(), "client didn't provide a certificate")
}
