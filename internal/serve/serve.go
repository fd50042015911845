// Package serve is the control plane's gRPC server for sidecars: it certifies
// them (Identity), streams destination configs on demand (Destinations) and their
// inbound policy (Inbound). It compiles each destination once per snapshot and
// fans the same message out to every watcher; a stream keeps only the latest value,
// so a slow sidecar never blocks the server or anyone else. It serves nothing until
// the first snapshot has been set (the sources are synced).
package serve

import (
	"context"
	"crypto/x509"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	proxyv1 "github.com/trellis-mesh/trellis/api/proxy/v1"
	"github.com/trellis-mesh/trellis/api/proxy/v1/proxyv1grpc"
	"github.com/trellis-mesh/trellis/internal/compile"
	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/internal/spiffe"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Authenticator maps a credential (join token, service-account token) to the one
// identity it was issued for.
type Authenticator interface {
	Authenticate(ctx context.Context, credential string) (model.Identity, error)
}

// Signer issues workload certificates.
type Signer interface {
	Sign(csrDER []byte, id spiffe.ID, ttl time.Duration) ([][]byte, error)
	Bundle() [][]byte
}

// ConnectionObserver is told when a sidecar's inbound stream opens and closes; the
// control plane uses it to know which workloads are alive.
type ConnectionObserver interface {
	Connected(workloadID string)
	Disconnected(workloadID string)
}

// Config configures a Server.
type Config struct {
	Authenticator Authenticator
	Signer        Signer
	// Observer may be nil.
	Observer ConnectionObserver
	// LeafTTL is the lifetime of issued certificates unless the mesh config sets
	// one; default 24h.
	LeafTTL time.Duration
	Logger  *slog.Logger
}

// Server implements the three services of api/proxy/v1.
type Server struct {
	proxyv1grpc.UnimplementedIdentityServer
	proxyv1grpc.UnimplementedDestinationsServer

	cfg    Config
	synced chan struct{}
	once   sync.Once

	mu       sync.Mutex
	snap     *model.Snapshot
	dests    map[compile.Target]*proxyv1.DestinationConfig // compiled for snap
	watchers map[*mailbox]struct{}

	streams atomic.Int64
	pushes  atomic.Int64
	issued  atomic.Int64
}

// New returns a server that serves once Update has been called.
func New(cfg Config) *Server {
	if cfg.LeafTTL == 0 {
		cfg.LeafTTL = 24 * time.Hour
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Server{cfg: cfg, synced: make(chan struct{}), watchers: map[*mailbox]struct{}{}}
}

// Register adds the services to g.
func (s *Server) Register(g *grpc.Server) {
	proxyv1grpc.RegisterIdentityServer(g, s)
	proxyv1grpc.RegisterDestinationsServer(g, s)
	proxyv1grpc.RegisterInboundServer(g, inboundServer{s: s})
}

// Update installs a new snapshot and wakes every stream. A snapshot with the same
// hash as the current one changes nothing.
func (s *Server) Update(snap *model.Snapshot) {
	s.mu.Lock()
	if s.snap != nil && s.snap.Hash() == snap.Hash() {
		s.mu.Unlock()
		return
	}
	s.snap = snap
	s.dests = map[compile.Target]*proxyv1.DestinationConfig{}
	for m := range s.watchers {
		m.poke()
	}
	s.mu.Unlock()
	s.once.Do(func() { close(s.synced) })
}

// Snapshot returns the snapshot being served, or nil before the first Update.
func (s *Server) Snapshot() *model.Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snap
}

// Stats are the server's own counters.
type Stats struct {
	Streams            int64 `json:"streams"`
	Pushes             int64 `json:"pushes"`
	CertificatesIssued int64 `json:"certificatesIssued"`
}

// Stats returns the server's counters.
func (s *Server) Stats() Stats {
	return Stats{Streams: s.streams.Load(), Pushes: s.pushes.Load(), CertificatesIssued: s.issued.Load()}
}

// Certify implements Identity.Certify.
func (s *Server) Certify(ctx context.Context, req *proxyv1.CertifyRequest) (*proxyv1.CertifyResponse, error) {
	id, err := s.cfg.Authenticator.Authenticate(ctx, req.GetCredential())
	if err != nil {
		return nil, status.Errorf(codes.Unauthenticated, "credential refused: %v", err)
	}
	if err := s.wait(ctx); err != nil {
		return nil, err
	}
	mesh := s.Snapshot().Mesh()
	sid := spiffe.ID{TrustDomain: mesh.TrustDomain, Namespace: id.Namespace, Account: id.Account}
	ttl := s.cfg.LeafTTL
	if mesh.CertValidity > 0 {
		ttl = mesh.CertValidity // MeshConfig's serviceCertValidityDuration wins
	}
	chain, err := s.cfg.Signer.Sign(req.GetCsr(), sid, ttl)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "cannot sign the request for %s: %v", sid, err)
	}
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return nil, status.Errorf(codes.Internal, "issued certificate does not parse: %v", err)
	}
	s.issued.Add(1)
	s.cfg.Logger.Info("certificate issued", "identity", sid.String(), "expires", leaf.NotAfter)
	return &proxyv1.CertifyResponse{
		Chain:       chain,
		TrustBundle: s.cfg.Signer.Bundle(),
		Expires:     timestamppb.New(leaf.NotAfter),
		Identity:    sid.String(),
	}, nil
}

