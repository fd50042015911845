package proxy

import (
	"context"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/trellis-mesh/trellis/internal/capture/sock"
	"github.com/trellis-mesh/trellis/internal/proxy/detect"
	"github.com/trellis-mesh/trellis/internal/proxy/telemetry"
)

// Reasons for connections that transparent capture hands the sidecar and it
// will not carry.
const (
	// ReasonCaptureLoop: a connection made straight to the capture port, or
	// one whose original destination is the capture port itself.
	ReasonCaptureLoop = "capture_loop"
	// ReasonPlaintext: a plaintext connection to an app port under strict
	// mTLS, from a caller outside the mesh.
	ReasonPlaintext = "plaintext"
)

// detectWait bounds how long a captured connection to an HTTP port waits for
// its first bytes before it is carried as opaque TCP: an app that speaks first
// on a port not declared tcp or tcp-server-first costs this once per connection.
const detectWait = 300 * time.Millisecond

// capturedKey carries, in a request's context, the original destination of
// the captured connection it came on, "ip:port".
type capturedKey struct{}

// capturedDst returns the original destination of a captured request's
// connection; ok is false for requests the app sent to the sidecar itself.
func capturedDst(ctx context.Context) (string, bool) {
	a, ok := ctx.Value(capturedKey{}).(string)
	return a, ok
}

// capturedConn is an HTTP connection handed from the capture listener, or
// from the relay, to the captured-HTTP server, with where it was going.
type capturedConn struct {
	net.Conn
	authority string
}

// connQueue is a net.Listener fed with connections accepted elsewhere.
type connQueue struct {
	addr net.Addr
	c    chan net.Conn
	once sync.Once
	done chan struct{}
}

func newConnQueue(addr net.Addr) *connQueue {
	return &connQueue{addr: addr, c: make(chan net.Conn), done: make(chan struct{})}
}

func (q *connQueue) Accept() (net.Conn, error) {
	select {
	case c := <-q.c:
		return c, nil
	case <-q.done:
		return nil, net.ErrClosed
	}
}

// push hands c to the server, or closes it once the queue is closed.
func (q *connQueue) push(c net.Conn) {
	select {
	case q.c <- c:
	case <-q.done:
		c.Close()
	}
}

func (q *connQueue) Close() error   { q.once.Do(func() { close(q.done) }); return nil }
func (q *connQueue) Addr() net.Addr { return q.addr }

// dialControl marks the sidecar's own sockets when capture tells them apart
// by mark (Options.SocketMark); nil otherwise.
func dialControl(mark uint32) func(network, address string, c syscall.RawConn) error {
	if mark == 0 {
		return nil
	}
	return sock.MarkDialer(mark)
}

// serveCaptureOutbound accepts the app's connections that capture redirected
// and carries each to where it was going: HTTP/1 to the outbound relay and
// HTTP/2 to the captured-HTTP server (routes, policy, metrics per request;
// the relay hands that server what it does not take), a TCP port or a
// non-HTTP stream as opaque TCP to the mesh destination, a destination
// outside the mesh as a passthrough when egress is allowed.
func (p *Proxy) serveCaptureOutbound(ctx context.Context, ln net.Listener, https *connQueue) {
	self, _ := ln.Addr().(*net.TCPAddr)
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go p.captureOutbound(ctx, c, self, https)
	}
}

