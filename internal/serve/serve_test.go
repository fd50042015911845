package serve_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	proxyv1 "github.com/trellis-mesh/trellis/api/proxy/v1"
	"github.com/trellis-mesh/trellis/api/proxy/v1/proxyv1grpc"
	"github.com/trellis-mesh/trellis/internal/compile"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/internal/serve"
	"github.com/trellis-mesh/trellis/internal/spiffe"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
)

// Identities of the test mesh.
var (
	buyer  = model.Identity{Namespace: "bookbuyer", Account: "bookbuyer"}
	store1 = model.Identity{Namespace: "bookstore", Account: "bookstore"}
	store2 = model.Identity{Namespace: "bookstore", Account: "bookstore-v2"}
)

// Workload IDs of the test mesh.
const (
	buyerWorkload  = "bookbuyer/bookbuyer-dddddd"
	store1Workload = "bookstore/bookstore-v1-aaaaaa"
	store2Workload = "bookstore/bookstore-v2-bbbbbb"
)

// bookstoreAuthority is the split root service every destination test watches.
const bookstoreAuthority = "bookstore.bookstore:14001"

// meshInputs is the bookstore mesh with the root service split between v1 and v2
// with weights w1 and w2.
func meshInputs(w1, w2 int) model.Inputs {
	return model.Inputs{
		Workloads: []model.Workload{
			{ID: store1Workload, Name: "bookstore-v1", Identity: store1,
				Services: []model.ServiceMembership{{Service: "bookstore", ServicePort: 14001}, {Service: "bookstore-v1", ServicePort: 14001}},
				Address:  "127.0.0.1:20001", Ready: true},
			{ID: store2Workload, Name: "bookstore-v2", Identity: store2,
				Services: []model.ServiceMembership{{Service: "bookstore", ServicePort: 14001}, {Service: "bookstore-v2", ServicePort: 14001}},
				Address:  "127.0.0.1:20002", Ready: true},
			{ID: buyerWorkload, Name: "bookbuyer", Identity: buyer, Address: "127.0.0.1:20004", Ready: true},
		},
		Splits: []model.TrafficSplit{{
			Key:      model.Key{Namespace: "bookstore", Name: "bookstore-split"},
			Service:  "bookstore",
			Backends: []model.WeightedBackend{{Service: "bookstore-v1", Weight: w1}, {Service: "bookstore-v2", Weight: w2}},
		}},
	}
}

func meshSnapshot(t *testing.T, w1, w2 int) *model.Snapshot {
	t.Helper()
	s := model.Build(meshInputs(w1, w2))
	if len(s.Problems()) > 0 {
		t.Fatalf("test mesh has problems: %v", s.Problems())
	}
	return s
}

// tokens is a hand-written Authenticator: each token grants one identity.
type tokens map[string]model.Identity

func (ts tokens) Authenticate(_ context.Context, credential string) (model.Identity, error) {
	id, ok := ts[credential]
	if !ok {
		return model.Identity{}, errors.New("unknown token")
	}
	return id, nil
}

// observer records Connected and Disconnected calls in order.
type observer struct{ events chan string }

func (o *observer) Connected(id string)    { o.events <- "connected " + id }
func (o *observer) Disconnected(id string) { o.events <- "disconnected " + id }

// next returns the next event, or fails after a while.
func (o *observer) next(t *testing.T) string {
	t.Helper()
	select {
	case e := <-o.events:
		return e
	case <-time.After(5 * time.Second):
		t.Fatal("no observer event within 5s")
		return ""
	}
}

// none checks that no event arrives for a short while.
func (o *observer) none(t *testing.T) {
	t.Helper()
	select {
	case e := <-o.events:
		t.Errorf("unexpected observer event %q", e)
	case <-time.After(100 * time.Millisecond):
	}
}

// env is a serve.Server behind a real grpc-go server on 127.0.0.1 with TLS from a
// real CA, configured as the control plane configures it.
type env struct {
	srv      *serve.Server
	ca       *identity.CA
	obs      *observer
	trust    *trustObserver
	addr     string
	serverID spiffe.ID
}

// envOptions tune newEnv.
type envOptions struct {
	// streamTimeout, when set, ends every server-side stream's context after
	// this long, as a server shutting a stream down would.
	streamTimeout time.Duration
	// unaryTimeout does the same for unary calls.
	unaryTimeout time.Duration
}

var authTokens = tokens{"buyer-token": buyer, "store-token": store1}

