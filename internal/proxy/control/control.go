// Package control is the sidecar's client of the control plane: it certifies the
// sidecar's identity (with a key made here that never leaves the process), renews
// the certificate at two thirds of its life and sooner when the control plane's
// trust version changes (a root rotation), and keeps watches on inbound policy
// and on the destinations the app calls, reconnecting with jittered backoff. It
// speaks gRPC through connect-go over net/http, which costs the sidecar far less
// memory than grpc-go; it never imports the control plane's own packages.
package control

import (
	"context"
	crand "crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	proxyv1 "github.com/trellis-mesh/trellis/api/proxy/v1"
	"github.com/trellis-mesh/trellis/internal/spiffe"
)

// The procedures of api/proxy/v1 (see proxyv1grpc/services.proto), named here
// so that the sidecar does not link grpc-go's generated stubs.
const (
	procCertify      = "/trellis.proxy.v1.Identity/Certify"
	procDestinations = "/trellis.proxy.v1.Destinations/Watch"
	procInbound      = "/trellis.proxy.v1.Inbound/Watch"
)

// Config configures a Client.
type Config struct {
	// Address of the control plane's gRPC endpoint: host:port, or unix:PATH
	// for its Unix socket (a sidecar in a network namespace of its own).
	Address string
	// Roots verify the control plane's serving certificate, together with the
	// trust bundle last received, so that the control plane stays trusted after
	// a root rotation drops the roots these came from.
	Roots *x509.CertPool
	// Credential proves the sidecar's identity: a join token or a service-account token.
	Credential string
	// KeyType of the key made for each certificate; default ECDSA P-256.
	KeyType spiffe.KeyType
	// CredentialFile, when set, is read before each certification instead of
	// Credential: a projected service-account token, which the kubelet rotates.
	CredentialFile string
	// WorkloadID is the registered workload this sidecar serves.
	WorkloadID string
	// Credentials receive the certificate; peers' TLS reads them.
	Credentials *spiffe.Credentials
	// MinBackoff and MaxBackoff bound reconnection delays; defaults 100ms and 10s.
	MinBackoff, MaxBackoff time.Duration
	// RecertifyJitter bounds the random delay before certifying again when the
	// control plane announces another trust version, which spreads a mesh's
	// sidecars over that time; default 2s.
	RecertifyJitter time.Duration
	Logger          *slog.Logger
}

// Client talks to the control plane.
type Client struct {
	cfg       Config
	certifyTr *http.Transport
	certify   *connect.Client[proxyv1.CertifyRequest, proxyv1.CertifyResponse]
	dests     *connect.Client[proxyv1.DestinationRequest, proxyv1.DestinationConfig]
	inbound   *connect.Client[proxyv1.InboundRequest, proxyv1.InboundConfig]
	expires   time.Time
	issuedAt  time.Time
	// want is the trust version the control plane last announced; recertify
	// wakes Renew when it differs from the one the certificate came with.
	want      atomic.Pointer[string]
	recertify chan struct{}
}

// New returns a client; it connects lazily.
func New(cfg Config) *Client {
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = 100 * time.Millisecond
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = 10 * time.Second
	}
	if cfg.RecertifyJitter == 0 {
		cfg.RecertifyJitter = 2 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	newTransport := func(withCert bool) *http.Transport {
		conf := &tls.Config{
			MinVersion: tls.VersionTLS13,
			NextProtos: []string{"h2"},
			// Verified by VerifyConnection against roots that change.
			InsecureSkipVerify: true,
			VerifyConnection: func(cs tls.ConnectionState) error {
				return verifyControlPlane(cs, cfg.Roots, cfg.Credentials)
			},
		}
		if withCert {
			conf.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				if m, ok := cfg.Credentials.Load(); ok && len(m.Chain) > 0 {
					return &tls.Certificate{Certificate: m.Chain, PrivateKey: m.Key}, nil
				}
				return &tls.Certificate{}, nil
			}
		}
		dial := (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext
		if path, ok := strings.CutPrefix(cfg.Address, "unix:"); ok {
			d := &net.Dialer{Timeout: 5 * time.Second}
			dial = func(ctx context.Context, _, _ string) (net.Conn, error) { return d.DialContext(ctx, "unix", path) }
		}
		return &http.Transport{
			TLSClientConfig:     conf,
			ForceAttemptHTTP2:   true,
			DialContext:         dial,
			TLSHandshakeTimeout: 5 * time.Second,
			IdleConnTimeout:     90 * time.Second,
		}
	}
	// Certification runs on connections of its own, made before the sidecar has
	// a certificate; watches run on mutual-TLS connections made after.
	certifyTr := newTransport(false)
	hc := &http.Client{Transport: newTransport(true)}
	base := "https://" + cfg.Address
	if strings.HasPrefix(cfg.Address, "unix:") {
		base = "https://localhost" // the name the control plane's certificate has
	}
	return &Client{
		cfg:       cfg,
		recertify: make(chan struct{}, 1),
		certifyTr: certifyTr,
		certify:   connect.NewClient[proxyv1.CertifyRequest, proxyv1.CertifyResponse](&http.Client{Transport: certifyTr}, base+procCertify, connect.WithGRPC()),
		dests:     connect.NewClient[proxyv1.DestinationRequest, proxyv1.DestinationConfig](hc, base+procDestinations, connect.WithGRPC()),
		inbound:   connect.NewClient[proxyv1.InboundRequest, proxyv1.InboundConfig](hc, base+procInbound, connect.WithGRPC()),
	}
}

