// Package controlplane runs Trellis's control plane. In local mode (Run) it opens
// the store in the state directory, keeps the built-in CA, rebuilds the model
// snapshot on every change, serves sidecars over gRPC (mutual TLS once
// certified) and serves the admin API that the CLI uses (apply, get, delete,
// run's registrations); it writes control-plane.json in the state directory so
// that the CLI finds it. In Kubernetes mode (RunKube) the snapshots come from
// the cluster's informers and sidecars prove themselves with projected
// service-account tokens.
package controlplane

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/metrics"
	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/internal/serve"
	"github.com/trellis-mesh/trellis/internal/source/local"
	"github.com/trellis-mesh/trellis/internal/spiffe"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
)

// Files in the state directory.
const (
	InfoFile  = "control-plane.json" // where the control plane listens
	TokenFile = "admin-token"        // bearer token of the admin API, mode 0600
	CAFile    = "ca.pem"             // roots that verify the control plane and sidecars
	caDir     = "ca"
	// SocketFile is the gRPC Unix socket in the state directory.
	SocketFile = "grpc.sock"
	identityNS = "trellis-system"
)

// Info is what control-plane.json holds.
type Info struct {
	GRPC string `json:"grpc"`
	// GRPCSocket is the same gRPC service on a Unix socket in the state
	// directory, "unix:PATH", which sidecars in network namespaces of their
	// own reach (trellis run --isolation netns); empty when it could not be
	// made.
	GRPCSocket string `json:"grpcSocket,omitempty"`
	Admin      string `json:"admin"`
	PID        int    `json:"pid"`
}

// Options configure a control plane.
type Options struct {
	StateDir  string // required
	GRPCAddr  string // default 127.0.0.1:15128
	AdminAddr string // default 127.0.0.1:15129
	// LeafTTL is the lifetime of workload certificates; default 24h.
	LeafTTL time.Duration
	// Grace is how long after start registered workloads count as alive before
	// their sidecars reconnect; default 15s.
	Grace  time.Duration
	Logger *slog.Logger
	// LogLevel, if set, is the level Logger's handler logs at: a MeshConfig's
	// spec.observability.osmLogLevel changes it live, and its value at start
	// is the level in force when no MeshConfig names one.
	LogLevel *slog.LevelVar
	// Ready, if set, is called once listening, with the bound addresses.
	Ready func(Info)
}

// Run serves until ctx ends.
func Run(ctx context.Context, o Options) error {
	if o.StateDir == "" {
		return errors.New("a state directory is required")
	}
	if o.GRPCAddr == "" {
		o.GRPCAddr = "127.0.0.1:15128"
	}
	if o.AdminAddr == "" {
		o.AdminAddr = "127.0.0.1:15129"
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	log := o.Logger
	builds := metrics.NewHistogram(nil)
	store, err := local.Open(local.Options{Dir: o.StateDir, Grace: o.Grace, ObserveBuild: builds.Observe})
	if err != nil {
		return err
	}
	ca, err := identity.LoadOrCreate(filepath.Join(o.StateDir, caDir), identity.Options{TrustDomain: model.DefaultTrustDomain, LeafTTL: o.LeafTTL})
	if err != nil {
		return fmt.Errorf("certificate authority: %w", err)
	}
	if err := local.WriteFileAtomic(filepath.Join(o.StateDir, CAFile), ca.BundlePEM(), 0o644); err != nil {
		return err
	}
	adminToken, err := loadOrCreateToken(filepath.Join(o.StateDir, TokenFile))
	if err != nil {
		return err
	}

	level := newLogLevel(o.LogLevel)
	level.follow(store.Snapshot().Mesh(), log)
	trust := newTrustTracker()
	srv := serve.New(serve.Config{Authenticator: store, Signer: ca, Observer: store, Trust: trust, LeafTTL: o.LeafTTL, Logger: log})
	srv.Update(store.Snapshot())

	g, gl, err := listenGRPC(o.GRPCAddr, ca, srv, store.Snapshot().Mesh().TrustDomain, []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback})
	if err != nil {
		return err
	}
	al, err := net.Listen("tcp", o.AdminAddr)
	if err != nil {
		gl.Close()
		return fmt.Errorf("admin listener: %w", err)
	}
	info := Info{GRPC: gl.Addr().String(), Admin: al.Addr().String(), PID: os.Getpid()}
	sockPath := filepath.Join(o.StateDir, SocketFile)
	os.Remove(sockPath) // left by a control plane that did not stop cleanly
	if ul, err := net.Listen("unix", sockPath); err != nil {
		log.Warn("no gRPC Unix socket: sidecars in network namespaces of their own cannot connect", "path", sockPath, "err", err)
	} else {
		info.GRPCSocket = "unix:" + sockPath
		defer os.Remove(sockPath)
		go g.Serve(ul)
	}
	b, _ := json.MarshalIndent(info, "", "  ")
	if err := local.WriteFileAtomic(filepath.Join(o.StateDir, InfoFile), b, 0o644); err != nil {
		return err
	}
	rot := &rotator{ca: ca, srv: srv, store: store, trust: trust, caFile: filepath.Join(o.StateDir, CAFile), log: log}
	admin := &http.Server{Handler: newAdmin(store, srv, builds, adminToken, log, rot), ReadHeaderTimeout: 10 * time.Second}
	go g.Serve(gl)
	go admin.Serve(al)
	log.Info("control plane serving", "grpc", info.GRPC, "admin", info.Admin, "state", o.StateDir, "snapshot", store.Snapshot().Hash())
	if o.Ready != nil {
		o.Ready(info)
	}

	grace := time.NewTimer(store.Grace())
	defer grace.Stop()
	for {
		select {
		case <-ctx.Done():
			os.Remove(filepath.Join(o.StateDir, InfoFile))
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			admin.Shutdown(sctx)
			cancel()
			g.Stop() // streams are endless watches: end them, sidecars reconnect
			log.Info("control plane stopped")
			return nil
		case <-grace.C:
			store.GraceOver()
		case <-store.Changes():
			snap := store.Snapshot()
			srv.Update(snap)
			level.follow(snap.Mesh(), log)
			log.Debug("snapshot", "hash", snap.Hash(), "problems", len(snap.Problems()))
		}
	}
}