func newEnv(t *testing.T, opts envOptions) *env {
	t.Helper()
	ca, err := identity.LoadOrCreate(t.TempDir(), identity.Options{})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{
		ca:       ca,
		obs:      &observer{events: make(chan string, 100)},
		trust:    &trustObserver{observer{events: make(chan string, 100)}},
		serverID: spiffe.ID{TrustDomain: ca.TrustDomain(), Namespace: "trellis-system", Account: "trellis-control-plane"},
	}
	e.srv = serve.New(serve.Config{Authenticator: authTokens, Signer: ca, Observer: e.obs, Trust: e.trust})
	cert, err := ca.ServingCert(e.serverID, []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	var sopts []grpc.ServerOption
	if opts.streamTimeout > 0 {
		sopts = append(sopts, grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			ctx, cancel := context.WithTimeout(ss.Context(), opts.streamTimeout)
			defer cancel()
			return h(srv, ctxStream{ServerStream: ss, ctx: ctx})
		}))
	}
	if opts.unaryTimeout > 0 {
		sopts = append(sopts, grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			ctx, cancel := context.WithTimeout(ctx, opts.unaryTimeout)
			defer cancel()
			return h(ctx, req)
		}))
	}
	roots := x509.NewCertPool()
	for _, der := range ca.Bundle() {
		root, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		roots.AddCert(root)
	}
	// As the control plane: a client certificate is optional (Certify comes
	// before one exists) but verified when given.
	tlsConf := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    roots,
	}
	g := grpc.NewServer(append(sopts, grpc.Creds(credentials.NewTLS(tlsConf)), serve.Codec(), grpc.StatsHandler(e.srv.StatsHandler()))...)
	e.srv.Register(g)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.addr = l.Addr().String()
	done := make(chan struct{})
	go func() {
		defer close(done)
		g.Serve(l)
	}()
	t.Cleanup(func() {
		g.Stop()
		<-done
	})
	return e
}

// ctxStream replaces a server stream's context.
type ctxStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s ctxStream) Context() context.Context { return s.ctx }