// Watch implements Destinations.Watch.
func (s *Server) Watch(req *proxyv1.DestinationRequest, stream grpc.ServerStreamingServer[proxyv1.DestinationConfig]) error {
	ctx := stream.Context()
	caller, err := peerID(ctx)
	if err != nil {
		return err
	}
	t, err := compile.ParseAuthority(req.GetAuthority(), caller.Namespace)
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	return s.stream(ctx, func() (versioned, error) {
		return s.destination(t), nil
	}, func(v versioned) error { return stream.Send(v.(*proxyv1.DestinationConfig)) })
}

// inboundServer adapts Inbound.Watch, whose method name collides with
// Destinations.Watch on Server.
type inboundServer struct {
	proxyv1grpc.UnimplementedInboundServer
	s *Server
}

func (i inboundServer) Watch(req *proxyv1.InboundRequest, stream grpc.ServerStreamingServer[proxyv1.InboundConfig]) error {
	return i.s.watchInbound(req, stream)
}

func (s *Server) watchInbound(req *proxyv1.InboundRequest, stream grpc.ServerStreamingServer[proxyv1.InboundConfig]) error {
	ctx := stream.Context()
	caller, err := peerID(ctx)
	if err != nil {
		return err
	}
	if err := s.wait(ctx); err != nil {
		return err
	}
	id := req.GetWorkloadId()
	w, ok := s.Snapshot().Workload(id)
	if !ok {
		return status.Errorf(codes.NotFound, "workload %q is not registered", id)
	}
	if w.Identity.Namespace != caller.Namespace || w.Identity.Account != caller.Account {
		return status.Errorf(codes.PermissionDenied, "workload %q belongs to %s, not to the caller %s", id, w.Identity, caller)
	}
	if o := s.cfg.Observer; o != nil {
		o.Connected(id)
		defer o.Disconnected(id)
	}
	return s.stream(ctx, func() (versioned, error) {
		ic, err := compile.Inbound(s.Snapshot(), id)
		if err != nil {
			return nil, status.Error(codes.NotFound, err.Error())
		}
		return ic, nil
	}, func(v versioned) error { return stream.Send(v.(*proxyv1.InboundConfig)) })
}

type versioned interface{ GetVersion() string }

// stream sends current() now and again whenever it changes, until ctx ends.
func (s *Server) stream(ctx context.Context, current func() (versioned, error), send func(versioned) error) error {
	if err := s.wait(ctx); err != nil {
		return err
	}
	m := &mailbox{c: make(chan struct{}, 1)}
	s.mu.Lock()
	s.watchers[m] = struct{}{}
	s.mu.Unlock()
	s.streams.Add(1)
	defer func() {
		s.mu.Lock()
		delete(s.watchers, m)
		s.mu.Unlock()
		s.streams.Add(-1)
	}()
	last := ""
	for {
		v, err := current()
		if err != nil {
			return err
		}
		if v.GetVersion() != last {
			if err := send(v); err != nil {
				return err
			}
			s.pushes.Add(1)
			last = v.GetVersion()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-m.c:
		}
	}
}

func (s *Server) destination(t compile.Target) *proxyv1.DestinationConfig {
	s.mu.Lock()
	defer s.mu.Unlock()
	if dc, ok := s.dests[t]; ok {
		return dc
	}
	dc := compile.Destination(s.snap, t)
	s.dests[t] = dc
	return dc
}

func (s *Server) wait(ctx context.Context) error {
	select {
	case <-s.synced:
		return nil
	case <-ctx.Done():
		return status.Error(codes.Unavailable, "control plane is not synced yet")
	}
}

// mailbox is a latest-value signal: a poke never blocks and many pokes collapse
// into one wake-up.
type mailbox struct{ c chan struct{} }

func (m *mailbox) poke() {
	select {
	case m.c <- struct{}{}:
	default:
	}
}

func peerID(ctx context.Context) (spiffe.ID, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return spiffe.ID{}, status.Error(codes.Unauthenticated, "no peer")
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.VerifiedChains) == 0 || len(ti.State.PeerCertificates) == 0 {
		return spiffe.ID{}, status.Error(codes.Unauthenticated, "a verified client certificate is required: certify first")
	}
	id, err := spiffe.FromCertificate(ti.State.PeerCertificates[0])
	if err != nil {
		return spiffe.ID{}, status.Errorf(codes.Unauthenticated, "client certificate: %v", err)
	}
	return id, nil
}