// Certify makes a new key, asks for a certificate and installs it.
func (c *Client) Certify(ctx context.Context) error {
	key, err := spiffe.NewKeyOf(c.cfg.KeyType)
	if err != nil {
		return err
	}
	// The request names no identity: the control plane grants the one the
	// credential was issued for. It proves that the sidecar holds the key.
	csr, err := x509.CreateCertificateRequest(crand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return err
	}
	cred := c.cfg.Credential
	if c.cfg.CredentialFile != "" {
		b, err := os.ReadFile(c.cfg.CredentialFile)
		if err != nil {
			return fmt.Errorf("credential: %w", err)
		}
		cred = strings.TrimSpace(string(b))
	}
	resp, err := c.certify.CallUnary(ctx, connect.NewRequest(&proxyv1.CertifyRequest{Csr: csr, Credential: cred, WorkloadId: c.cfg.WorkloadID}))
	c.certifyTr.CloseIdleConnections() // needed again only at renewal
	if err != nil {
		return fmt.Errorf("certify with the control plane at %s: %w", c.cfg.Address, err)
	}
	m := resp.Msg
	if err := c.cfg.Credentials.Store(m.GetChain(), key, m.GetTrustBundle()); err != nil {
		return fmt.Errorf("certificate from the control plane: %w", err)
	}
	c.issuedAt = time.Now()
	c.expires = m.GetExpires().AsTime()
	c.cfg.Logger.Info("certified", "identity", m.GetIdentity(), "expires", c.expires, "trust_version", c.cfg.Credentials.TrustVersion())
	return nil
}

// verifyControlPlane checks the control plane's serving certificate for the
// name dialled, against roots and the trust bundle held in creds.
func verifyControlPlane(cs tls.ConnectionState, roots *x509.CertPool, creds *spiffe.Credentials) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("control plane presented no certificate")
	}
	pool := x509.NewCertPool()
	if roots != nil {
		pool = roots.Clone()
	}
	if m, ok := creds.Load(); ok {
		for _, der := range m.Bundle {
			if c, err := x509.ParseCertificate(der); err == nil {
				pool.AddCert(c)
			}
		}
	}
	inters := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inters.AddCert(c)
	}
	_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{DNSName: cs.ServerName, Roots: pool, Intermediates: inters})
	if err != nil {
		return fmt.Errorf("control plane certificate: %w", err)
	}
	return nil
}

// announced records the trust version the control plane sent and wakes Renew
// if the certificate came with another one.
func (c *Client) announced(version string) {
	if version == "" {
		return
	}
	c.want.Store(&version)
	if c.trustStale() {
		select {
		case c.recertify <- struct{}{}:
		default:
		}
	}
}

// trustStale reports whether the control plane announced a trust version other
// than the one the current certificate came with.
func (c *Client) trustStale() bool {
	w := c.want.Load()
	return w != nil && *w != c.cfg.Credentials.TrustVersion()
}

// CertifyUntilDone retries Certify with backoff until it succeeds or ctx ends.
func (c *Client) CertifyUntilDone(ctx context.Context) error {
	b := c.backoff()
	for {
		err := c.Certify(ctx)
		if err == nil {
			return nil
		}
		if permanent(err) {
			return err
		}
		c.cfg.Logger.Warn("certify failed; retrying", "err", err)
		if !b.wait(ctx) {
			return ctx.Err()
		}
	}
}