// conn dials the server as a sidecar holding a certificate for id, or, for the
// zero identity, as a sidecar that holds only the trust bundle (before
// certifying). dopts are added to the dial options.
func (e *env) conn(t *testing.T, id model.Identity, dopts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	var creds spiffe.Credentials
	if id != (model.Identity{}) {
		key, err := spiffe.NewKey()
		if err != nil {
			t.Fatal(err)
		}
		csr, err := spiffe.NewCSR(key, spiffe.ID{})
		if err != nil {
			t.Fatal(err)
		}
		chain, err := e.ca.Sign(csr, spiffe.ID{TrustDomain: e.ca.TrustDomain(), Namespace: id.Namespace, Account: id.Account}, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := creds.Store(chain, key, e.ca.Bundle()); err != nil {
			t.Fatal(err)
		}
	} else if err := creds.Store(nil, nil, e.ca.Bundle()); err != nil {
		t.Fatal(err)
	}
	tc := credentials.NewTLS(spiffe.ClientTLS(&creds, e.serverID.String()))
	c, err := grpc.NewClient(e.addr, append([]grpc.DialOption{grpc.WithTransportCredentials(tc)}, dopts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// watchDest opens Destinations.Watch for authority and returns the stream.
func watchDest(t *testing.T, ctx context.Context, c *grpc.ClientConn, authority string) grpc.ServerStreamingClient[proxyv1.DestinationConfig] {
	t.Helper()
	st, err := proxyv1grpc.NewDestinationsClient(c).Watch(ctx, &proxyv1.DestinationRequest{Authority: authority})
	if err != nil {
		t.Fatalf("Watch(%s): %v", authority, err)
	}
	return st
}

// recvResult is one Recv's outcome.
type recvResult[T any] struct {
	msg *T
	err error
}

// receiver reads a stream in the background so that tests can wait for a
// message with a timeout, or check that none arrives.
type receiver[T any] struct{ c chan recvResult[T] }

func receive[T any](st grpc.ServerStreamingClient[T]) receiver[T] {
	r := receiver[T]{c: make(chan recvResult[T], 1)}
	go func() {
		for {
			m, err := st.Recv()
			r.c <- recvResult[T]{m, err}
			if err != nil {
				close(r.c)
				return
			}
		}
	}()
	return r
}

func (r receiver[T]) next(t *testing.T) *T {
	t.Helper()
	select {
	case res, ok := <-r.c:
		if !ok {
			t.Fatal("stream already ended")
		}
		if res.err != nil {
			t.Fatalf("Recv: %v", res.err)
		}
		return res.msg
	case <-time.After(5 * time.Second):
		t.Fatal("no message within 5s")
		return nil
	}
}

func (r receiver[T]) none(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case res := <-r.c:
		msg := fmt.Sprint(res.msg)
		if len(msg) > 200 {
			msg = msg[:200] + "..."
		}
		t.Fatalf("got %s, %v; want nothing yet", msg, res.err)
	case <-time.After(d):
	}
}

func (r receiver[T]) err(t *testing.T) error {
	t.Helper()
	select {
	case res := <-r.c:
		if res.err == nil {
			t.Fatalf("got message %v, want an error", res.msg)
		}
		return res.err
	case <-time.After(5 * time.Second):
		t.Fatal("stream did not end within 5s")
		return nil
	}
}

func wantCode(t *testing.T, err error, want codes.Code) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Fatalf("got %v (%v), want code %v", got, err, want)
	}
}

func destination(t *testing.T, snap *model.Snapshot, authority, callerNS string) *proxyv1.DestinationConfig {
	t.Helper()
	target, err := compile.ParseAuthority(authority, callerNS)
	if err != nil {
		t.Fatal(err)
	}
	return compile.Destination(snap, target)
}

func diffProto(want, got proto.Message) string { return cmp.Diff(want, got, protocmp.Transform()) }

func TestCertify(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.srv.Update(meshSnapshot(t, 50, 50))
	c := proxyv1grpc.NewIdentityClient(e.conn(t, model.Identity{}))
	bundle := x509.NewCertPool()
	for _, der := range e.ca.Bundle() {
		root, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		bundle.AddCert(root)
	}

	tests := []struct {
		name       string
		credential string
		asks       spiffe.ID // the identity the CSR asks for
		want       model.Identity
		wantCode   codes.Code
	}{
		{name: "grants the token's identity", credential: "buyer-token", want: buyer},
		{name: "ignores the identity the CSR asks for", credential: "buyer-token",
			asks: spiffe.ID{TrustDomain: "cluster.local", Namespace: "bookstore", Account: "bookstore"}, want: buyer},
		{name: "another token, another identity", credential: "store-token",
			asks: spiffe.ID{TrustDomain: "cluster.local", Namespace: "bookbuyer", Account: "bookbuyer"}, want: store1},
		{name: "unknown credential", credential: "stolen", wantCode: codes.Unauthenticated},
		{name: "empty credential", credential: "", wantCode: codes.Unauthenticated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key, err := spiffe.NewKey()
			if err != nil {
				t.Fatal(err)
			}
			csr, err := spiffe.NewCSR(key, tt.asks)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			resp, err := c.Certify(ctx, &proxyv1.CertifyRequest{Csr: csr, Credential: tt.credential})
			if tt.wantCode != codes.OK {
				wantCode(t, err, tt.wantCode)
				return
			}
			if err != nil {
				t.Fatalf("Certify: %v", err)
			}
			wantID := spiffe.ID{TrustDomain: "cluster.local", Namespace: tt.want.Namespace, Account: tt.want.Account}
			if resp.GetIdentity() != wantID.String() {
				t.Errorf("response identity = %q, want %q", resp.GetIdentity(), wantID)
			}
			if len(resp.GetChain()) == 0 {
				t.Fatal("empty chain")
			}
			leaf, err := x509.ParseCertificate(resp.GetChain()[0])
			if err != nil {
				t.Fatal(err)
			}
			gotID, err := spiffe.FromCertificate(leaf)
			if err != nil {
				t.Fatal(err)
			}
			if gotID != wantID {
				t.Errorf("leaf identity = %s, want %s", gotID, wantID)
			}
			if !leaf.NotAfter.Equal(resp.GetExpires().AsTime()) {
				t.Errorf("expires = %v, want the leaf's NotAfter %v", resp.GetExpires().AsTime(), leaf.NotAfter)
			}
			// The chain is for the CSR's key and verifies with the bundle sent.
			var creds spiffe.Credentials
			if err := creds.Store(resp.GetChain(), key, resp.GetTrustBundle()); err != nil {
				t.Errorf("the issued chain does not install with the CSR's key and the bundle sent: %v", err)
			}
			inter := x509.NewCertPool()
			for _, der := range resp.GetChain()[1:] {
				ic, err := x509.ParseCertificate(der)
				if err != nil {
					t.Fatal(err)
				}
				inter.AddCert(ic)
			}
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: bundle, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				t.Errorf("leaf does not verify against the CA's bundle: %v", err)
			}
		})
	}
	if got := e.srv.Stats().CertificatesIssued; got != 3 {
		t.Errorf("Stats().CertificatesIssued = %d, want 3", got)
	}
}

func TestCertifyBadCSR(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.srv.Update(meshSnapshot(t, 50, 50))
	c := proxyv1grpc.NewIdentityClient(e.conn(t, model.Identity{}))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := c.Certify(ctx, &proxyv1.CertifyRequest{Csr: []byte("not a CSR"), Credential: "buyer-token"})
	wantCode(t, err, codes.InvalidArgument)
}

