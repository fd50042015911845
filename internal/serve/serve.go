// Package serve is the control plane's gRPC server for sidecars: it certifies
// them (Identity), streams destination configs on demand (Destinations) and their
// inbound policy (Inbound). On each snapshot it compiles every watched destination
// once, wakes only the streams whose destination's version changed, and fans the
// same message out to them; a stream keeps only the latest value, so a slow
// sidecar never blocks the server or anyone else. It serves nothing until the
// first snapshot has been set (the sources are synced).
package serve

import (
	"context"
	"crypto/x509"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	proxyv1 "github.com/trellis-mesh/trellis/api/proxy/v1"
	"github.com/trellis-mesh/trellis/api/proxy/v1/proxyv1grpc"
	"github.com/trellis-mesh/trellis/internal/compile"
	"github.com/trellis-mesh/trellis/internal/metrics"
	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/internal/spiffe"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/stats"
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

// trustVersioner is a Signer that can change its bundle or issuer while
// running (a root rotation): Inbound configs then carry its TrustVersion, and
// TrustChanged pushes them.
type trustVersioner interface{ TrustVersion() string }

// TrustObserver is told which trust version (spiffe.TrustVersion) a workload's
// sidecar holds and which intermediate issued its leaf (DER, nil if unknown):
// at each certification that names the workload, and when its inbound stream
// opens. The control plane uses it to follow a root rotation.
type TrustObserver interface {
	Holds(workloadID, trustVersion string, issuer []byte)
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
	// Trust may be nil.
	Trust TrustObserver
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

	mu sync.Mutex
	// latest is the last snapshot given to Update, at latestAt; pub holds the
	// one published to streams. A publisher goroutine runs while they differ.
	latest     *model.Snapshot
	latestAt   time.Time
	publishing bool
	pub        atomic.Pointer[published] // read without the lock by streams
	// Destination watchers by target, and inbound watchers, which every
	// snapshot wakes (each compares its own version).
	destWatchers    map[compile.Target]map[*mailbox]struct{}
	inboundWatchers map[*mailbox]struct{}

	trustAt     atomic.Int64 // last TrustChanged, Unix nanoseconds
	streams     atomic.Int64
	conns       atomic.Int64
	pushes      atomic.Int64
	issued      atomic.Int64
	pushLatency *metrics.Histogram
}

// New returns a server that serves once Update has been called.
func New(cfg Config) *Server {
	if cfg.LeafTTL == 0 {
		cfg.LeafTTL = 24 * time.Hour
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Server{
		cfg: cfg, synced: make(chan struct{}),
		destWatchers:    map[compile.Target]map[*mailbox]struct{}{},
		inboundWatchers: map[*mailbox]struct{}{},
		pushLatency:     metrics.NewHistogram(nil),
	}
}

// Register adds the services to g.
func (s *Server) Register(g *grpc.Server) {
	proxyv1grpc.RegisterIdentityServer(g, s)
	g.RegisterService(withWatch(proxyv1grpc.Destinations_ServiceDesc, watchHandler(s.Watch)), s)
	g.RegisterService(withWatch(proxyv1grpc.Inbound_ServiceDesc, watchHandler(s.watchInbound)), inboundServer{s: s})
}

// withWatch returns a copy of the generated desc with the handler of its
// Watch stream replaced by h.
func withWatch(desc grpc.ServiceDesc, h grpc.StreamHandler) *grpc.ServiceDesc {
	desc.Streams = slices.Clone(desc.Streams)
	for i := range desc.Streams {
		if desc.Streams[i].StreamName == "Watch" {
			desc.Streams[i].Handler = h
			return &desc
		}
	}
	panic("serve: " + desc.ServiceName + " has no Watch stream") // the generated code changed
}

// watchHandler is the generated stream handler of a watch, with the request
// read on a goroutine of its own (see offStack).
func watchHandler[Req, Resp any](watch func(*Req, grpc.ServerStreamingServer[Resp]) error) grpc.StreamHandler {
	return func(_ any, ss grpc.ServerStream) error {
		req := new(Req)
		if err := offStack(func() error { return ss.RecvMsg(req) }); err != nil {
			return err
		}
		return watch(req, &grpc.GenericServerStream[Req, Resp]{ServerStream: ss})
	}
}

// offStack runs f on a short-lived goroutine and waits for it. A watch's
// handler goroutine lives as long as its stream, and a goroutine's stack
// keeps the largest size it has grown to while the frames below its wait
// are too deep for the runtime to shrink it; so the deep calls (reading the
// request, checking the caller, compiling, encoding and writing a config)
// run here, and the stream's goroutine keeps the small stack its wait needs.
func offStack(f func() error) error {
	done := make(chan error, 1)
	go func() { done <- f() }()
	return <-done
}

// Update installs a new snapshot and returns at once; a snapshot with the same
// hash as the latest one changes nothing. Publishing happens on a goroutine of
// its own that lives while there is something to publish: it compiles every
// watched destination once for the latest snapshot, then wakes the streams of
// the destinations whose version changed and every inbound stream. Snapshots
// that arrive while it compiles are coalesced: only the latest is published.
func (s *Server) Update(snap *model.Snapshot) {
	s.mu.Lock()
	if s.latest != nil && s.latest.Hash() == snap.Hash() {
		s.mu.Unlock()
		return
	}
	s.latest, s.latestAt = snap, time.Now()
	first := s.pub.Load() == nil
	start := !first && !s.publishing
	if start {
		s.publishing = true
	}
	s.mu.Unlock()
	switch {
	case first: // nobody watches yet: publish now, so that serving starts synced
		s.publishOnce()
		s.once.Do(func() { close(s.synced) })
	case start:
		go s.publish()
	}
}

// publish publishes the latest snapshot until no newer one is waiting.
func (s *Server) publish() {
	for s.publishOnce() {
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.latest != s.pub.Load().snap { // arrived after the last check
		go s.publish()
		return
	}
	s.publishing = false
}

// publishOnce publishes the latest snapshot if it is not yet, and reports
// whether it did.
func (s *Server) publishOnce() bool {
	s.mu.Lock()
	snap, at := s.latest, s.latestAt
	old := s.pub.Load()
	if old != nil && snap == old.snap {
		s.mu.Unlock()
		return false
	}
	targets := make([]compile.Target, 0, len(s.destWatchers))
	for t := range s.destWatchers {
		targets = append(targets, t)
	}
	s.mu.Unlock()

	// Compiling needs no lock: the snapshot is immutable.
	p := &published{snap: snap, readyAt: at, dests: make(map[compile.Target]*encoded, len(targets))}
	for _, t := range targets {
		p.dests[t] = encode(compile.Destination(snap, t))
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	s.pub.Store(p)
	for t, ms := range s.destWatchers {
		dc, compiled := p.dests[t]
		prev, had := old.destination(t)
		if compiled && had && prev.GetVersion() == dc.GetVersion() {
			continue // unchanged for its watchers
		}
		// Changed, or first watched while compiling: its streams compare
		// versions themselves.
		for m := range ms {
			m.poke()
		}
	}
	for m := range s.inboundWatchers {
		m.poke()
	}
	return true
}

// Snapshot returns the latest snapshot given to Update (being served, or about
// to be), or nil before the first Update.
func (s *Server) Snapshot() *model.Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.latest
}

// Stats are the server's own counters.
type Stats struct {
	// Streams is the number of open watch streams, destinations and inbound.
	Streams int64 `json:"streams"`
	// Connections is the number of open gRPC connections (sidecars), counted
	// by StatsHandler when the gRPC server uses it.
	Connections        int64 `json:"connections"`
	Pushes             int64 `json:"pushes"`
	CertificatesIssued int64 `json:"certificatesIssued"`
}

// Stats returns the server's counters.
func (s *Server) Stats() Stats {
	return Stats{Streams: s.streams.Load(), Connections: s.conns.Load(), Pushes: s.pushes.Load(), CertificatesIssued: s.issued.Load()}
}

// WriteMetrics writes the server's series in the Prometheus text format.
func (s *Server) WriteMetrics(w *metrics.Writer) {
	w.Gauge("trellis_controlplane_connected_proxies", "Open gRPC connections from sidecars.", float64(s.conns.Load()))
	w.Gauge("trellis_controlplane_streams", "Open watch streams (destinations and inbound).", float64(s.streams.Load()))
	w.Counter("trellis_controlplane_pushes_total", "Configs sent on watch streams, first configs included.", uint64(s.pushes.Load()))
	w.Histogram("trellis_controlplane_push_latency_seconds",
		"Time from a snapshot being installed to a config it changed being sent on a stream (queued to the connection); first configs of new streams are not observed.",
		s.pushLatency)
	w.Counter("trellis_controlplane_certificates_issued_total", "Workload certificates issued by Identity.Certify.", uint64(s.issued.Load()))
}

// StatsHandler returns a gRPC stats handler that counts open connections; pass
// it to grpc.NewServer with grpc.StatsHandler.
func (s *Server) StatsHandler() stats.Handler { return connCounter{s} }

type connCounter struct{ s *Server }

func (c connCounter) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (c connCounter) HandleRPC(context.Context, stats.RPCStats)                       {}
func (c connCounter) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}
func (c connCounter) HandleConn(_ context.Context, st stats.ConnStats) {
	switch st.(type) {
	case *stats.ConnBegin:
		c.s.conns.Add(1)
	case *stats.ConnEnd:
		c.s.conns.Add(-1)
	}
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
	bundle := s.cfg.Signer.Bundle()
	if wid := req.GetWorkloadId(); s.cfg.Trust != nil && wid != "" && len(chain) > 1 {
		if w, ok := s.Snapshot().Workload(wid); ok && w.Identity == id {
			s.cfg.Trust.Holds(wid, spiffe.TrustVersion(bundle, chain[1]), chain[1])
		}
	}
	return &proxyv1.CertifyResponse{
		Chain:       chain,
		TrustBundle: bundle,
		Expires:     timestamppb.New(leaf.NotAfter),
		Identity:    sid.String(),
	}, nil
}

// Watch implements Destinations.Watch.
func (s *Server) Watch(req *proxyv1.DestinationRequest, stream grpc.ServerStreamingServer[proxyv1.DestinationConfig]) error {
	ctx := stream.Context()
	var t compile.Target
	if err := offStack(func() error {
		caller, err := peerID(ctx)
		if err != nil {
			return err
		}
		t, err = compile.ParseAuthority(req.GetAuthority(), caller.Namespace)
		if err != nil {
			return status.Error(codes.InvalidArgument, err.Error())
		}
		return nil
	}); err != nil {
		return err
	}
	if err := s.wait(ctx); err != nil {
		return err
	}
	m := &mailbox{c: make(chan struct{}, 1)}
	s.mu.Lock()
	ms := s.destWatchers[t]
	if ms == nil {
		ms = map[*mailbox]struct{}{}
		s.destWatchers[t] = ms
	}
	ms[m] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(ms, m)
		if len(ms) == 0 {
			delete(s.destWatchers, t)
		}
		s.mu.Unlock()
	}()
	return s.stream(ctx, m, func() (versioned, time.Time, error) {
		dc, at := s.destination(t)
		return dc, at, nil
	}, func(v versioned) error { return stream.SendMsg(v) })
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
	var caller spiffe.ID
	if err := offStack(func() (err error) { caller, err = peerID(ctx); return err }); err != nil {
		return err
	}
	if err := s.wait(ctx); err != nil {
		return err
	}
	id := req.GetWorkloadId()
	if err := offStack(func() error {
		w, ok := s.Snapshot().Workload(id)
		if !ok {
			return status.Errorf(codes.NotFound, "workload %q is not registered", id)
		}
		if w.Identity.Namespace != caller.Namespace || w.Identity.Account != caller.Account {
			return status.Errorf(codes.PermissionDenied, "workload %q belongs to %s, not to the caller %s", id, w.Identity, caller)
		}
		return nil
	}); err != nil {
		return err
	}
	if o := s.cfg.Trust; o != nil && req.GetTrustVersion() != "" {
		o.Holds(id, req.GetTrustVersion(), peerIssuer(ctx))
	}
	if o := s.cfg.Observer; o != nil {
		offStack(func() error { o.Connected(id); return nil })
		defer offStack(func() error { o.Disconnected(id); return nil })
	}
	m := &mailbox{c: make(chan struct{}, 1)}
	s.mu.Lock()
	s.inboundWatchers[m] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.inboundWatchers, m)
		s.mu.Unlock()
	}()
	return s.stream(ctx, m, func() (versioned, time.Time, error) {
		p := s.pub.Load()
		snap, at := p.snap, p.readyAt
		ic, err := compile.Inbound(snap, id)
		if err != nil {
			return nil, at, status.Error(codes.NotFound, err.Error())
		}
		if tv, ok := s.cfg.Signer.(trustVersioner); ok {
			ic.TrustVersion = tv.TrustVersion()
		}
		// A push caused by a rotation step is timed from that step.
		if t := time.Unix(0, s.trustAt.Load()); t.After(at) {
			at = t
		}
		return inboundMsg{ic}, at, nil
	}, func(v versioned) error { return stream.Send(v.(inboundMsg).InboundConfig) })
}

