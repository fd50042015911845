package proxy_test

// HTTP/2 with prior knowledge (h2c) and gRPC, end to end through two
// sidecars: the app dials its sidecar's outbound listener directly and names
// the service in :authority; the sidecars speak HTTP/2 over mTLS (ALPN h2);
// the server sidecar hands the request to the app as h2c. grpc-go runs on both
// ends, in the test only: the sidecar never links it (test/arch).

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/internal/source/local"
)

// grpcReg registers a workload of the bookstore service on port 14001,
// protocol grpc.
func grpcReg(name string) local.Registration {
	return local.Registration{Name: name, Namespace: "bookstore", Account: "bookstore",
		Services: []model.ServiceMembership{{Service: "bookstore", ServicePort: 14001, Protocol: model.ProtocolGRPC}}}
}

// h2cClient is an app's HTTP/2 client with prior knowledge whose every
// connection goes to addr, its sidecar's outbound listener.
func h2cClient(t *testing.T, addr string) *http.Client {
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	tr := &http.Transport{
		Protocols: &protos,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 15 * time.Second}
}

// newH2CApp serves h with HTTP/1.1 and h2c on loopback.
func newH2CApp(t *testing.T, h http.Handler) *httptest.Server {
	srv := httptest.NewUnstartedServer(h)
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv.Config.Protocols = &protos
	srv.Start()
	t.Cleanup(srv.Close)
	return srv
}

func TestH2CThroughTwoSidecars(t *testing.T) {
	t.Parallel()
	srv := newH2CApp(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("X-App-Proto", r.Proto)
		w.Header().Set("Trailer", "X-Count")
		w.Header().Add("Trailer", "X-Request-Trailer")
		fmt.Fprintf(w, "%s %s %s", r.Method, r.URL.Path, body)
		w.Header().Set("X-Count", fmt.Sprint(len(body)))
		w.Header().Set("X-Request-Trailer", r.Trailer.Get("X-Sum"))
	}))
	m := newMesh(t, permissiveMesh)
	m.sidecar(sidecarSpec{reg: grpcReg("bookstore-v1"), app: srv.Listener.Addr().String(), ready: true})
	client := m.sidecar(sidecarSpec{reg: bookbuyerReg()})
	hc := h2cClient(t, client.p.Outbound.String())
	eventually(t, 15*time.Second, func() error {
		resp, err := hc.Get(bookstoreURL + "/")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET / over h2c = %d %s", resp.StatusCode, resp.Header.Get("X-Trellis-Reason"))
		}
		return nil
	})

	req, _ := http.NewRequest(http.MethodPost, bookstoreURL+"/books", strings.NewReader("moby dick"))
	req.Trailer = http.Header{"X-Sum": {"42"}}
	req.ContentLength = -1 // request trailers need a body of unknown length
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.ProtoMajor != 2 || resp.StatusCode != http.StatusOK || string(body) != "POST /books moby dick" {
		t.Errorf("response = %s %d %q; want HTTP/2.0 200 %q", resp.Proto, resp.StatusCode, body, "POST /books moby dick")
	}
	if got := resp.Header.Get("X-App-Proto"); got != "HTTP/2.0" {
		t.Errorf("the app received %q, want HTTP/2.0 (h2c from the server sidecar)", got)
	}
	for k, want := range map[string]string{"X-Count": "9", "X-Request-Trailer": "42"} {
		if got := resp.Trailer.Get(k); got != want {
			t.Errorf("response trailer %s = %q, want %q", k, got, want)
		}
	}
}

// books is a gRPC service written by hand, messages as wrapperspb.StringValue:
// Get (unary) and List (server streaming).
type books struct {
	release chan struct{} // List holds its second message until closed
}

func (b *books) get(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
	grpc.SetHeader(ctx, metadata.Pairs("x-shelf", "fiction"))
	grpc.SetTrailer(ctx, metadata.Pairs("x-served-by", "bookstore-v1"))
	if in.GetValue() != "moby-dick" {
		return nil, status.Errorf(codes.NotFound, "no book %q", in.GetValue())
	}
	return wrapperspb.String("Moby Dick"), nil
}