func TestStreamErrors(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.srv.Update(meshSnapshot(t, 50, 50))
	tests := []struct {
		name   string
		caller model.Identity // zero: no client certificate
		open   func(ctx context.Context, c *grpc.ClientConn) (func() error, error)
		want   codes.Code
	}{
		{
			name: "destinations without client certificate",
			open: func(ctx context.Context, c *grpc.ClientConn) (func() error, error) {
				st, err := proxyv1grpc.NewDestinationsClient(c).Watch(ctx, &proxyv1.DestinationRequest{Authority: bookstoreAuthority})
				return func() error { _, err := st.Recv(); return err }, err
			},
			want: codes.Unauthenticated,
		},
		{
			name: "inbound without client certificate",
			open: func(ctx context.Context, c *grpc.ClientConn) (func() error, error) {
				st, err := proxyv1grpc.NewInboundClient(c).Watch(ctx, &proxyv1.InboundRequest{WorkloadId: buyerWorkload})
				return func() error { _, err := st.Recv(); return err }, err
			},
			want: codes.Unauthenticated,
		},
		{
			name:   "destinations with a bad authority",
			caller: buyer,
			open: func(ctx context.Context, c *grpc.ClientConn) (func() error, error) {
				st, err := proxyv1grpc.NewDestinationsClient(c).Watch(ctx, &proxyv1.DestinationRequest{Authority: "bookstore.bookstore:port"})
				return func() error { _, err := st.Recv(); return err }, err
			},
			want: codes.InvalidArgument,
		},
		{
			name:   "inbound for another identity's workload",
			caller: buyer,
			open: func(ctx context.Context, c *grpc.ClientConn) (func() error, error) {
				st, err := proxyv1grpc.NewInboundClient(c).Watch(ctx, &proxyv1.InboundRequest{WorkloadId: store1Workload})
				return func() error { _, err := st.Recv(); return err }, err
			},
			want: codes.PermissionDenied,
		},
		{
			name:   "inbound for another account's workload in the caller's namespace",
			caller: store1,
			open: func(ctx context.Context, c *grpc.ClientConn) (func() error, error) {
				st, err := proxyv1grpc.NewInboundClient(c).Watch(ctx, &proxyv1.InboundRequest{WorkloadId: store2Workload})
				return func() error { _, err := st.Recv(); return err }, err
			},
			want: codes.PermissionDenied,
		},
		{
			name:   "inbound for an unknown workload",
			caller: buyer,
			open: func(ctx context.Context, c *grpc.ClientConn) (func() error, error) {
				st, err := proxyv1grpc.NewInboundClient(c).Watch(ctx, &proxyv1.InboundRequest{WorkloadId: "bookbuyer/nobody-000000"})
				return func() error { _, err := st.Recv(); return err }, err
			},
			want: codes.NotFound,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			recv, err := tt.open(ctx, e.conn(t, tt.caller))
			if err != nil {
				t.Fatal(err)
			}
			wantCode(t, recv(), tt.want)
			// A refused stream never counts as a live sidecar.
			e.obs.none(t)
		})
	}
}

// TestNothingBeforeFirstUpdate: until the sources are synced, every call waits,
// and a call whose context ends first fails Unavailable.
func TestNothingBeforeFirstUpdate(t *testing.T) {
	t.Run("watch waits for Update", func(t *testing.T) {
		e := newEnv(t, envOptions{})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		r := receive(watchDest(t, ctx, e.conn(t, buyer), bookstoreAuthority))
		r.none(t, 300*time.Millisecond)
		if e.srv.Snapshot() != nil {
			t.Fatal("Snapshot() before the first Update is not nil")
		}
		snap := meshSnapshot(t, 50, 50)
		e.srv.Update(snap)
		if d := diffProto(destination(t, snap, bookstoreAuthority, "bookbuyer"), r.next(t)); d != "" {
			t.Errorf("first message (-want +got):\n%s", d)
		}
	})

	e := newEnv(t, envOptions{streamTimeout: 300 * time.Millisecond, unaryTimeout: 300 * time.Millisecond})
	tests := []struct {
		name string
		call func(ctx context.Context, c *grpc.ClientConn) error
	}{
		{"Certify", func(ctx context.Context, c *grpc.ClientConn) error {
			key, err := spiffe.NewKey()
			if err != nil {
				return err
			}
			csr, err := spiffe.NewCSR(key, spiffe.ID{})
			if err != nil {
				return err
			}
			_, err = proxyv1grpc.NewIdentityClient(c).Certify(ctx, &proxyv1.CertifyRequest{Csr: csr, Credential: "buyer-token"})
			return err
		}},
		{"Destinations.Watch", func(ctx context.Context, c *grpc.ClientConn) error {
			st, err := proxyv1grpc.NewDestinationsClient(c).Watch(ctx, &proxyv1.DestinationRequest{Authority: bookstoreAuthority})
			if err != nil {
				return err
			}
			_, err = st.Recv()
			return err
		}},
		{"Inbound.Watch", func(ctx context.Context, c *grpc.ClientConn) error {
			st, err := proxyv1grpc.NewInboundClient(c).Watch(ctx, &proxyv1.InboundRequest{WorkloadId: buyerWorkload})
			if err != nil {
				return err
			}
			_, err = st.Recv()
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name+" ends Unavailable", func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			start := time.Now()
			err := tt.call(ctx, e.conn(t, buyer))
			wantCode(t, err, codes.Unavailable)
			if d := time.Since(start); d < 250*time.Millisecond {
				t.Errorf("ended after %v, want it to wait for the server's deadline", d)
			}
		})
	}
	e.obs.none(t)
}