// inboundMsg is sent again when the policy or the trust version changes.
type inboundMsg struct{ *proxyv1.InboundConfig }

func (m inboundMsg) GetVersion() string {
	return m.InboundConfig.GetVersion() + "/" + m.GetTrustVersion()
}

// TrustChanged sends every inbound stream its config again if the Signer's
// trust version changed: call it after each step of a root rotation.
func (s *Server) TrustChanged() {
	s.trustAt.Store(time.Now().UnixNano())
	s.mu.Lock()
	defer s.mu.Unlock()
	for m := range s.inboundWatchers {
		m.poke()
	}
}

type versioned interface{ GetVersion() string }

// stream sends current() now and again whenever m is poked and the version
// changed, until ctx ends. current also returns when the snapshot it was
// compiled from was installed, for the push latency.
func (s *Server) stream(ctx context.Context, m *mailbox, current func() (versioned, time.Time, error), send func(versioned) error) error {
	s.streams.Add(1)
	defer s.streams.Add(-1)
	last := ""
	first := true
	step := func() error {
		v, at, err := current()
		if err != nil {
			return err
		}
		if v.GetVersion() != last {
			if err := send(v); err != nil {
				return err
			}
			s.pushes.Add(1)
			if !first {
				s.pushLatency.Observe(time.Since(at))
			}
			last = v.GetVersion()
		}
		first = false
		return nil
	}
	for {
		if err := offStack(step); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-m.c:
		}
	}
}

