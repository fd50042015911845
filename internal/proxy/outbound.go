package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	proxyv1 "github.com/trellis-mesh/trellis/api/proxy/v1"
	"github.com/trellis-mesh/trellis/internal/proxy/telemetry"
	"github.com/trellis-mesh/trellis/internal/spiffe"
)

// Reasons the sidecar gives for responses it makes itself. Each one appears in the
// x-trellis-reason header, the access log and the reason label of the metrics.
const (
	ReasonDenied              = "denied"
	ReasonNoEndpoints         = "no_endpoints"
	ReasonUpstreamUnreachable = "upstream_unreachable"
	ReasonIdentityMismatch    = "identity_mismatch"
	ReasonEgressDenied        = "egress_denied"
	ReasonNoConfig            = "no_config"
	ReasonNotReady            = "not_ready"
	ReasonAppUnreachable      = "app_unreachable"
	ReasonBadRequest          = "bad_request"
	ReasonTimeout             = "timeout"
	ReasonNoRoute             = "no_route"
	ReasonRedirect            = "redirect"
	ReasonUpgradeFailed       = "upgrade_failed"
)

// ReasonHeader names the cause of a response the sidecar made itself.
const ReasonHeader = "X-Trellis-Reason"

// alpnTCP asks the peer sidecar for an opaque TCP tunnel instead of HTTP.
const alpnTCP = "trellis-tcp/1"

var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// refuse writes a response the sidecar makes itself, naming why.
func refuse(w http.ResponseWriter, code int, reason, msg string) {
	h := w.Header()
	h.Set(ReasonHeader, reason)
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	io.WriteString(w, "trellis: "+reason+": "+msg+"\n")
}

// hostPort adds the default port to an authority without one.
func hostPort(authority, port string) string {
	if _, _, err := net.SplitHostPort(authority); err == nil {
		return authority
	}
	return net.JoinHostPort(strings.Trim(authority, "[]"), port)
}

// serveOutbound handles the app's requests: absolute-form HTTP and CONNECT.
func (p *Proxy) serveOutbound(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	e := telemetry.Entry{Direction: "outbound", Method: r.Method, Protocol: protocolName(r), UserAgent: r.UserAgent(), RequestID: r.Header.Get("X-Request-Id")}
	l := telemetry.Labels{Direction: "outbound", TLS: "true"}
	if pol := p.policy.Load(); pol != nil {
		l.SourceWorkload, l.SourceNamespace = pol.Config().GetWorkload(), pol.Config().GetNamespace()
	}
	e.Source = p.creds.ID().String()
	status, reason, sent, route := p.outbound(w, r, &e, &l)
	l.ResponseCode, l.Reason, l.Route = statusText(status), reason, route
	if reason != "" && isGRPC(r) {
		l.GRPCStatus = statusTexts[reasonGRPCCode(reason)]
	}
	d := time.Since(start)
	p.metrics.Request(l, d)
	if p.access != nil {
		e.Time, e.Status, e.Duration, e.BytesSent, e.Reason, e.Route = start, status, d, sent, reason, route
		p.access.Log(&e)
	}
}