func (b *books) list(in *wrapperspb.StringValue, stream grpc.ServerStream) error {
	if err := stream.SendMsg(wrapperspb.String(in.GetValue() + " 1")); err != nil {
		return err
	}
	select {
	case <-b.release:
	case <-stream.Context().Done():
		return stream.Context().Err()
	}
	for i := 2; i <= 3; i++ {
		if err := stream.SendMsg(wrapperspb.String(fmt.Sprintf("%s %d", in.GetValue(), i))); err != nil {
			return err
		}
	}
	stream.SetTrailer(metadata.Pairs("x-count", "3"))
	return nil
}

var booksDesc = grpc.ServiceDesc{
	ServiceName: "trellis.test.Books",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Get",
		Handler: func(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			in := new(wrapperspb.StringValue)
			if err := dec(in); err != nil {
				return nil, err
			}
			return srv.(*books).get(ctx, in)
		},
	}},
	Streams: []grpc.StreamDesc{{
		// Chat answers each message as it comes, upper-cased: both
		// directions at once.
		StreamName:    "Chat",
		ServerStreams: true,
		ClientStreams: true,
		Handler: func(_ any, stream grpc.ServerStream) error {
			for {
				in := new(wrapperspb.StringValue)
				if err := stream.RecvMsg(in); err == io.EOF {
					return nil
				} else if err != nil {
					return err
				}
				if err := stream.SendMsg(wrapperspb.String(strings.ToUpper(in.GetValue()))); err != nil {
					return err
				}
			}
		},
	}, {
		StreamName:    "List",
		ServerStreams: true,
		Handler: func(srv any, stream grpc.ServerStream) error {
			in := new(wrapperspb.StringValue)
			if err := stream.RecvMsg(in); err != nil {
				return err
			}
			return srv.(*books).list(in, stream)
		},
	}},
}