func (p *Proxy) captureOutbound(ctx context.Context, c net.Conn, self *net.TCPAddr, https *connQueue) {
	od, err := sock.OriginalDst(c)
	if err != nil {
		p.dropCaptured(c, "outbound", ReasonBadRequest, "err", err)
		return
	}
	if self != nil && od.Port() == uint16(self.Port) && (od.Addr().IsLoopback() || od.Addr() == self.AddrPort().Addr().Unmap()) {
		p.dropCaptured(c, "outbound", ReasonCaptureLoop, "original_destination", od.String())
		return
	}
	authority := od.String()
	rt := p.dests.get(authority).wait(ctx, p.opts.FirstConfigTimeout)
	if rt == nil {
		p.dropCaptured(c, "outbound", ReasonNoConfig, "original_destination", authority)
		return
	}
	if !rt.msg.GetFound() {
		p.passthrough(c, od, rt.msg.GetReason())
		return
	}
	switch rt.msg.GetProtocol() {
	case "tcp", "tcp-server-first":
		// Declared TCP: never sniffed, so a server-first protocol never waits.
		p.forwardTCP(ctx, c, authority)
		return
	}
	proto, dc, err := detect.Detect(c, detectWait)
	if err != nil {
		p.dropCaptured(dc, "outbound", ReasonBadRequest, "original_destination", authority, "err", err)
		return
	}
	switch proto {
	case detect.HTTP1:
		p.h1out.serve(dc, authority)
	case detect.HTTP2:
		https.push(&capturedConn{Conn: dc, authority: authority})
	default:
		p.forwardTCP(ctx, dc, authority)
	}
}

// passthrough carries a captured connection to a destination outside the
// mesh, as is, when the mesh config allows egress.
func (p *Proxy) passthrough(c net.Conn, od netip.AddrPort, why string) {
	pol := p.policy.Load()
	if pol == nil || !pol.Config().GetEgress() {
		p.dropCaptured(c, "outbound", ReasonEgressDenied, "original_destination", od.String(), "why", why)
		return
	}
	d := net.Dialer{Timeout: 5 * time.Second, Control: p.dialControl}
	up, err := d.Dial("tcp", od.String())
	if err != nil {
		p.dropCaptured(c, "outbound", ReasonUpstreamUnreachable, "original_destination", od.String(), "err", err)
		return
	}
	l := telemetry.Labels{Direction: "outbound", TLS: "false", DestinationService: od.String()}
	p.carry(c, up, l)
}

// serveCaptureInbound accepts connections to the app's ports that capture
// redirected: callers that did not come through a sidecar, since peers dial
// the mTLS port, which capture leaves alone. In permissive mode they reach the
// app on the port they asked for; under strict mTLS they are closed and
// counted.
func (p *Proxy) serveCaptureInbound(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go p.captureInbound(c)
	}
}

func (p *Proxy) captureInbound(c net.Conn) {
	od, err := sock.OriginalDst(c)
	if err != nil {
		p.dropCaptured(c, "inbound", ReasonBadRequest, "err", err)
		return
	}
	pol := p.policy.Load()
	if pol == nil || !pol.Config().GetPermissive() {
		p.dropCaptured(c, "inbound", ReasonPlaintext, "original_destination", od.String(), "peer", c.RemoteAddr().String())
		return
	}
	d := net.Dialer{Timeout: 2 * time.Second, Control: p.dialControl}
	app, err := d.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(od.Port()))))
	if err != nil {
		p.dropCaptured(c, "inbound", ReasonAppUnreachable, "original_destination", od.String(), "err", err)
		return
	}
	l := telemetry.Labels{Direction: "inbound", TLS: "false", DestinationWorkload: pol.Config().GetWorkload(), DestinationNamespace: pol.Config().GetNamespace()}
	p.carry(c, app, l)
}

// carry copies bytes both ways between a captured connection and up until
// both close, counting the connection and its bytes under l.
func (p *Proxy) carry(down, up net.Conn, l telemetry.Labels) {
	if !p.streams.add(down) {
		up.Close()
		return
	}
	defer p.streams.done(down)
	p.metrics.ConnOpened(l)
	sent, received := pipe(down, up)
	p.metrics.TCP(l, sent, received)
	p.metrics.ConnClosed(l)
}

// dropCaptured closes a captured connection the sidecar will not carry and
// counts it in trellis_connections_refused_total with its reason.
func (p *Proxy) dropCaptured(c net.Conn, direction, reason string, args ...any) {
	p.metrics.Refused(direction, reason)
	p.log.Info("captured connection refused", append([]any{"direction", direction, "reason", reason}, args...)...)
	c.Close()
}