// outbound serves one request and says what happened.
func (p *Proxy) outbound(w http.ResponseWriter, r *http.Request, e *telemetry.Entry, l *telemetry.Labels) (status int, reason string, sent int64, route string) {
	authority := r.Host
	h2 := r.ProtoMajor == 2
	// Under transparent capture the connection's original destination names
	// the service; the request is in origin form, and keeps its Host.
	capt, captured := capturedDst(r.Context())
	if captured && !h2 && r.Method != http.MethodConnect {
		r.URL.Scheme, r.URL.Host = "http", capt
	}
	switch {
	case h2 && r.Method == http.MethodConnect:
		refuseRequest(w, r, http.StatusBadRequest, ReasonBadRequest, "CONNECT over HTTP/2 is not supported: send it over HTTP/1.1")
		return http.StatusBadRequest, ReasonBadRequest, 0, ""
	case h2:
		// HTTP/2 with prior knowledge (h2c): the app dialed this listener
		// directly and names the service in :authority.
	case r.Method != http.MethodConnect:
		if !r.URL.IsAbs() {
			refuseRequest(w, r, http.StatusBadRequest, ReasonBadRequest, "this is the outbound proxy: send absolute-form requests (set HTTP_PROXY)")
			return http.StatusBadRequest, ReasonBadRequest, 0, ""
		}
		if r.URL.Scheme != "http" {
			refuseRequest(w, r, http.StatusBadRequest, ReasonBadRequest, "only http:// URLs go through the proxy as requests; use CONNECT for TLS")
			return http.StatusBadRequest, ReasonBadRequest, 0, ""
		}
		authority = r.URL.Host
	}
	if captured {
		authority = capt
	}
	authority = hostPort(authority, "80")
	e.Authority, e.Path = authority, r.URL.Path

	dst := p.dests.get(authority)
	rt := dst.wait(r.Context(), p.firstConfigWait(r.Context()))
	if rt == nil {
		refuseRequest(w, r, http.StatusServiceUnavailable, ReasonNoConfig, "no configuration for "+authority+" from the control plane yet")
		return http.StatusServiceUnavailable, ReasonNoConfig, 0, ""
	}
	if !rt.msg.GetFound() {
		pol := p.policy.Load()
		if pol == nil || !pol.Config().GetEgress() {
			refuseRequest(w, r, http.StatusForbidden, ReasonEgressDenied, rt.msg.GetReason()+", and egress is disabled in the mesh config")
			return http.StatusForbidden, ReasonEgressDenied, 0, ""
		}
		l.DestinationService = authority
		return p.egress(w, r, authority)
	}
	l.DestinationService = rt.msg.GetService()
	ru := rt.match(r)
	if ru == nil {
		refuseRequest(w, r, http.StatusNotFound, ReasonNoRoute, "no rule of "+rt.msg.GetSource()+" matches "+r.Method+" "+r.URL.Path)
		return http.StatusNotFound, ReasonNoRoute, 0, ""
	}
	route = ru.msg.GetName()
	if rd := ru.msg.GetRedirect(); rd != nil {
		code := int(rd.GetStatusCode())
		w.Header().Set("Location", redirectURL(r, authority, rd, ru.match))
		w.Header().Set(ReasonHeader, ReasonRedirect)
		w.WriteHeader(code)
		return code, ReasonRedirect, 0, route
	}
	b := ru.pick()
	if b == nil {
		refuseRequest(w, r, http.StatusServiceUnavailable, ReasonNoEndpoints, rt.msg.GetService()+" has no backend with a positive weight")
		return http.StatusServiceUnavailable, ReasonNoEndpoints, 0, route
	}
	ep, done := b.endpoint(r)
	if ep == nil {
		refuseRequest(w, r, http.StatusServiceUnavailable, ReasonNoEndpoints, b.msg.GetName()+" has no ready endpoint")
		return http.StatusServiceUnavailable, ReasonNoEndpoints, 0, route
	}
	me := p.creds.ID().String()
	if !b.allows(me) {
		refuseRequest(w, r, http.StatusForbidden, ReasonDenied, fmt.Sprintf("%s is not allowed to call %s: no TrafficTarget allows it", me, b.msg.GetName()))
		return http.StatusForbidden, ReasonDenied, 0, route
	}
	l.DestinationWorkload, l.DestinationNamespace = ep.GetWorkload(), ep.GetNamespace()
	e.DestinationService, e.DestinationWorkload, e.Upstream = rt.msg.GetService(), ep.GetWorkload(), ep.GetAddress()

	picked := time.Now()
	if r.Method == http.MethodConnect {
		st, rsn, n := p.tunnel(w, ep, b.msg.GetTimeouts(), *l)
		done(time.Since(picked), rsn != "")
		return st, rsn, n, route
	}
	tr := p.upstream(ep, b.msg.GetTimeouts(), h2)
	ctx := r.Context()
	d := b.msg.GetTimeouts().GetRequest().AsDuration()
	if rd := ru.msg.GetTimeout().AsDuration(); rd > 0 {
		d = rd // the route's timeout, when it has one, replaces the backend's
	}
	if d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	out := r.Clone(ctx)
	out.RequestURI = ""
	// Request trailers are read into r.Trailer as the body ends; the
	// transport sends out.Trailer after the body, so they must be one map.
	out.Trailer = r.Trailer
	if h2 {
		// The TLS is the sidecar's own (see upstream); the scheme says so
		// to the peer.
		out.URL.Scheme, out.URL.Host = "https", authority
	}
	upgrade := prepareRequest(out.Header)
	if rw := ru.msg.GetRewrite(); rw != nil {
		if rw.GetPath() != nil {
			out.URL.Path, out.URL.RawPath = changePath(r.URL.Path, rw.GetPath(), ru.match), ""
		}
		if rw.GetHostname() != "" {
			out.Host = rw.GetHostname()
		}
	}
	editHeaders(out.Header, ru.msg.GetRequestHeaders())
	enableFullDuplex(w, r)
	resp, err := tr.RoundTrip(out)
	if err == nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		// The deadline passed while the answer came: the transport may hand
		// over what the peer said about the cancelled request (its sidecar
		// losing the app) instead of the timeout it is.
		resp.Body.Close()
		err = ctx.Err()
	}
	if err != nil {
		done(time.Since(picked), true)
		return p.upstreamError(w, r, err, ep, route)
	}
	// The balancer learns the time to the response headers: what the endpoint
	// controls, not how long the caller takes to read the body.
	done(time.Since(picked), resp.StatusCode >= 500)
	editHeaders(resp.Header, ru.msg.GetResponseHeaders())
	st, rsn, n, grpc := p.relay(w, resp, upgrade)
	l.GRPCStatus = grpc
	return st, rsn, n, route
}

