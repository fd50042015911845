package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	proxyv1 "github.com/trellis-mesh/trellis/api/proxy/v1"
	"github.com/trellis-mesh/trellis/internal/proxy/h1"
	"github.com/trellis-mesh/trellis/internal/proxy/telemetry"
	"github.com/trellis-mesh/trellis/internal/spiffe"
)

// This file is the sidecar's HTTP/1.1 relay, the hot path of both listeners
// (docs/adr/0009). One goroutine per downstream connection reads a request
// head in place, decides where it goes, writes it upstream on a pooled
// connection and relays the response back, each body in its own framing,
// with no per-request goroutine and as few writes as the messages allow.
//
// It takes only the common case: HTTP/1.1 keep-alive requests with a
// Content-Length or chunked body, to a destination whose config it has, on a
// rule that neither redirects, rewrites, edits headers nor sets a timeout.
// Everything else (HTTP/2, CONNECT, Upgrade, Expect, announced trailers,
// HTTP/1.0, refusals, egress, a head it does not fully parse) it hands,
// unread, to the net/http server of the same listener, which serves that
// connection from then on: net/http's handlers are the protocol contract, and
// the relay decides before it consumes a byte.
//
// Connections that transparent capture redirected (capture.go) are relayed
// by the outbound relay too, once detection has seen HTTP/1: their requests
// are in origin form and the connection's original destination names the
// service; what the relay does not take goes to the captured-HTTP server.

// relayBufSize is the read buffer of each relayed connection, and so the
// largest head the relay takes (larger ones go to net/http).
const relayBufSize = 16 << 10

// relaySide says which listener a relay serves.
type relaySide uint8

const (
	sideOutbound relaySide = iota // the app's HTTP proxy
	sideInbound                   // peers, over mTLS
)

// h1Relay serves HTTP/1.1 connections of one listener.
type h1Relay struct {
	p    *Proxy
	side relaySide
	// handoff gives a connection, bytes unread, to the listener's net/http
	// server, which closes it once it is gone; handoffCaptured does the same
	// for a captured connection (a *capturedConn), outbound only.
	handoff, handoffCaptured func(net.Conn)

	mu       sync.Mutex
	conns    map[*relayConn]struct{}
	draining atomic.Bool
	wg       sync.WaitGroup

	poolMu sync.Mutex
	pools  map[upstreamKey]*h1Pool
}

// newH1Relay makes a relay; Run sets its handoff before it serves.
func newH1Relay(p *Proxy, side relaySide) *h1Relay {
	return &h1Relay{p: p, side: side, conns: map[*relayConn]struct{}{}, pools: map[upstreamKey]*h1Pool{}}
}

// relayConn is one downstream connection.
type relayConn struct {
	c    net.Conn
	br   *bufio.Reader
	w    h1.Writer
	idle atomic.Bool // waiting for a request head
	// captured is the original destination, ip:port, of a connection that
	// transparent capture redirected; empty on the listeners.
	captured string
	// configBy, when set, is when the wait for the first config of the
	// request being handed over ends: the relay waited for it already, and
	// net/http waits only for the rest (firstConfigWait).
	configBy time.Time

	// Inbound: the peer's identity, read once per connection.
	src             string
	srcNS, srcAcct  string
	req, resp       h1.Head
	hdr             http.Header // built for matches that read fields
	lastAuth        []byte      // the last authority (outbound), and
	lastAuthority   string      // the same with its port
	lastAuthorityIn string      // as the request wrote it
}

// serveListener accepts connections on ln until it closes.
func (s *h1Relay) serveListener(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(5 * time.Millisecond)
				continue
			}
			return
		}
		go s.serve(c, "")
	}
}

// relayIdleTimeout is how long a downstream connection may wait between
// requests, as the net/http servers' IdleTimeout.
const relayIdleTimeout = 2 * time.Minute

// relayHeadTimeout bounds the arrival of the rest of a request head once its
// first bytes came, as the net/http servers' ReadHeaderTimeout.
const relayHeadTimeout = 10 * time.Second