func TestDestinationsWatch(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	a := meshSnapshot(t, 50, 50)
	e.srv.Update(a)
	r := receive(watchDest(t, ctx, e.conn(t, buyer), bookstoreAuthority))

	first := r.next(t)
	if d := diffProto(destination(t, a, bookstoreAuthority, "bookbuyer"), first); d != "" {
		t.Fatalf("first message (-want +got):\n%s", d)
	}
	if got := first.GetRoutes()[0].GetBackends()[0].GetWeight(); got != 50 {
		t.Fatalf("first message: weight of bookstore-v1 = %d, want 50", got)
	}

	b := meshSnapshot(t, 90, 10)
	e.srv.Update(b)
	second := r.next(t)
	if d := diffProto(destination(t, b, bookstoreAuthority, "bookbuyer"), second); d != "" {
		t.Fatalf("after Update (-want +got):\n%s", d)
	}
	if second.GetVersion() == first.GetVersion() {
		t.Fatalf("version did not change after the weights did: %s", second.GetVersion())
	}

	// The same content again, built anew: same hash, nothing sent, and the
	// snapshot being served stays the one installed.
	again := meshSnapshot(t, 90, 10)
	if again == b || again.Hash() != b.Hash() {
		t.Fatal("test setup: want a distinct snapshot with the same hash")
	}
	e.srv.Update(again)
	if e.srv.Snapshot() != b {
		t.Error("Update with an equal hash replaced the snapshot being served")
	}
	r.none(t, 200*time.Millisecond)

	// A change elsewhere in the mesh leaves this destination's version alone.
	in := meshInputs(90, 10)
	in.Workloads[2].Address = "127.0.0.1:20099" // the buyer: no part of bookstore's config
	elsewhere := model.Build(in)
	if elsewhere.Hash() == b.Hash() {
		t.Fatal("test setup: want a different snapshot")
	}
	e.srv.Update(elsewhere)
	if e.srv.Snapshot() != elsewhere {
		t.Error("Update with a new hash did not install the snapshot")
	}
	r.none(t, 200*time.Millisecond)

	// And back: the next message is the first one again.
	e.srv.Update(a)
	if d := diffProto(first, r.next(t)); d != "" {
		t.Errorf("after going back (-want +got):\n%s", d)
	}
}

// bigSnapshot is the mesh with many more bookstore-v1 workloads, so that each
// bookstore config is tens of kilobytes and a few fill a stream's flow-control
// window.
func bigSnapshot(t *testing.T, w1, w2 int) *model.Snapshot {
	t.Helper()
	in := meshInputs(w1, w2)
	for i := range 400 {
		in.Workloads = append(in.Workloads, model.Workload{
			ID: fmt.Sprintf("bookstore/bookstore-v1-%06d", i), Name: "bookstore-v1", Identity: store1,
			Services: []model.ServiceMembership{{Service: "bookstore", ServicePort: 14001}, {Service: "bookstore-v1", ServicePort: 14001}},
			Address:  fmt.Sprintf("127.0.0.1:%d", 30000+i), Ready: true,
		})
	}
	return model.Build(in)
}