func TestGRPCThroughTwoSidecars(t *testing.T) {
	t.Parallel()
	impl := &books{release: make(chan struct{})}
	gs := grpc.NewServer()
	gs.RegisterService(&booksDesc, impl)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)

	m := newMesh(t, permissiveMesh)
	server := m.sidecar(sidecarSpec{reg: grpcReg("bookstore-v1"), app: ln.Addr().String(), ready: true})
	client := m.sidecar(sidecarSpec{reg: bookbuyerReg()})

	// The app dials its sidecar's outbound listener and names the service
	// as the authority.
	cc := grpcThrough(t, client, "bookstore.bookstore:14001")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	get := func(name string, opts ...grpc.CallOption) (*wrapperspb.StringValue, error) {
		out := new(wrapperspb.StringValue)
		return out, cc.Invoke(ctx, "/trellis.test.Books/Get", wrapperspb.String(name), out, opts...)
	}
	eventually(t, 15*time.Second, func() error {
		_, err := get("moby-dick")
		return err
	})

	t.Run("unary with headers and trailers", func(t *testing.T) {
		var header, trailer metadata.MD
		out, err := get("moby-dick", grpc.Header(&header), grpc.Trailer(&trailer))
		if err != nil || out.GetValue() != "Moby Dick" {
			t.Fatalf("Get = %q, %v; want %q", out.GetValue(), err, "Moby Dick")
		}
		if got := header.Get("x-shelf"); len(got) != 1 || got[0] != "fiction" {
			t.Errorf("header x-shelf = %q, want [fiction]", got)
		}
		if got := trailer.Get("x-served-by"); len(got) != 1 || got[0] != "bookstore-v1" {
			t.Errorf("trailer x-served-by = %q, want [bookstore-v1]", got)
		}
	})
	t.Run("unary error keeps its code and message", func(t *testing.T) {
		_, err := get("missing")
		if st := status.Convert(err); st.Code() != codes.NotFound || st.Message() != `no book "missing"` {
			t.Errorf("Get(missing) = %v; want NotFound %q", err, `no book "missing"`)
		}
	})
	t.Run("server streaming arrives message by message", func(t *testing.T) {
		stream, err := cc.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, "/trellis.test.Books/List")
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.SendMsg(wrapperspb.String("volume")); err != nil {
			t.Fatal(err)
		}
		if err := stream.CloseSend(); err != nil {
			t.Fatal(err)
		}
		// The first message comes while the app holds the rest: the
		// sidecars stream, they do not buffer the response.
		first := new(wrapperspb.StringValue)
		recvd := make(chan error, 1)
		go func() { recvd <- stream.RecvMsg(first) }()
		select {
		case err := <-recvd:
			if err != nil || first.GetValue() != "volume 1" {
				t.Fatalf("first message = %q, %v; want %q", first.GetValue(), err, "volume 1")
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the first message did not arrive while the app held the stream open")
		}
		close(impl.release)
		var got []string
		for {
			msg := new(wrapperspb.StringValue)
			if err := stream.RecvMsg(msg); err == io.EOF {
				break
			} else if err != nil {
				t.Fatalf("after %q: %v", got, err)
			}
			got = append(got, msg.GetValue())
		}
		if want := []string{"volume 2", "volume 3"}; strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("messages = %q, want %q", got, want)
		}
		if tr := stream.Trailer().Get("x-count"); len(tr) != 1 || tr[0] != "3" {
			t.Errorf("stream trailer x-count = %q, want [3]", tr)
		}
	})
	t.Run("the sidecar's own refusal is a gRPC status", func(t *testing.T) {
		nowhere := grpcThrough(t, client, "nowhere.bookstore:14001")
		var trailer metadata.MD // a trailers-only answer: its headers are the trailer
		err := nowhere.Invoke(ctx, "/trellis.test.Books/Get", wrapperspb.String("moby-dick"), new(wrapperspb.StringValue), grpc.Trailer(&trailer))
		st := status.Convert(err)
		if st.Code() != codes.PermissionDenied || !strings.HasPrefix(st.Message(), "trellis: egress_denied: ") {
			t.Errorf("call to an unknown service = %v; want PermissionDenied %q...", err, "trellis: egress_denied: ")
		}
		if got := trailer.Get("x-trellis-reason"); len(got) != 1 || got[0] != "egress_denied" {
			t.Errorf("x-trellis-reason = %q, want [egress_denied]", got)
		}
		labels := map[string]string{"direction": "outbound", "response_code": "403", "reason": "egress_denied", "grpc_status": "7"}
		if n := client.requestCount(t, labels); n != 1 {
			t.Errorf("trellis_requests_total%v = %v, want 1", labels, n)
		}
	})
	t.Run("bidirectional streaming, large messages", func(t *testing.T) {
		stream, err := cc.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, "/trellis.test.Books/Chat")
		if err != nil {
			t.Fatal(err)
		}
		large := strings.Repeat("moby dick ", 200_000) // 2 MB: many HTTP/2 frames and window updates on each hop
		for _, msg := range []string{"call me ishmael", large, "the end"} {
			if err := stream.SendMsg(wrapperspb.String(msg)); err != nil {
				t.Fatal(err)
			}
			// The answer comes before the client has finished sending.
			got := new(wrapperspb.StringValue)
			if err := stream.RecvMsg(got); err != nil || got.GetValue() != strings.ToUpper(msg) {
				t.Fatalf("answer of %d bytes (%.20q), %v; want the %d-byte message upper-cased", len(got.GetValue()), got.GetValue(), err, len(msg))
			}
		}
		if err := stream.CloseSend(); err != nil {
			t.Fatal(err)
		}
		if err := stream.RecvMsg(new(wrapperspb.StringValue)); err != io.EOF {
			t.Errorf("after CloseSend: %v, want io.EOF (status OK)", err)
		}
	})
	t.Run("access log names the protocol", func(t *testing.T) {
		for _, s := range []*sidecar{client, server} {
			var grpcLines int
			for _, l := range s.accessLines(t) {
				if l["path"] == "/trellis.test.Books/Get" && l["status"] == 200.0 {
					if l["protocol"] != "gRPC" {
						t.Errorf("sidecar of %s logged protocol %v for a gRPC call, want gRPC", s.id, l["protocol"])
					}
					grpcLines++
				}
			}
			if grpcLines < 2 {
				t.Errorf("sidecar of %s logged %d gRPC calls to Get, want at least 2:\n%s", s.id, grpcLines, s.access.String())
			}
		}
	})
	t.Run("grpc_status in metrics", func(t *testing.T) {
		for _, s := range []struct {
			sc        *sidecar
			direction string
		}{{client, "outbound"}, {server, "inbound"}} {
			for code, atLeast := range map[string]float64{"0": 4, "5": 1} {
				labels := map[string]string{"direction": s.direction, "response_code": "200", "grpc_status": code, "reason": "", "tls": "true"}
				if n := s.sc.requestCount(t, labels); n < atLeast {
					t.Errorf("%s sidecar: trellis_requests_total%v = %v, want at least %v", s.direction, labels, n, atLeast)
				}
			}
			unlabelled := map[string]string{"direction": s.direction, "response_code": "200", "grpc_status": ""}
			if n := s.sc.requestCount(t, unlabelled); n != 0 {
				t.Errorf("%s sidecar: %v gRPC answers counted without grpc_status, want 0", s.direction, n)
			}
		}
	})
}