// Renew keeps the certificate fresh: it renews at two thirds of its life, and
// after a short random delay when the control plane announces a trust version
// other than the certificate's, and retries with backoff on failure (every
// 30 s when refused), keeping the old certificate meanwhile.
func (c *Client) Renew(ctx context.Context) {
	for {
		life := c.expires.Sub(c.issuedAt)
		at := c.issuedAt.Add(life * 2 / 3)
		t := time.NewTimer(time.Until(at))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-c.recertify:
			t.Stop()
			if !sleep(ctx, rand.N(c.cfg.RecertifyJitter)) {
				return
			}
			if !c.trustStale() {
				continue
			}
			c.cfg.Logger.Info("the control plane's trust version changed; certifying again", "have", c.cfg.Credentials.TrustVersion(), "want", *c.want.Load())
		}
		if err := c.CertifyUntilDone(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			// Refused (a credential the control plane does not take now):
			// keep the current certificate and ask again later rather than
			// never, since the credential file may be refreshed and the
			// control plane may have been mid-restart.
			c.cfg.Logger.Error("certificate renewal refused; keeping the current certificate and asking again in 30s", "err", err)
			if !sleep(ctx, 30*time.Second+rand.N(5*time.Second)) {
				return
			}
			if c.trustStale() { // the renewal was for a new trust version: ask again
				select {
				case c.recertify <- struct{}{}:
				default:
				}
			}
		}
	}
}

// WatchInbound calls apply with every inbound config until ctx ends, reconnecting
// as needed. An apply error is logged and the previous config stays in force.
func (c *Client) WatchInbound(ctx context.Context, apply func(*proxyv1.InboundConfig) error) {
	c.watch(ctx, "inbound policy", func(ctx context.Context) (func() error, error) {
		req := &proxyv1.InboundRequest{WorkloadId: c.cfg.WorkloadID, TrustVersion: c.cfg.Credentials.TrustVersion()}
		s, err := c.inbound.CallServerStream(ctx, connect.NewRequest(req))
		if err != nil {
			return nil, err
		}
		return func() error {
			if !s.Receive() {
				return streamEnd(s.Err())
			}
			c.applied("inbound policy", s.Msg().GetVersion(), apply(s.Msg()))
			c.announced(s.Msg().GetTrustVersion())
			return nil
		}, nil
	})
}

// WatchDestination calls apply with every config of authority until ctx ends.
func (c *Client) WatchDestination(ctx context.Context, authority string, apply func(*proxyv1.DestinationConfig) error) {
	c.watch(ctx, "destination "+authority, func(ctx context.Context) (func() error, error) {
		s, err := c.dests.CallServerStream(ctx, connect.NewRequest(&proxyv1.DestinationRequest{Authority: authority}))
		if err != nil {
			return nil, err
		}
		return func() error {
			if !s.Receive() {
				return streamEnd(s.Err())
			}
			c.applied("destination "+authority, s.Msg().GetVersion(), apply(s.Msg()))
			return nil
		}, nil
	})
}

func (c *Client) applied(what, version string, err error) {
	if err != nil {
		c.cfg.Logger.Error("config not applied; keeping the previous one", "what", what, "version", version, "err", err)
	}
}

var errStreamClosed = errors.New("stream closed by the control plane")

func streamEnd(err error) error {
	if err == nil {
		return errStreamClosed
	}
	return err
}

// watch opens a stream and reads it with recv until it fails, then reopens it
// with backoff, until ctx ends.
func (c *Client) watch(ctx context.Context, what string, open func(context.Context) (recv func() error, err error)) {
	b := c.backoff()
	for ctx.Err() == nil {
		recv, err := open(ctx)
		for err == nil {
			if err = recv(); err == nil {
				b.reset()
			}
		}
		if ctx.Err() != nil {
			return
		}
		c.cfg.Logger.Warn("watch interrupted; reconnecting", "what", what, "err", err)
		if !b.wait(ctx) {
			return
		}
	}
}

func permanent(err error) bool {
	var ce *connect.Error
	if errors.As(err, &ce) {
		switch ce.Code() {
		case connect.CodeUnauthenticated, connect.CodePermissionDenied, connect.CodeInvalidArgument:
			return true
		}
	}
	return false
}

type backoff struct {
	min, max, cur time.Duration
}

func (c *Client) backoff() *backoff {
	return &backoff{min: c.cfg.MinBackoff, max: c.cfg.MaxBackoff, cur: c.cfg.MinBackoff}
}

func (b *backoff) reset() { b.cur = b.min }

// next returns the current delay with ±50% jitter, in [cur/2, 3cur/2), and
// doubles the current delay up to the maximum.
func (b *backoff) next() time.Duration {
	d := b.cur/2 + rand.N(b.cur)
	b.cur = min(b.cur*2, b.max)
	return d
}

// wait sleeps the next delay; false if ctx ended first.
func (b *backoff) wait(ctx context.Context) bool { return sleep(ctx, b.next()) }

// sleep waits d; false if ctx ended first.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