func (p *Proxy) upstreamError(w http.ResponseWriter, r *http.Request, err error, ep *proxyv1.Endpoint, route string) (int, string, int64, string) {
	var mismatch *spiffe.IdentityMismatchError
	switch {
	case errors.As(err, &mismatch):
		refuseRequest(w, r, http.StatusServiceUnavailable, ReasonIdentityMismatch, fmt.Sprintf("endpoint %s presented %s, not %s", ep.GetAddress(), mismatch.Got, mismatch.Want))
		return http.StatusServiceUnavailable, ReasonIdentityMismatch, 0, route
	case errors.Is(err, context.DeadlineExceeded):
		refuseRequest(w, r, http.StatusGatewayTimeout, ReasonTimeout, "the request timeout passed before "+ep.GetAddress()+" answered")
		return http.StatusGatewayTimeout, ReasonTimeout, 0, route
	}
	refuseRequest(w, r, http.StatusServiceUnavailable, ReasonUpstreamUnreachable, fmt.Sprintf("endpoint %s (%s): %v", ep.GetAddress(), ep.GetWorkload(), err))
	return http.StatusServiceUnavailable, ReasonUpstreamUnreachable, 0, route
}

// upstreamKey names one pool: an endpoint, the identity it must present, and
// whether the pool speaks HTTP/2.
type upstreamKey struct {
	address, identity string
	h2                bool
}

// upstream returns the connection pool for one endpoint: HTTP/1.1 over mTLS
// (ALPN http/1.1) for the app's HTTP/1.1 requests, or HTTP/2 over mTLS (ALPN
// h2, one multiplexed connection) for its h2c and gRPC requests. Pools outlive
// config changes, so a new config never drops an established connection.
func (p *Proxy) upstream(ep *proxyv1.Endpoint, to *proxyv1.Timeouts, h2 bool) *http.Transport {
	key := upstreamKey{ep.GetAddress(), ep.GetIdentity(), h2}
	p.upMu.Lock()
	defer p.upMu.Unlock()
	if tr, ok := p.upstreams[key]; ok {
		return tr
	}
	var tr *http.Transport
	if h2 {
		// https URLs and DialTLSContext: the transport takes the TLS made
		// here, sees ALPN h2 and speaks HTTP/2 on it.
		var protos http.Protocols
		protos.SetHTTP2(true)
		tr = &http.Transport{
			DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return p.dialPeer(ctx, ep, to, "h2")
			},
			Protocols:       &protos,
			IdleConnTimeout: to.GetIdle().AsDuration(),
			HTTP2:           &http.HTTP2Config{SendPingTimeout: 30 * time.Second},
		}
	} else {
		// The request URL names the service, never a host to resolve: every
		// connection goes to this endpoint, over mTLS made here. (DialContext,
		// not DialTLSContext: the URLs are http://, and the TLS is ours, not
		// the URL's.)
		tr = &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return p.dialPeer(ctx, ep, to, "http/1.1")
			},
			MaxIdleConnsPerHost:   64,
			IdleConnTimeout:       to.GetIdle().AsDuration(),
			ExpectContinueTimeout: expectContinueTimeout,
		}
	}
	p.upstreams[key] = tr
	return tr
}

// expectContinueTimeout is how long a request with "Expect: 100-continue"
// waits for the upstream's 100 Continue before its body is sent anyway. While
// it waits the body is not read, so the 100 the caller gets is the app's.
const expectContinueTimeout = time.Second

// dialPeer opens an mTLS connection to a peer sidecar and checks that it presents
// the identity discovery promised.
func (p *Proxy) dialPeer(ctx context.Context, ep *proxyv1.Endpoint, to *proxyv1.Timeouts, alpn string) (*tls.Conn, error) {
	d := net.Dialer{Timeout: to.GetConnect().AsDuration(), KeepAlive: 30 * time.Second, Control: p.dialControl}
	c, err := d.DialContext(ctx, "tcp", ep.GetAddress())
	if err != nil {
		return nil, err
	}
	conf := spiffe.ClientTLS(p.creds, ep.GetIdentity())
	conf.NextProtos = []string{alpn}
	tc := tls.Client(c, conf)
	hctx, cancel := context.WithTimeout(ctx, to.GetConnect().AsDuration())
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		c.Close()
		return nil, err
	}
	return tc, nil
}