// countingListener counts the connections it accepts.
type countingListener struct {
	net.Listener
	accepted atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.accepted.Add(1)
	}
	return c, err
}

func TestGRPCCallsShareOneConnectionPerHop(t *testing.T) {
	t.Parallel()
	impl := &books{release: make(chan struct{})}
	gs := grpc.NewServer()
	gs.RegisterService(&booksDesc, impl)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	appLn := &countingListener{Listener: ln}
	go gs.Serve(appLn)
	t.Cleanup(gs.Stop)

	m := newMesh(t, permissiveMesh)
	inbound := freeAddr(t)
	relay := startRelay(t, inbound)
	m.sidecar(sidecarSpec{reg: withAddress(grpcReg("bookstore-v1"), relay.addr()), inbound: inbound, app: ln.Addr().String(), ready: true})
	client := m.sidecar(sidecarSpec{reg: bookbuyerReg()})
	cc := grpcThrough(t, client, "bookstore.bookstore:14001")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	get := func() error {
		return cc.Invoke(ctx, "/trellis.test.Books/Get", wrapperspb.String("moby-dick"), new(wrapperspb.StringValue))
	}
	eventually(t, 15*time.Second, get)
	peerBefore, appBefore := relay.accepted.Load(), appLn.accepted.Load()

	const calls = 50
	errs := make(chan error, calls)
	for range calls {
		go func() { errs <- get() }()
	}
	for range calls {
		if err := <-errs; err != nil {
			t.Errorf("concurrent call: %v", err)
		}
	}
	if got := relay.accepted.Load() - peerBefore; got != 0 {
		t.Errorf("client sidecar to server sidecar: %d new connections for %d concurrent calls, want 0 (one HTTP/2 connection, multiplexed)", got, calls)
	}
	if got := appLn.accepted.Load() - appBefore; got != 0 {
		t.Errorf("server sidecar to app: %d new connections for %d concurrent calls, want 0", got, calls)
	}
	if peerBefore != 1 || appBefore != 1 {
		t.Errorf("connections after the first call: %d between the sidecars, %d to the app; want 1 each", peerBefore, appBefore)
	}
}

// grpcThrough is an app's gRPC client that dials its sidecar's outbound
// listener and names authority (the service it calls) as the :authority;
// closed at cleanup.
func grpcThrough(t *testing.T, s *sidecar, authority string) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+s.p.Outbound.String(),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithAuthority(authority))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}