// TestUpdateNeverBlocks: a sidecar that stops reading must not slow Update down,
// and a sidecar that reads ends up with the latest config.
func TestUpdateNeverBlocks(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// Two snapshots whose bookstore configs differ, and the one to end on.
	snaps := []*model.Snapshot{bigSnapshot(t, 10, 90), bigSnapshot(t, 20, 80)}
	final := bigSnapshot(t, 77, 23)
	want := destination(t, final, bookstoreAuthority, "bookbuyer")
	if size := proto.Size(want); size < 16<<10 {
		t.Fatalf("test setup: config is %d bytes, want at least 16 KiB", size)
	}
	e.srv.Update(snaps[0])

	// The stalled sidecar's connection has a small fixed flow-control window
	// (no window growth), so that the server's sends to it soon block.
	stalledConn := e.conn(t, buyer, grpc.WithInitialWindowSize(1<<16), grpc.WithInitialConnWindowSize(1<<16))
	stalled := watchDest(t, ctx, stalledConn, bookstoreAuthority)
	if _, err := stalled.Recv(); err != nil { // it is open; it never reads again
		t.Fatal(err)
	}
	reading := receive(watchDest(t, ctx, e.conn(t, store1), bookstoreAuthority))
	reading.next(t)

	// A few slow updates, which the reader follows one by one, fill the
	// stalled stream's window: the server is now blocked sending to it.
	const slow = 10
	for i := range slow {
		s := snaps[(i+1)%2]
		e.srv.Update(s)
		if got, want := reading.next(t).GetVersion(), destination(t, s, bookstoreAuthority, "bookbuyer").GetVersion(); got != want {
			t.Fatalf("slow update %d: reader got version %s, want %s", i, got, want)
		}
	}
	readerPushes := int64(1 + slow)
	if stalledPushes := e.srv.Stats().Pushes - readerPushes; stalledPushes >= 1+slow {
		t.Fatalf("test setup: the stalled stream took all %d messages; it should have blocked", stalledPushes)
	}

	const updates = 1000
	start := time.Now()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range updates {
			e.srv.Update(snaps[i%2])
		}
		e.srv.Update(final)
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatalf("%d Updates did not finish within 2s: Update blocks", updates+1)
	}
	t.Logf("%d Updates took %v", updates+1, time.Since(start))

	got := 0
	for {
		m := reading.next(t)
		got++
		if m.GetVersion() == want.GetVersion() {
			if d := diffProto(want, m); d != "" {
				t.Errorf("final message (-want +got):\n%s", d)
			}
			break
		}
	}
	t.Logf("the reading stream received %d messages for %d quick updates", got, updates+1)
	reading.none(t, 100*time.Millisecond)
	if n := e.srv.Stats().Streams; n != 2 {
		t.Errorf("Stats().Streams = %d, want 2 (the stalled stream is still open)", n)
	}
}

func TestInboundWatch(t *testing.T) {
	e := newEnv(t, envOptions{})
	a := meshSnapshot(t, 50, 50)
	e.srv.Update(a)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	st, err := proxyv1grpc.NewInboundClient(e.conn(t, store1)).Watch(ctx, &proxyv1.InboundRequest{WorkloadId: store1Workload})
	if err != nil {
		t.Fatal(err)
	}
	r := receive(st)
	want, err := compile.Inbound(a, store1Workload)
	if err != nil {
		t.Fatal(err)
	}
	want.TrustVersion = e.ca.TrustVersion()
	if d := diffProto(want, r.next(t)); d != "" {
		t.Errorf("first message (-want +got):\n%s", d)
	}
	if got, want := e.obs.next(t), "connected "+store1Workload; got != want {
		t.Errorf("observer: got %q, want %q", got, want)
	}

	// A new access policy for the workload's identity reaches it.
	in := meshInputs(50, 50)
	in.RouteGroups = []model.HTTPRouteGroup{{Key: model.Key{Namespace: "bookstore", Name: "routes"}, Matches: []model.HTTPMatch{{Name: "all", PathRegex: ".*"}}}}
	in.Targets = []model.TrafficTarget{{Key: model.Key{Namespace: "bookstore", Name: "bookstore"}, Destination: store1, Sources: []model.Identity{buyer},
		Rules: []model.TrafficRule{{Kind: model.RuleHTTPRouteGroup, Name: "routes"}}}}
	b := model.Build(in)
	e.srv.Update(b)
	want, err = compile.Inbound(b, store1Workload)
	if err != nil {
		t.Fatal(err)
	}
	want.TrustVersion = e.ca.TrustVersion()
	got := r.next(t)
	if d := diffProto(want, got); d != "" {
		t.Errorf("after Update (-want +got):\n%s", d)
	}
	if len(got.GetAuthorizations()) != 1 {
		t.Errorf("got %d authorizations, want 1", len(got.GetAuthorizations()))
	}

	cancel()
	if got, want := e.obs.next(t), "disconnected "+store1Workload; got != want {
		t.Errorf("observer: got %q, want %q", got, want)
	}
	e.obs.none(t)
}