// listenGRPC makes the gRPC server sidecars talk to, serving srv over TLS with
// a certificate from ca for the given names (renewed like every workload's, and
// at once when a root rotation changes the CA's trust version), verifying
// client certificates when given against the CA's current bundle, and listens
// on addr.
func listenGRPC(addr string, ca *identity.CA, srv *serve.Server, trustDomain string, dnsNames []string, ips []net.IP) (*grpc.Server, net.Listener, error) {
	cpID := spiffe.ID{TrustDomain: trustDomain, Namespace: identityNS, Account: "trellis-control-plane"}
	serving, err := newServingCert(ca, cpID, dnsNames, ips)
	if err != nil {
		return nil, nil, err
	}
	roots := &trustedRoots{ca: ca}
	if _, err := roots.get(); err != nil {
		return nil, nil, err
	}
	base := &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return serving.get(time.Now())
		},
		ClientAuth: tls.VerifyClientCertIfGiven,
		NextProtos: []string{"h2"},
	}
	tlsConf := base.Clone()
	// Client certificates verify against the bundle of the moment, which a
	// root rotation changes.
	tlsConf.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		pool, err := roots.get()
		if err != nil {
			return nil, err
		}
		c := base.Clone()
		c.ClientCAs = pool
		return c, nil
	}
	g := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(tlsConf)),
		grpc.StatsHandler(srv.StatsHandler()),
		serve.Codec(), // destination configs marshalled once, sent as they are
		// Memory per connection, which 10,000 sidecars multiply: the write
		// buffer goes back to a pool after each flush, and frames are read
		// straight from the TLS connection, which buffers a record already.
		grpc.SharedWriteBuffer(true),
		grpc.ReadBufferSize(0),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	)
	srv.Register(g)
	gl, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("gRPC listener: %w", err)
	}
	return g, gl, nil
}

// newServingCert issues a serving certificate for id with the given names and
// keeps it fresh: renewed at two thirds of its life and when the CA's trust
// version changes.
func newServingCert(ca *identity.CA, id spiffe.ID, dnsNames []string, ips []net.IP) (*servingCert, error) {
	s := &servingCert{issue: func() (tls.Certificate, error) { return ca.ServingCert(id, dnsNames, ips) }, version: ca.TrustVersion}
	if _, err := s.get(time.Now()); err != nil {
		return nil, err
	}
	return s, nil
}

func loadOrCreateToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil && len(b) > 0 {
		return string(b), nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", err
	}
	t := base64.RawURLEncoding.EncodeToString(raw[:])
	return t, local.WriteFileAtomic(path, []byte(t), 0o600)
}

// servingCert is the control plane's own certificate, renewed at two thirds of
// its life like every workload's.
type servingCert struct {
	issue func() (tls.Certificate, error)
	// version, when set, returns the CA's trust version: a change renews the
	// certificate at once, so that it comes from the intermediate that signs.
	version func() string
	mu      sync.Mutex
	cert    *tls.Certificate
	renewAt time.Time
	issued  string // version when cert was issued
}

func (s *servingCert) get(now time.Time) (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := ""
	if s.version != nil {
		v = s.version()
	}
	if s.cert != nil && now.Before(s.renewAt) && v == s.issued {
		return s.cert, nil
	}
	c, err := s.issue()
	if err != nil {
		if s.cert != nil {
			return s.cert, nil // keep serving the current one; the next handshake retries
		}
		return nil, fmt.Errorf("control plane serving certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		return nil, err
	}
	s.cert, s.issued = &c, v
	// From now, not from NotBefore, which the CA backdates for clock skew.
	s.renewAt = now.Add(leaf.NotAfter.Sub(now) * 2 / 3)
	return s.cert, nil
}
