package proxy

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/trellis-mesh/trellis/internal/authz"
	"github.com/trellis-mesh/trellis/internal/proxy/telemetry"
	"github.com/trellis-mesh/trellis/internal/spiffe"
)

// handshakeTimeout bounds a peer's TLS handshake on the inbound listener.
const handshakeTimeout = 10 * time.Second

// tlsAcceptor completes TLS handshakes off the accept loop, counts refused
// connections by reason, hands HTTP connections to an http.Server through Accept
// and serves TCP tunnels itself.
type tlsAcceptor struct {
	ln    net.Listener
	conf  *tls.Config
	p     *Proxy
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newTLSAcceptor(ln net.Listener, conf *tls.Config, p *Proxy) *tlsAcceptor {
	conf = conf.Clone()
	conf.NextProtos = []string{"h2", "http/1.1", alpnTCP}
	return &tlsAcceptor{ln: ln, conf: conf, p: p, conns: make(chan net.Conn), done: make(chan struct{})}
}

func (a *tlsAcceptor) run() {
	for {
		c, err := a.ln.Accept()
		if err != nil {
			a.Close()
			return
		}
		go a.handshake(c)
	}
}

func (a *tlsAcceptor) handshake(c net.Conn) {
	tc := tls.Server(c, a.conf)
	tc.SetDeadline(time.Now().Add(handshakeTimeout))
	if err := tc.Handshake(); err != nil {
		a.p.metrics.Refused("inbound", spiffe.HandshakeReason(err))
		a.p.log.Debug("inbound handshake refused", "remote", c.RemoteAddr().String(), "reason", spiffe.HandshakeReason(err), "err", err)
		c.Close()
		return
	}
	tc.SetDeadline(time.Time{})
	switch tc.ConnectionState().NegotiatedProtocol {
	case alpnTCP:
		a.p.serveInboundTCP(tc)
		return
	case "http/1.1", "":
		a.p.h1in.serve(tc, "")
		return
	}
	a.push(tc)
}

// push hands c to the inbound server, or closes it once the acceptor is
// closed.
func (a *tlsAcceptor) push(c net.Conn) {
	select {
	case a.conns <- c:
	case <-a.done:
		c.Close()
	}
}

func (a *tlsAcceptor) Accept() (net.Conn, error) {
	select {
	case c := <-a.conns:
		return c, nil
	case <-a.done:
		return nil, net.ErrClosed
	}
}

func (a *tlsAcceptor) Close() error {
	a.once.Do(func() {
		close(a.done)
		a.ln.Close()
	})
	return nil
}

func (a *tlsAcceptor) Addr() net.Addr { return a.ln.Addr() }

// serveInbound authorizes a peer's request and forwards it to the app.
func (p *Proxy) serveInbound(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	l := telemetry.Labels{Direction: "inbound", TLS: "true", Route: ""}
	e := telemetry.Entry{Direction: "inbound", Method: r.Method, Protocol: protocolName(r), Authority: r.Host, Path: r.URL.Path, UserAgent: r.UserAgent(), RequestID: r.Header.Get("X-Request-Id")}
	pol := p.policy.Load()
	if pol != nil {
		l.DestinationWorkload, l.DestinationNamespace = pol.Config().GetWorkload(), pol.Config().GetNamespace()
		e.DestinationWorkload = pol.Config().GetWorkload()
	}
	src := ""
	if st := requestTLS(r); st != nil {
		if id, err := spiffe.PeerID(*st); err == nil {
			src = id.String()
			l.SourceNamespace, l.SourceWorkload = id.Namespace, id.Account
		}
	}
	e.Source = src
	status, reason, n, route := p.inbound(w, r, pol, src, &l)
	l.ResponseCode, l.Reason, l.Route = statusText(status), reason, route
	if reason != "" && isGRPC(r) {
		l.GRPCStatus = statusTexts[reasonGRPCCode(reason)]
	}
	d := time.Since(start)
	p.metrics.Request(l, d)
	if p.access != nil {
		e.Time, e.Status, e.Duration, e.BytesSent, e.Reason, e.Route = start, status, d, n, reason, route
		p.access.Log(&e)
	}
}

func (p *Proxy) inbound(w http.ResponseWriter, r *http.Request, pol *authz.Policy, src string, l *telemetry.Labels) (int, string, int64, string) {
	if pol == nil {
		refuseRequest(w, r, http.StatusServiceUnavailable, ReasonNotReady, "the sidecar has no inbound policy from the control plane yet")
		return http.StatusServiceUnavailable, ReasonNotReady, 0, ""
	}
	d := pol.AllowHTTP(src, r)
	rule := d.Rule
	if !d.Allowed {
		refuseRequest(w, r, http.StatusForbidden, ReasonDenied, fmt.Sprintf("%s may not call %s: no TrafficTarget allows %s %s", src, pol.Config().GetIdentity(), r.Method, r.URL.Path))
		return http.StatusForbidden, ReasonDenied, 0, ""
	}
	if p.opts.AppAddr == "" {
		refuseRequest(w, r, http.StatusServiceUnavailable, ReasonAppUnreachable, "this workload's app serves nothing")
		return http.StatusServiceUnavailable, ReasonAppUnreachable, 0, rule
	}
	out := r.Clone(r.Context())
	out.RequestURI = ""
	out.URL.Scheme = "http"
	out.URL.Host = p.opts.AppAddr
	out.Trailer = r.Trailer
	// HTTP/2 from the peer (the caller spoke h2c or gRPC) goes to the app as
	// h2c; HTTP/1.1 as HTTP/1.1.
	tr := p.app
	if r.ProtoMajor == 2 {
		tr = p.appH2
	}
	upgrade := prepareRequest(out.Header)
	enableFullDuplex(w, r)
	resp, err := tr.RoundTrip(out)
	if err != nil {
		refuseRequest(w, r, http.StatusServiceUnavailable, ReasonAppUnreachable, fmt.Sprintf("app at %s: %v", p.opts.AppAddr, err))
		return http.StatusServiceUnavailable, ReasonAppUnreachable, 0, rule
	}
	st, rsn, n, grpc := p.relay(w, resp, upgrade)
	l.GRPCStatus = grpc
	return st, rsn, n, rule
}

// serveInboundTCP authorizes a peer's TCP tunnel and splices it to the app.
func (p *Proxy) serveInboundTCP(tc *tls.Conn) {
	id, err := spiffe.PeerID(tc.ConnectionState())
	src := ""
	if err == nil {
		src = id.String()
	}
	l := telemetry.Labels{Direction: "inbound", TLS: "true", SourceNamespace: id.Namespace, SourceWorkload: id.Account}
	pol := p.policy.Load()
	if pol != nil {
		l.DestinationWorkload, l.DestinationNamespace = pol.Config().GetWorkload(), pol.Config().GetNamespace()
	}
	_, portStr, _ := net.SplitHostPort(p.opts.AppAddr)
	port, _ := strconv.Atoi(portStr)
	if pol == nil {
		p.metrics.Refused("inbound", ReasonNotReady)
		tc.Close()
		return
	}
	if !pol.AllowTCP(src, port).Allowed {
		p.metrics.Refused("inbound", ReasonDenied)
		p.log.Info("tcp connection denied", "source", src, "destination", pol.Config().GetIdentity())
		tc.Close()
		return
	}
	app, err := net.DialTimeout("tcp", p.opts.AppAddr, 2*time.Second)
	if err != nil {
		p.metrics.Refused("inbound", ReasonAppUnreachable)
		tc.Close()
		return
	}
	p.carry(tc, app, l)
}
