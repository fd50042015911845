package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/trellis-mesh/trellis/internal/proxy/telemetry"
	"github.com/trellis-mesh/trellis/internal/spiffe"
)

// TCPForward binds a local port for one mesh destination, for apps that speak
// a protocol other than HTTP and cannot use the sidecar as a proxy (a MySQL
// client, say): every connection to Listen is an opaque TCP stream to
// Authority, over mTLS to the peer sidecar, like a CONNECT tunnel.
type TCPForward struct {
	Listen    string // host:port the app connects to, or fd:N
	Authority string // the mesh destination, "ledger.bookstore:7000"
}

// ParseTCPForward reads "LISTEN=AUTHORITY", as --tcp-forward takes it.
func ParseTCPForward(s string) (TCPForward, error) {
	listen, authority, ok := strings.Cut(s, "=")
	if !ok || listen == "" || authority == "" {
		return TCPForward{}, fmt.Errorf("--tcp-forward %q: want LISTEN=AUTHORITY, e.g. 127.0.0.1:13306=mysql.db:3306", s)
	}
	if _, _, err := net.SplitHostPort(authority); err != nil {
		return TCPForward{}, fmt.Errorf("--tcp-forward %q: the authority needs a port: %w", s, err)
	}
	return TCPForward{Listen: listen, Authority: authority}, nil
}

// serveTCPForward accepts connections for one forward until the listener closes.
func (p *Proxy) serveTCPForward(ctx context.Context, ln net.Listener, authority string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go p.forwardTCP(ctx, c, authority)
	}
}

// forwardTCP carries one app connection to a mesh destination as an opaque
// TCP stream. A connection that cannot be carried is closed and counted in
// trellis_connections_refused_total{direction="outbound"} with its reason.
func (p *Proxy) forwardTCP(ctx context.Context, down net.Conn, authority string) {
	drop := func(reason string, args ...any) {
		p.metrics.Refused("outbound", reason)
		p.log.Info("tcp connection refused", append([]any{"authority", authority, "reason", reason}, args...)...)
		down.Close()
	}
	rt := p.dests.get(authority).wait(ctx, p.opts.FirstConfigTimeout)
	switch {
	case rt == nil:
		drop(ReasonNoConfig)
		return
	case !rt.msg.GetFound():
		// Egress for a bound port is not offered: the port names a mesh
		// destination.
		drop(ReasonEgressDenied, "why", rt.msg.GetReason())
		return
	}
	l := telemetry.Labels{Direction: "outbound", TLS: "true", DestinationService: rt.msg.GetService()}
	if pol := p.policy.Load(); pol != nil {
		l.SourceWorkload, l.SourceNamespace = pol.Config().GetWorkload(), pol.Config().GetNamespace()
	}
	ru := rt.unconditional()
	if ru == nil {
		drop(ReasonNoRoute) // only HTTP rules with matches, which a TCP stream cannot meet
		return
	}
	b := ru.pick()
	if b == nil {
		drop(ReasonNoEndpoints)
		return
	}
	ep, done := b.endpoint(nil)
	if ep == nil {
		drop(ReasonNoEndpoints)
		return
	}
	if me := p.creds.ID().String(); !b.allows(me) {
		done(0, true)
		drop(ReasonDenied, "source", me, "backend", b.msg.GetName())
		return
	}
	l.DestinationWorkload, l.DestinationNamespace = ep.GetWorkload(), ep.GetNamespace()
	picked := time.Now()
	up, err := p.dialPeer(ctx, ep, b.msg.GetTimeouts(), alpnTCP)
	if err != nil {
		done(time.Since(picked), true)
		reason := ReasonUpstreamUnreachable
		if mismatch := (*spiffe.IdentityMismatchError)(nil); errors.As(err, &mismatch) {
			reason = ReasonIdentityMismatch
		}
		drop(reason, "endpoint", ep.GetAddress(), "err", err)
		return
	}
	// The balancer learns the time to connect, not how long the app keeps
	// the connection.
	done(time.Since(picked), false)
	p.carry(down, up, l)
}