// serve relays requests on c until it closes, or hands it to net/http.
// captured is the original destination of a connection that capture
// redirected, empty for one accepted on a listener.
func (s *h1Relay) serve(c net.Conn, captured string) {
	rc := &relayConn{c: c, captured: captured}
	if !s.track(rc) {
		c.Close()
		return
	}
	handedOff := false
	defer func() {
		if !handedOff {
			c.Close()
		}
		s.untrack(rc)
	}()
	handoff := func() {
		handedOff = true
		hc := &replayConn{Conn: c, br: rc.br, configBy: rc.configBy}
		if rc.captured != "" {
			s.handoffCaptured(&capturedConn{Conn: hc, authority: rc.captured})
			return
		}
		s.handoff(hc)
	}
	if tc, ok := c.(*tls.Conn); ok {
		if id, err := spiffe.PeerID(tc.ConnectionState()); err == nil {
			rc.src, rc.srcNS, rc.srcAcct = id.String(), id.Namespace, id.Account
		}
	}
	rc.br = bufio.NewReaderSize(c, relayBufSize)
	rc.w.W = c
	for {
		rc.idle.Store(true)
		if s.isDraining() {
			rc.idle.Store(false)
			return
		}
		c.SetReadDeadline(time.Now().Add(relayIdleTimeout))
		_, err := rc.br.Peek(1)
		rc.idle.Store(false)
		var head []byte
		if err == nil {
			if b, _ := rc.br.Peek(rc.br.Buffered()); h1.HeadLen(b) < 0 {
				// A head that did not come whole gets what net/http's
				// ReadHeaderTimeout gives it, not the idle timeout.
				c.SetReadDeadline(time.Now().Add(relayHeadTimeout))
			}
			head, err = h1.ReadHead(rc.br)
		}
		if err != nil {
			if rc.br.Buffered() > 0 && !isTimeout(err) {
				// A head too large, or cut short: net/http answers it.
				c.SetReadDeadline(time.Time{})
				handoff()
			}
			return
		}
		c.SetReadDeadline(time.Time{})
		if h1.ParseRequest(head, &rc.req) != nil || rc.req.Unusual || rc.req.Minor != 1 {
			handoff()
			return
		}
		var handled, keep bool
		if s.side == sideOutbound {
			handled, keep = s.outbound(rc, head)
		} else {
			handled, keep = s.inbound(rc, head)
		}
		if !handled {
			handoff()
			return
		}
		if !keep {
			return
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// exchange is one request being relayed, what both listeners share.
type exchange struct {
	rc    *relayConn
	head  []byte // the request head, in rc.br's buffer until consumed
	pool  *h1Pool
	start time.Time
	// isHEAD: the response has no body whatever its framing says.
	isHEAD bool
	// writeHead appends the head to send upstream.
	writeHead func(buf []byte) []byte
	// unreachable names the failure to reach the upstream, for the refusal.
	unreachable func(err error) (code int, reason, msg string)
}

// exchangeResult is what happened, for telemetry and the balancer.
type exchangeResult struct {
	status     int
	reason     string
	sent       int64 // body bytes sent downstream
	received   int64 // body bytes received from downstream
	toHead     time.Duration
	upstreamOK bool // the upstream answered with a status below 500
	keep       bool // the downstream connection may carry another request
}

// outbound relays an app's request to a peer sidecar. It reports handled
// false, having consumed nothing, to leave the request to net/http.
func (s *h1Relay) outbound(rc *relayConn, head []byte) (handled, keep bool) {
	start := time.Now()
	p := s.p
	req := &rc.req
	// authIn is the authority as the app wrote it (in the target, or in Host
	// on a captured connection), which route matches read and the peer gets
	// as Host; pathQuery is the origin-form target sent on.
	var authIn, pathQuery []byte
	if rc.captured != "" {
		// Captured: the request is in origin form and keeps its Host; the
		// original destination names the service (as capturedDst does on
		// the net/http path, which also takes absolute-form requests here).
		if req.Target[0] != '/' || len(req.Host) == 0 {
			return false, false
		}
		authIn, pathQuery = req.Host, req.Target
	} else {
		target := req.Target
		if len(target) < len("http://x") || string(target[:7]) != "http://" {
			return false, false // not absolute-form: net/http refuses it
		}
		rest := target[7:]
		end := len(rest)
		for i, c := range rest {
			if c == '/' || c == '?' {
				end = i
				break
			}
			if c == '@' || c == '#' {
				return false, false
			}
		}
		authIn, pathQuery = rest[:end], rest[end:]
		if len(authIn) == 0 {
			return false, false
		}
	}
	path, query, ok := splitTarget(pathQuery)
	if !ok {
		return false, false
	}
	if string(authIn) != string(rc.lastAuth) {
		rc.lastAuth = append(rc.lastAuth[:0], authIn...)
		rc.lastAuthorityIn = string(authIn)
		rc.lastAuthority = rc.captured
		if rc.captured == "" {
			rc.lastAuthority = hostPort(rc.lastAuthorityIn, "80")
		}
	}
	authority := rc.lastAuthority

	dst := p.dests.get(authority)
	wait := p.opts.FirstConfigTimeout
	by := time.Now().Add(wait)
	rt := dst.wait(context.Background(), wait)
	if rt == nil {
		// net/http refuses it, without waiting again for what the relay
		// waited for already.
		rc.configBy = by
		return false, false
	}
	if !rt.msg.GetFound() {
		return false, false // egress: net/http's
	}
	r := s.matchRequest(rc, path, query, rc.lastAuthorityIn, rt.readsHeaders)
	ru := rt.match(r)
	if ru == nil || ru.msg.GetRedirect() != nil || ru.msg.GetRewrite() != nil ||
		ru.msg.GetRequestHeaders() != nil || ru.msg.GetResponseHeaders() != nil || ru.msg.GetTimeout().AsDuration() > 0 {
		return false, false
	}
	b := ru.pick()
	me := p.creds.ID().String()
	if b == nil || b.msg.GetTimeouts().GetRequest().AsDuration() > 0 || !b.allows(me) {
		return false, false
	}
	ep, done := b.endpoint(r)
	if ep == nil {
		return false, false
	}
	pool := s.peerPool(ep, b.msg.GetTimeouts())

	l := telemetry.Labels{Direction: "outbound", TLS: "true", DestinationService: rt.msg.GetService(),
		DestinationWorkload: ep.GetWorkload(), DestinationNamespace: ep.GetNamespace(), Route: ru.msg.GetName()}
	if pol := p.policy.Load(); pol != nil {
		l.SourceWorkload, l.SourceNamespace = pol.Config().GetWorkload(), pol.Config().GetNamespace()
	}
	// The head's bytes are overwritten as the body is read: what the log
	// needs of them is copied first.
	var ua, reqID string
	if p.access != nil {
		ua, reqID = string(req.Get("user-agent")), string(req.Get("x-request-id"))
	}
	x := exchange{rc: rc, head: head, pool: pool, start: start, isHEAD: r.Method == http.MethodHead,
		writeHead: func(buf []byte) []byte {
			buf = appendRequestLine(buf, req.Method, pathQuery)
			if rc.captured != "" {
				return appendFields(buf, req, false) // Host as the app wrote it
			}
			buf = append(buf, "Host: "...)
			buf = append(buf, authIn...)
			buf = append(buf, "\r\n"...)
			return appendFields(buf, req, true)
		},
		unreachable: func(err error) (int, string, string) {
			var mismatch *spiffe.IdentityMismatchError
			if errors.As(err, &mismatch) {
				return http.StatusServiceUnavailable, ReasonIdentityMismatch, "endpoint " + ep.GetAddress() + " presented " + mismatch.Got.String() + ", not " + mismatch.Want.String()
			}
			return http.StatusServiceUnavailable, ReasonUpstreamUnreachable, "endpoint " + ep.GetAddress() + " (" + ep.GetWorkload() + "): " + err.Error()
		},
	}
	res, handled := s.relay(&x)
	if !handled {
		done(time.Since(start), true)
		return false, false
	}
	done(res.toHead, !res.upstreamOK)
	l.ResponseCode, l.Reason = statusText(res.status), res.reason
	d := time.Since(start)
	p.metrics.Request(l, d)
	if p.access != nil {
		e := telemetry.Entry{Time: start, Direction: "outbound", Method: r.Method, Protocol: "HTTP/1.1",
			Authority: authority, Path: r.URL.Path, Status: res.status, Duration: d, BytesSent: res.sent,
			UserAgent: ua, RequestID: reqID,
			Source: me, DestinationService: rt.msg.GetService(), DestinationWorkload: ep.GetWorkload(), Upstream: ep.GetAddress(),
			Route: ru.msg.GetName(), Reason: res.reason}
		p.access.Log(&e)
	}
	return true, rc.w.Flush() == nil && res.keep
}

// inbound relays a peer's request to the app.
func (s *h1Relay) inbound(rc *relayConn, head []byte) (handled, keep bool) {
	start := time.Now()
	p := s.p
	req := &rc.req
	if req.Target[0] != '/' || p.opts.AppAddr == "" {
		return false, false
	}
	pol := p.policy.Load()
	if pol == nil {
		return false, false
	}
	path, query, ok := splitTarget(req.Target)
	if !ok {
		return false, false
	}
	host := string(req.Host)
	r := s.matchRequest(rc, path, query, host, !pol.Config().GetPermissive())
	d := pol.AllowHTTP(rc.src, r)
	if !d.Allowed {
		return false, false
	}
	pool := s.appPool()
	l := telemetry.Labels{Direction: "inbound", TLS: "true", SourceNamespace: rc.srcNS, SourceWorkload: rc.srcAcct,
		DestinationWorkload: pol.Config().GetWorkload(), DestinationNamespace: pol.Config().GetNamespace(), Route: d.Rule}
	var ua, reqID string
	if p.access != nil {
		ua, reqID = string(req.Get("user-agent")), string(req.Get("x-request-id"))
	}
	x := exchange{rc: rc, head: head, pool: pool, start: start, isHEAD: r.Method == http.MethodHead,
		writeHead: func(buf []byte) []byte {
			buf = appendRequestLine(buf, req.Method, req.Target)
			return appendFields(buf, req, false)
		},
		unreachable: func(err error) (int, string, string) {
			return http.StatusServiceUnavailable, ReasonAppUnreachable, "app at " + p.opts.AppAddr + ": " + err.Error()
		},
	}
	res, handled := s.relay(&x)
	if !handled {
		return false, false
	}
	l.ResponseCode, l.Reason = statusText(res.status), res.reason
	dur := time.Since(start)
	p.metrics.Request(l, dur)
	if p.access != nil {
		e := telemetry.Entry{Time: start, Direction: "inbound", Method: r.Method, Protocol: "HTTP/1.1",
			Authority: host, Path: r.URL.Path, Status: res.status, Duration: dur, BytesSent: res.sent,
			UserAgent: ua, RequestID: reqID,
			Source: rc.src, DestinationWorkload: pol.Config().GetWorkload(), Route: d.Rule, Reason: res.reason}
		p.access.Log(&e)
	}
	return true, rc.w.Flush() == nil && res.keep
}

// matchRequest makes the request that route matches, balancers and
// authorization read: method, path, query and host, and the header fields
// only when withFields.
func (s *h1Relay) matchRequest(rc *relayConn, path, query []byte, host string, withFields bool) *http.Request {
	r := &http.Request{Method: methodString(rc.req.Method), URL: &url.URL{Path: string(path), RawQuery: string(query)}, Host: host,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1}
	if withFields {
		if rc.hdr == nil {
			rc.hdr = http.Header{}
		}
		clear(rc.hdr)
		for _, f := range rc.req.Fields {
			k := http.CanonicalHeaderKey(string(f.Name))
			rc.hdr[k] = append(rc.hdr[k], string(f.Value))
		}
		r.Header = rc.hdr
	}
	return r
}

// splitTarget splits an origin-form path and query; ok is false for a path
// with escapes, which the matches compare decoded (net/http decodes it).
func splitTarget(t []byte) (path, query []byte, ok bool) {
	path = t
	for i, c := range t {
		if c == '?' {
			path, query = t[:i], t[i+1:]
			break
		}
		if c == '%' || c == '#' {
			return nil, nil, false
		}
	}
	if len(path) == 0 {
		path = []byte("/")
	}
	return path, query, true
}

// methodString returns the method as a string, without allocating for the
// common ones.
func methodString(m []byte) string {
	switch string(m) {
	case http.MethodGet:
		return http.MethodGet
	case http.MethodPost:
		return http.MethodPost
	case http.MethodPut:
		return http.MethodPut
	case http.MethodDelete:
		return http.MethodDelete
	case http.MethodHead:
		return http.MethodHead
	case http.MethodPatch:
		return http.MethodPatch
	case http.MethodOptions:
		return http.MethodOptions
	}
	return string(m)
}

func appendRequestLine(buf, method, target []byte) []byte {
	buf = append(buf, method...)
	buf = append(buf, ' ')
	if len(target) == 0 || target[0] == '?' {
		buf = append(buf, '/')
	}
	buf = append(buf, target...)
	return append(buf, " HTTP/1.1\r\n"...)
}

// appendFields appends the fields of h that travel end to end, then the empty
// line: not the hop-by-hop ones, nor Host when the caller wrote its own.
func appendFields(buf []byte, h *h1.Head, skipHost bool) []byte {
	for _, f := range h.Fields {
		if h1.IsHopByHop(f.Name) || (skipHost && h1.EqualFold(f.Name, "host")) || (h.ConnectionNames && h.Named(f.Name)) {
			continue
		}
		buf = append(buf, f.Name...)
		buf = append(buf, ": "...)
		buf = append(buf, f.Value...)
		buf = append(buf, "\r\n"...)
	}
	return append(buf, "\r\n"...)
}

// reqBufs hold outgoing request heads (and small bodies) for one exchange.
var reqBufs = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}

// relay carries one exchange: it takes an upstream connection, consumes the
// request and relays it and its response, leaving the response's last bytes
// in rc.w for the caller to flush once it has counted the request (so that a
// caller who has the response sees it in the metrics, as with net/http). handled is false, with nothing
// consumed, when no upstream connection could be had: net/http then serves
// the request and refuses it in its own words.
func (s *h1Relay) relay(x *exchange) (res exchangeResult, handled bool) {
	rc, req := x.rc, &x.rc.req
	uc, err := x.pool.get()
	if err != nil {
		return res, false
	}
	bp := reqBufs.Get().(*[]byte)
	out := x.writeHead((*bp)[:0])
	// The body goes with the head when it is all here already.
	var bodyBuffered bool
	switch req.Framing {
	case h1.Empty:
		bodyBuffered = true
	case h1.Length:
		bodyBuffered = int64(rc.br.Buffered()-len(x.head)) >= req.ContentLength
	}
	rc.br.Discard(len(x.head))
	if bodyBuffered && req.Framing == h1.Length {
		b, _ := rc.br.Peek(int(req.ContentLength))
		out = append(out, b...)
		rc.br.Discard(len(b))
		res.received = req.ContentLength
	}
	defer func() {
		if cap(out) <= 64<<10 {
			*bp = out[:0]
			reqBufs.Put(bp)
		}
	}()

	// Send, and read the response head; a connection the upstream closed
	// while it sat idle is replaced once, when the whole request is here to
	// send again.
	var body chan bodyResult
	var head []byte
	for attempt := 0; ; attempt++ {
		_, err = uc.c.Write(out)
		if err == nil && !bodyBuffered {
			body = make(chan bodyResult, 1)
			go copyRequestBody(uc, rc, req, body)
		}
		if err == nil {
			head, err = readResponseHead(uc, x.isHEAD, &rc.resp)
		}
		if err == nil {
			break
		}
		uc.c.Close()
		res.toHead = time.Since(x.start)
		code, reason, msg := x.unreachable(err)
		if body != nil {
			// Part of the request's body is gone upstream: the downstream
			// connection is not at a message boundary any more.
			rc.c.SetReadDeadline(time.Now())
			<-body
			return s.refuse(rc, res, code, reason, msg, true), true
		}
		if attempt == 0 && uc.reused && idleClosed(err) {
			if uc, err = x.pool.dial(); err == nil {
				continue
			}
			code, reason, msg = x.unreachable(err)
		}
		return s.refuse(rc, res, code, reason, msg, false), true
	}
	res.toHead = time.Since(x.start)
	resp := &rc.resp
	if resp.Status == http.StatusSwitchingProtocols {
		uc.c.Close()
		if body != nil {
			rc.c.SetReadDeadline(time.Now())
			<-body
		}
		return s.refuse(rc, res, http.StatusBadGateway, ReasonUpgradeFailed, "the upstream switched protocols, which the request did not ask for", body != nil), true
	}
	res.status, res.upstreamOK = resp.Status, resp.Status < 500

	keepDown := req.KeepAlive && !s.isDraining()
	if resp.Framing == h1.UntilClose {
		keepDown = false
	}
	w := &rc.w
	w.Buf = appendResponseHead(w.Buf[:0], resp, !keepDown)
	uc.br.Discard(len(head))
	var n int64
	switch resp.Framing {
	case h1.Length:
		n, err = h1.CopyLength(w, uc.br, resp.ContentLength)
	case h1.Chunked:
		n, err = h1.CopyChunked(w, uc.br)
	case h1.UntilClose:
		n, err = h1.CopyUntilEOF(w, uc.br)
	}
	res.sent = n
	keepUp := err == nil && resp.KeepAlive
	if err != nil {
		keepDown = false
	}
	if body != nil {
		select {
		case br := <-body:
			res.received = br.n
			if br.err != nil {
				keepUp, keepDown = false, false
			}
		default:
			// The response is complete; the request's body should be too
			// (its last write may still be returning). If it is not soon,
			// neither connection is at a message boundary.
			t := time.NewTimer(bodyGrace)
			select {
			case br := <-body:
				res.received = br.n
				if br.err != nil {
					keepUp, keepDown = false, false
				}
			case <-t.C:
				uc.c.Close()
				rc.c.Close()
				br := <-body
				res.received = br.n
				keepUp, keepDown = false, false
			}
			t.Stop()
		}
	}
	if keepUp {
		x.pool.put(uc)
	} else {
		uc.c.Close()
	}
	res.keep = keepDown
	return res, true
}

// bodyGrace is how long a complete response waits for the request's body to
// finish going upstream before both connections are closed.
const bodyGrace = time.Second

// badResponse is an upstream response the relay cannot parse.
type badResponse struct{ err error }

func (b *badResponse) Error() string { return "malformed HTTP response: " + b.err.Error() }

// readResponseHead reads the final response head from uc, skipping
// interim (1xx) responses other than 101, which net/http does not relay either.
func readResponseHead(uc *upConn, toHEAD bool, resp *h1.Head) ([]byte, error) {
	for {
		head, err := h1.ReadHead(uc.br)
		if err != nil {
			if err == bufio.ErrBufferFull {
				return nil, &badResponse{errors.New("response head too large")}
			}
			return nil, err
		}
		if err := h1.ParseResponse(head, toHEAD, resp); err != nil {
			return nil, &badResponse{err}
		}
		if resp.Status >= 200 || resp.Status == http.StatusSwitchingProtocols {
			return head, nil
		}
		uc.br.Discard(len(head))
	}
}

// idleClosed says whether err is how a reused connection fails when its peer
// had closed it while idle, before any of the response.
func idleClosed(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

type bodyResult struct {
	n   int64
	err error
}

// copyRequestBody sends the rest of a request's body upstream while the
// response is relayed, so both directions flow at once as the peers intend.
func copyRequestBody(uc *upConn, rc *relayConn, req *h1.Head, done chan<- bodyResult) {
	w := h1.Writer{W: uc.c, Buf: make([]byte, 0, 4<<10)}
	var n int64
	var err error
	switch req.Framing {
	case h1.Length:
		n, err = h1.CopyLength(&w, rc.br, req.ContentLength)
	case h1.Chunked:
		n, err = h1.CopyChunked(&w, rc.br)
	}
	if err == nil {
		err = w.Flush()
	}
	done <- bodyResult{n, err}
}

// appendResponseHead appends the response's status line and its end-to-end
// fields, and Connection: close when the downstream connection ends after it.
func appendResponseHead(buf []byte, h *h1.Head, closing bool) []byte {
	buf = append(buf, "HTTP/1.1 "...)
	buf = strconv.AppendInt(buf, int64(h.Status), 10)
	buf = append(buf, ' ')
	if len(h.Reason) > 0 {
		buf = append(buf, h.Reason...)
	} else {
		buf = append(buf, http.StatusText(h.Status)...)
	}
	buf = append(buf, "\r\n"...)
	chunked := h.Framing == h1.Chunked
	for _, f := range h.Fields {
		if h1.IsHopByHop(f.Name) || (h.ConnectionNames && h.Named(f.Name)) || (chunked && h1.EqualFold(f.Name, "content-length")) {
			continue
		}
		buf = append(buf, f.Name...)
		buf = append(buf, ": "...)
		buf = append(buf, f.Value...)
		buf = append(buf, "\r\n"...)
	}
	if closing {
		buf = append(buf, "Connection: close\r\n"...)
	}
	return append(buf, "\r\n"...)
}

// refuse answers the downstream with a response the sidecar makes itself, in
// the words of refuse() on the net/http path.
func (s *h1Relay) refuse(rc *relayConn, res exchangeResult, code int, reason, msg string, closing bool) exchangeResult {
	body := "trellis: " + reason + ": " + msg + "\n"
	keep := rc.req.KeepAlive && !s.isDraining() && !closing
	w := &rc.w
	w.Buf = append(w.Buf[:0], "HTTP/1.1 "...)
	w.Buf = strconv.AppendInt(w.Buf, int64(code), 10)
	w.Buf = append(w.Buf, ' ')
	w.Buf = append(w.Buf, http.StatusText(code)...)
	w.Buf = append(w.Buf, "\r\n"+ReasonHeader+": "...)
	w.Buf = append(w.Buf, reason...)
	w.Buf = append(w.Buf, "\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nContent-Length: "...)
	w.Buf = strconv.AppendInt(w.Buf, int64(len(body)), 10)
	if !keep {
		w.Buf = append(w.Buf, "\r\nConnection: close"...)
	}
	w.Buf = append(w.Buf, "\r\n\r\n"...)
	w.Buf = append(w.Buf, body...)
	res.status, res.reason, res.sent, res.keep = code, reason, int64(len(body)), keep
	return res
}

// peerPool returns the HTTP/1.1 pool for a peer sidecar's endpoint.
func (s *h1Relay) peerPool(ep *proxyv1.Endpoint, to *proxyv1.Timeouts) *h1Pool {
	key := upstreamKey{ep.GetAddress(), ep.GetIdentity(), false}
	s.poolMu.Lock()
	defer s.poolMu.Unlock()
	if pl := s.pools[key]; pl != nil {
		return pl
	}
	pl := &h1Pool{idle: to.GetIdle().AsDuration(), dialConn: func() (net.Conn, error) {
		return s.p.dialPeer(context.Background(), ep, to, "http/1.1")
	}}
	s.pools[key] = pl
	return pl
}

// appPool returns the pool of connections to the app.
func (s *h1Relay) appPool() *h1Pool {
	key := upstreamKey{address: s.p.opts.AppAddr}
	s.poolMu.Lock()
	defer s.poolMu.Unlock()
	if pl := s.pools[key]; pl != nil {
		return pl
	}
	d := net.Dialer{Timeout: 2 * time.Second, Control: s.p.dialControl}
	addr := s.p.opts.AppAddr
	pl := &h1Pool{idle: 60 * time.Second, dialConn: func() (net.Conn, error) { return d.Dial("tcp", addr) }}
	s.pools[key] = pl
	return pl
}

// sweep closes pooled connections idle for longer than their pool allows.
func (s *h1Relay) sweep(now time.Time) {
	s.poolMu.Lock()
	pools := make([]*h1Pool, 0, len(s.pools))
	for _, pl := range s.pools {
		pools = append(pools, pl)
	}
	s.poolMu.Unlock()
	for _, pl := range pools {
		pl.expire(now)
	}
}

// h1Pool keeps idle HTTP/1.1 connections to one upstream, the most recently
// used first.
type h1Pool struct {
	dialConn func() (net.Conn, error)
	idle     time.Duration // 0: no limit

	mu    sync.Mutex
	conns []*upConn
}

// maxIdlePerUpstream caps the idle connections kept for one upstream, as the
// net/http transports' MaxIdleConnsPerHost.
const maxIdlePerUpstream = 64

type upConn struct {
	c      net.Conn
	br     *bufio.Reader
	used   time.Time
	reused bool
}

func (pl *h1Pool) get() (*upConn, error) {
	now := time.Now()
	pl.mu.Lock()
	for len(pl.conns) > 0 {
		uc := pl.conns[len(pl.conns)-1]
		pl.conns[len(pl.conns)-1] = nil
		pl.conns = pl.conns[:len(pl.conns)-1]
		if pl.idle > 0 && now.Sub(uc.used) > pl.idle {
			uc.c.Close()
			continue
		}
		pl.mu.Unlock()
		uc.reused = true
		return uc, nil
	}
	pl.mu.Unlock()
	return pl.dial()
}

func (pl *h1Pool) dial() (*upConn, error) {
	c, err := pl.dialConn()
	if err != nil {
		return nil, err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetKeepAlive(true)
	}
	return &upConn{c: c, br: bufio.NewReaderSize(c, relayBufSize)}, nil
}

func (pl *h1Pool) put(uc *upConn) {
	if uc.br.Buffered() > 0 {
		uc.c.Close() // bytes after the response: the upstream is confused
		return
	}
	uc.used = time.Now()
	pl.mu.Lock()
	if len(pl.conns) < maxIdlePerUpstream {
		pl.conns = append(pl.conns, uc)
		uc = nil
	}
	pl.mu.Unlock()
	if uc != nil {
		uc.c.Close()
	}
}

func (pl *h1Pool) expire(now time.Time) {
	pl.mu.Lock()
	keep := pl.conns[:0]
	var old []*upConn
	for _, uc := range pl.conns {
		if pl.idle > 0 && now.Sub(uc.used) > pl.idle {
			old = append(old, uc)
		} else {
			keep = append(keep, uc)
		}
	}
	clear(pl.conns[len(keep):])
	pl.conns = keep
	pl.mu.Unlock()
	for _, uc := range old {
		uc.c.Close()
	}
}

func (pl *h1Pool) closeAll() {
	pl.mu.Lock()
	conns := pl.conns
	pl.conns = nil
	pl.mu.Unlock()
	for _, uc := range conns {
		uc.c.Close()
	}
}

func (s *h1Relay) track(rc *relayConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining.Load() {
		return false
	}
	s.conns[rc] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *h1Relay) untrack(rc *relayConn) {
	s.mu.Lock()
	delete(s.conns, rc)
	s.mu.Unlock()
	s.wg.Done()
}

func (s *h1Relay) isDraining() bool { return s.draining.Load() }

// drain stops taking requests: it closes idle connections at once, lets those
// in the middle of an exchange finish it (the response says Connection:
// close) until ctx ends, then closes the rest and the pools.
func (s *h1Relay) drain(ctx context.Context) {
	s.mu.Lock()
	s.draining.Store(true)
	s.mu.Unlock()
	finished := make(chan struct{})
	go func() { s.wg.Wait(); close(finished) }()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		s.mu.Lock()
		for rc := range s.conns {
			if rc.idle.Load() {
				rc.c.Close()
			}
		}
		s.mu.Unlock()
		select {
		case <-finished:
			s.closePools()
			return
		case <-ctx.Done():
			s.mu.Lock()
			for rc := range s.conns {
				rc.c.Close()
			}
			s.mu.Unlock()
			<-finished
			s.closePools()
			return
		case <-tick.C:
		}
	}
}

func (s *h1Relay) closePools() {
	s.poolMu.Lock()
	defer s.poolMu.Unlock()
	for _, pl := range s.pools {
		pl.closeAll()
	}
}

// replayConn is a connection handed to net/http with the bytes the relay had
// buffered but not consumed: they are read first.
type replayConn struct {
	net.Conn
	br *bufio.Reader
	// configBy: see relayConn.configBy.
	configBy time.Time
}

func (c *replayConn) Read(b []byte) (int, error) {
	if c.br != nil {
		if c.br.Buffered() > 0 {
			return c.br.Read(b)
		}
		c.br = nil
	}
	return c.Conn.Read(b)
}

// tlsStateKey carries, in a connection's context, the TLS state of a
// connection the relay handed over wrapped (net/http sees no *tls.Conn then).
type tlsStateKey struct{}

// relayConnContext is the net/http servers' ConnContext: it carries what a
// connection the relay handed over brings with it.
func relayConnContext(ctx context.Context, c net.Conn) context.Context {
	rc, ok := c.(*replayConn)
	if !ok {
		return ctx
	}
	if tc, ok := rc.Conn.(*tls.Conn); ok {
		st := tc.ConnectionState()
		ctx = context.WithValue(ctx, tlsStateKey{}, &st)
	}
	if !rc.configBy.IsZero() {
		ctx = context.WithValue(ctx, configWaitKey{}, &configWait{by: rc.configBy})
	}
	return ctx
}

// configWaitKey carries, in a connection's context, the *configWait of the
// request the relay handed over after waiting for its destination's first
// config.
type configWaitKey struct{}

// configWait is the end of a wait for a first config that the relay began:
// it applies to the first request net/http reads on the connection, the one
// handed over.
type configWait struct {
	by   time.Time
	used atomic.Bool
}

// firstConfigWait is how long the request whose context is ctx may wait for
// its destination's first config: FirstConfigTimeout, or what is left of it
// for the request the relay handed over, so that no request waits longer
// than FirstConfigTimeout in all.
func (p *Proxy) firstConfigWait(ctx context.Context) time.Duration {
	if w, ok := ctx.Value(configWaitKey{}).(*configWait); ok && w.used.CompareAndSwap(false, true) {
		return max(time.Until(w.by), 0)
	}
	return p.opts.FirstConfigTimeout
}

// requestTLS is r's TLS state, also for a connection the relay handed over.
func requestTLS(r *http.Request) *tls.ConnectionState {
	if r.TLS != nil {
		return r.TLS
	}
	st, _ := r.Context().Value(tlsStateKey{}).(*tls.ConnectionState)
	return st
}