// destination returns t's config for the published snapshot, compiling it on
// first use, and when that snapshot was given to Update.
func (s *Server) destination(t compile.Target) (*encoded, time.Time) {
	p := s.pub.Load()
	if e, ok := p.destination(t); ok {
		return e, p.readyAt
	}
	v, _ := p.lazy.LoadOrStore(t, encode(compile.Destination(p.snap, t)))
	return v.(*encoded), p.readyAt
}

// published is a snapshot as served, with the destinations compiled for it.
type published struct {
	snap    *model.Snapshot
	readyAt time.Time // when snap was given to Update
	// dests were compiled at publication and are read-only; lazy holds
	// targets first watched later (compile.Target → *encoded).
	dests map[compile.Target]*encoded
	lazy  sync.Map
}

// destination returns t's config if it has been compiled; p may be nil.
func (p *published) destination(t compile.Target) (*encoded, bool) {
	if p == nil {
		return nil, false
	}
	if e, ok := p.dests[t]; ok {
		return e, true
	}
	if v, ok := p.lazy.Load(t); ok {
		return v.(*encoded), true
	}
	return nil, false
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

// peerIssuer returns the intermediate the peer sent after its leaf, or nil.
func peerIssuer(ctx context.Context) []byte {
	if p, ok := peer.FromContext(ctx); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 1 {
			return ti.State.PeerCertificates[1].Raw
		}
	}
	return nil
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