// TestInboundTrustChanged: a rotation step reaches inbound streams as a new
// trust version with the same policy version, and the trust observer learns
// what the sidecar reported and what Certify issued.
func TestInboundTrustChanged(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.srv.Update(meshSnapshot(t, 50, 50))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := proxyv1grpc.NewInboundClient(e.conn(t, store1)).Watch(ctx, &proxyv1.InboundRequest{WorkloadId: store1Workload, TrustVersion: "reported"})
	if err != nil {
		t.Fatal(err)
	}
	r := receive(st)
	first := r.next(t)
	if got, want := first.GetTrustVersion(), e.ca.TrustVersion(); got != want {
		t.Errorf("first trust_version = %q, want the CA's %q", got, want)
	}
	if got, want := e.trust.next(t), store1Workload+" reported issuer=true"; got != want {
		t.Errorf("trust observer at stream open: got %q, want %q", got, want)
	}
	e.srv.TrustChanged()
	r.none(t, 100*time.Millisecond) // nothing changed: nothing sent
	if err := e.ca.Prepare(); err != nil {
		t.Fatal(err)
	}
	e.srv.TrustChanged()
	second := r.next(t)
	if second.GetTrustVersion() == first.GetTrustVersion() || second.GetTrustVersion() != e.ca.TrustVersion() {
		t.Errorf("after Prepare: trust_version %q (was %q), want the CA's new %q", second.GetTrustVersion(), first.GetTrustVersion(), e.ca.TrustVersion())
	}
	if second.GetVersion() != first.GetVersion() {
		t.Errorf("after Prepare: policy version %q, want %q unchanged", second.GetVersion(), first.GetVersion())
	}

	csr, _ := newCSRFor(t)
	resp, err := proxyv1grpc.NewIdentityClient(e.conn(t, model.Identity{})).Certify(ctx, &proxyv1.CertifyRequest{Csr: csr, Credential: "store-token", WorkloadId: store1Workload})
	if err != nil {
		t.Fatal(err)
	}
	want := spiffe.TrustVersion(resp.GetTrustBundle(), resp.GetChain()[1])
	if got := e.trust.next(t); got != store1Workload+" "+want+" issuer=true" {
		t.Errorf("trust observer after Certify: got %q, want %q", got, store1Workload+" "+want+" issuer=true")
	}
	if want != e.ca.TrustVersion() {
		t.Errorf("version of what Certify returned = %s, want the CA's %s", want, e.ca.TrustVersion())
	}
	// A workload ID that the credential does not own is not recorded.
	if _, err := proxyv1grpc.NewIdentityClient(e.conn(t, model.Identity{})).Certify(ctx, &proxyv1.CertifyRequest{Csr: csr, Credential: "buyer-token", WorkloadId: store1Workload}); err != nil {
		t.Fatal(err)
	}
	e.trust.none(t)
}

func newCSRFor(t *testing.T) ([]byte, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := spiffe.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := spiffe.NewCSR(key, spiffe.ID{})
	if err != nil {
		t.Fatal(err)
	}
	return csr, key
}

// trustObserver records Holds calls as "workload version issuer=bool".
type trustObserver struct{ observer }

func (o *trustObserver) Holds(id, version string, issuer []byte) {
	o.events <- fmt.Sprintf("%s %s issuer=%v", id, version, issuer != nil)
}

// TestCompiledOnceShared: every watcher of one destination receives the same
// message, whoever asks and however the authority is spelled.
func TestCompiledOnceShared(t *testing.T) {
	e := newEnv(t, envOptions{})
	a := meshSnapshot(t, 50, 50)
	e.srv.Update(a)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	watchers := []struct {
		caller    model.Identity
		authority string
	}{
		{buyer, bookstoreAuthority},
		{buyer, bookstoreAuthority},
		{store2, "bookstore:14001"},
		{buyer, "bookstore.bookstore.svc.cluster.local:14001"},
	}
	var (
		mu   sync.Mutex
		msgs = make([]*proxyv1.DestinationConfig, len(watchers))
		wg   sync.WaitGroup
	)
	for i, w := range watchers {
		st := watchDest(t, ctx, e.conn(t, w.caller), w.authority)
		wg.Add(1)
		go func() {
			defer wg.Done()
			m, err := st.Recv()
			if err != nil {
				t.Errorf("watcher %d: %v", i, err)
				return
			}
			mu.Lock()
			msgs[i] = m
			mu.Unlock()
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	want := destination(t, a, bookstoreAuthority, "bookbuyer")
	wantBytes, err := proto.MarshalOptions{Deterministic: true}.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	for i, m := range msgs {
		if !proto.Equal(want, m) {
			t.Errorf("watcher %d (%s as %s): message differs (-want +got):\n%s", i, watchers[i].authority, watchers[i].caller, diffProto(want, m))
		}
		if m.GetVersion() != want.GetVersion() {
			t.Errorf("watcher %d: version %s, want %s", i, m.GetVersion(), want.GetVersion())
		}
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != string(wantBytes) {
			t.Errorf("watcher %d: bytes differ from the compiled config", i)
		}
	}
	if n := e.srv.Stats().Streams; n != int64(len(watchers)) {
		t.Errorf("Stats().Streams = %d, want %d", n, len(watchers))
	}
	if n := e.srv.Stats().Pushes; n != int64(len(watchers)) {
		t.Errorf("Stats().Pushes = %d, want %d", n, len(watchers))
	}
	if n := e.srv.Stats().Connections; n != int64(len(watchers)) {
		t.Errorf("Stats().Connections = %d, want %d (one per watcher)", n, len(watchers))
	}
}

// TestCertifyLifetime checks that a MeshConfig's certificate validity wins over
// the server's default lifetime.
func TestCertifyLifetime(t *testing.T) {
	for _, tt := range []struct {
		name     string
		validity time.Duration
		want     time.Duration
	}{
		{"server default", 0, 24 * time.Hour},
		{"mesh config", 90 * time.Minute, 90 * time.Minute},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, envOptions{})
			in := meshInputs(50, 50)
			ms := model.DefaultMeshSettings()
			ms.CertValidity = tt.validity
			in.Mesh = &ms
			e.srv.Update(model.Build(in))
			key, _ := spiffe.NewKey()
			csr, _ := spiffe.NewCSR(key, spiffe.ID{})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			resp, err := proxyv1grpc.NewIdentityClient(e.conn(t, model.Identity{})).Certify(ctx, &proxyv1.CertifyRequest{Csr: csr, Credential: "buyer-token"})
			if err != nil {
				t.Fatal(err)
			}
			life := time.Until(resp.GetExpires().AsTime())
			if life > tt.want || life < tt.want-time.Minute {
				t.Errorf("certificate lives %s, want about %s", life.Round(time.Second), tt.want)
			}
		})
	}
}