// tunnel serves CONNECT to a mesh destination as an opaque TCP stream over mTLS.
func (p *Proxy) tunnel(w http.ResponseWriter, ep *proxyv1.Endpoint, to *proxyv1.Timeouts, l telemetry.Labels) (int, string, int64) {
	up, err := p.dialPeer(context.Background(), ep, to, alpnTCP)
	if err != nil {
		st, rsn, n, _ := p.upstreamError(w, nil, err, ep, "")
		return st, rsn, n
	}
	return p.splice(w, up, l)
}

// egress forwards a request for a destination outside the mesh, as is.
func (p *Proxy) egress(w http.ResponseWriter, r *http.Request, authority string) (int, string, int64, string) {
	if r.Method == http.MethodConnect {
		up, err := (&net.Dialer{Timeout: 5 * time.Second, Control: p.dialControl}).Dial("tcp", authority)
		if err != nil {
			refuseRequest(w, r, http.StatusBadGateway, ReasonUpstreamUnreachable, err.Error())
			return http.StatusBadGateway, ReasonUpstreamUnreachable, 0, ""
		}
		st, rsn, n := p.splice(w, up, telemetry.Labels{Direction: "outbound", TLS: "false", DestinationService: authority})
		return st, rsn, n, ""
	}
	out := r.Clone(r.Context())
	out.RequestURI = ""
	out.Trailer = r.Trailer
	tr := p.app
	if r.ProtoMajor == 2 {
		out.URL.Scheme, out.URL.Host = "http", authority
		tr = p.appH2
	}
	upgrade := prepareRequest(out.Header)
	resp, err := tr.RoundTrip(out)
	if err != nil {
		refuseRequest(w, r, http.StatusBadGateway, ReasonUpstreamUnreachable, err.Error())
		return http.StatusBadGateway, ReasonUpstreamUnreachable, 0, ""
	}
	st, rsn, n, _ := p.relay(w, resp, upgrade)
	return st, rsn, n, ""
}

// splice answers a CONNECT with 200 and copies bytes both ways until both
// sides close, counting the connection and its bytes under l.
func (p *Proxy) splice(w http.ResponseWriter, up net.Conn, l telemetry.Labels) (int, string, int64) {
	// The 200 is written on the hijacked connection: net/http would frame it as
	// chunked, and a 2xx answer to CONNECT carries no framing headers (RFC 9110,
	// section 9.3.6).
	down, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		up.Close()
		http.Error(w, "trellis: cannot take over the connection for a tunnel: "+err.Error(), http.StatusInternalServerError)
		return http.StatusInternalServerError, "", 0
	}
	if !p.streams.add(down) {
		up.Close()
		return http.StatusServiceUnavailable, ReasonNotReady, 0
	}
	defer p.streams.done(down)
	if _, err := brw.WriteString("HTTP/1.1 200 OK\r\n\r\n"); err != nil || brw.Flush() != nil {
		down.Close()
		up.Close()
		return http.StatusOK, "", 0
	}
	p.metrics.ConnOpened(l)
	// Bytes the client sent after the CONNECT request, already buffered.
	var early int64
	if n := brw.Reader.Buffered(); n > 0 {
		b, _ := brw.Reader.Peek(n)
		m, _ := up.Write(b)
		early = int64(m)
	}
	sent, received := pipe(down, up)
	p.metrics.TCP(l, sent, received+early)
	p.metrics.ConnClosed(l)
	return http.StatusOK, "", sent
}

// pipe copies both ways, half-closing as each side finishes; it returns the
// bytes sent towards a and those sent towards b. Where a is the downstream
// side, as everywhere here, those are the bytes a TCP series counts as sent
// and received.
func pipe(a, b net.Conn) (toA, toB int64) {
	done := make(chan struct{})
	go func() {
		toA, _ = io.Copy(a, b)
		closeWrite(a)
		close(done)
	}()
	toB, _ = io.Copy(b, a)
	closeWrite(b)
	<-done
	a.Close()
	b.Close()
	return toA, toB
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}

var statusTexts = func() (m [600]string) {
	for i := range m {
		m[i] = fmt.Sprint(i)
	}
	return
}()

func statusText(code int) string {
	if code >= 0 && code < len(statusTexts) {
		return statusTexts[code]
	}
	return fmt.Sprint(code)
}