// TestBurstCoalesced: a burst of 100 changes to a destination reaches a stream
// that cannot keep up as far fewer messages, the last of which is the latest
// config, while a stream of another destination receives nothing.
func TestBurstCoalesced(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const burst = 100
	snaps := make([]*model.Snapshot, burst)
	for i := range snaps {
		snaps[i] = bigSnapshot(t, i+1, 100) // each a different bookstore version
	}
	initial := bigSnapshot(t, 100, 1)
	e.srv.Update(initial)

	// The slow sidecar's connection has a small fixed flow-control window, so
	// that the server's sends to it block after a few big configs.
	slowConn := e.conn(t, buyer, grpc.WithInitialWindowSize(1<<16), grpc.WithInitialConnWindowSize(1<<16))
	slow := watchDest(t, ctx, slowConn, bookstoreAuthority)
	if _, err := slow.Recv(); err != nil {
		t.Fatal(err)
	}
	other := receive(watchDest(t, ctx, e.conn(t, store1), "bookstore-v2.bookstore:14001"))
	other.next(t)
	pushesBefore := e.srv.Stats().Pushes

	for _, s := range snaps {
		e.srv.Update(s)
	}
	// Let the server send what the window takes and coalesce the rest.
	time.Sleep(500 * time.Millisecond)

	want := destination(t, snaps[burst-1], bookstoreAuthority, "bookbuyer")
	got := 0
	for {
		m, err := slow.Recv()
		if err != nil {
			t.Fatalf("after %d messages: %v", got, err)
		}
		got++
		if m.GetVersion() == want.GetVersion() {
			if d := diffProto(want, m); d != "" {
				t.Errorf("last message (-want +got):\n%s", d)
			}
			break
		}
		if got > burst {
			t.Fatalf("received %d messages without the latest version %s", got, want.GetVersion())
		}
	}
	t.Logf("the slow stream received %d messages for a burst of %d changes", got, burst)
	if got > burst/10 {
		t.Errorf("the slow stream received %d messages for %d changes, want at most %d (latest value only)", got, burst, burst/10)
	}
	// bookstore-v2's config never changed: its stream got nothing.
	other.none(t, 100*time.Millisecond)
	if sent := e.srv.Stats().Pushes - pushesBefore; sent != int64(got) {
		t.Errorf("server pushed %d messages during the burst, want %d (all to the slow stream, none to the other)", sent, got)
	}
}

// TestRegisterServesEveryMethod: Register installs its own watch handlers on
// copies of the generated service descriptors; every generated method must
// still be served, with the same streaming kind.
func TestRegisterServesEveryMethod(t *testing.T) {
	g := grpc.NewServer()
	serve.New(serve.Config{}).Register(g)
	got := g.GetServiceInfo()
	for _, desc := range []grpc.ServiceDesc{proxyv1grpc.Identity_ServiceDesc, proxyv1grpc.Destinations_ServiceDesc, proxyv1grpc.Inbound_ServiceDesc} {
		var want []grpc.MethodInfo
		for _, m := range desc.Methods {
			want = append(want, grpc.MethodInfo{Name: m.MethodName})
		}
		for _, st := range desc.Streams {
			want = append(want, grpc.MethodInfo{Name: st.StreamName, IsClientStream: st.ClientStreams, IsServerStream: st.ServerStreams})
		}
		if diff := cmp.Diff(want, got[desc.ServiceName].Methods); diff != "" {
			t.Errorf("%s: methods served (-generated +registered):\n%s", desc.ServiceName, diff)
		}
	}
}
