// Package proxy is the Trellis sidecar runtime: the outbound listener the app
// reaches as its HTTP proxy (or with h2c, prior knowledge), the inbound mTLS
// listener that authorizes callers by SPIFFE ID and forwards to the app, and the
// admin listener (/ready, /live, /config, /metrics). It applies whole configs
// from the control plane atomically and keeps serving with the last one when the
// control plane is away. Only the trellis-proxy binary imports it; it never
// imports client-go, grpc-go or control-plane packages.
package proxy

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	proxyv1 "github.com/trellis-mesh/trellis/api/proxy/v1"
	"github.com/trellis-mesh/trellis/internal/authz"
	"github.com/trellis-mesh/trellis/internal/probe"
	"github.com/trellis-mesh/trellis/internal/proxy/control"
	"github.com/trellis-mesh/trellis/internal/proxy/procenv"
	"github.com/trellis-mesh/trellis/internal/proxy/telemetry"
	"github.com/trellis-mesh/trellis/internal/spiffe"
)

// TokenEnv is the environment variable that carries the join token, so that it
// never shows in a process listing.
const TokenEnv = "TRELLIS_JOIN_TOKEN"

// defaultFirstConfigTimeout is the longest a request or a connection waits for
// its destination's first config from the control plane (Options.FirstConfigTimeout).
const defaultFirstConfigTimeout = 3 * time.Second

// Options configure a sidecar.
type Options struct {
	ControlPlane string // host:port of the control plane's gRPC endpoint
	CAFile       string // PEM roots that verify the control plane
	Credential   string // join token or service-account token
	// CredentialFile, when set, holds the credential and is read again at each
	// renewal (a projected service-account token on Kubernetes).
	CredentialFile string
	// KeyType of the key the sidecar makes for its certificate; default ECDSA P-256.
	KeyType    spiffe.KeyType
	WorkloadID string // as registered

	// Listen addresses, host:port, or fd:N for a listening socket inherited as
	// file descriptor N (how `trellis run` hands over sockets it bound itself,
	// so that no port is chosen and then lost to another process).
	InboundAddr  string // mTLS listener for peers; default 127.0.0.1:15003
	OutboundAddr string // the app's HTTP proxy; default 127.0.0.1:15001
	AdminAddr    string // /ready, /config, /metrics; default 127.0.0.1:15000
	AppAddr      string // where the app listens, host:port; empty: the app serves nothing
	// TCPForwards bind local ports, each an opaque TCP stream to one mesh
	// destination; none by default.
	TCPForwards []TCPForward
	// AppProbes are the app's health probes that injection moved to the
	// admin listener, served at their /app-health/ paths; none by default.
	AppProbes probe.Table

	// Transparent capture (see package capture): the listeners that
	// redirected connections arrive on, the app's outbound ones (on
	// 127.0.0.1, and for IPv6 on [::1] at the same port where the namespace
	// has IPv6) and inbound ones to the app's ports (on 0.0.0.0, which takes
	// both families); empty: none. SocketMark, when set, marks every socket
	// the sidecar dials so that capture rules with the same mark let them
	// pass (needs CAP_NET_ADMIN); with capture by user ID it stays 0.
	CaptureOutboundAddr string
	CaptureInboundAddr  string
	SocketMark          uint32

	// DrainTimeout bounds how long in-flight requests may finish at shutdown; default 10s.
	DrainTimeout time.Duration
	// IdleTimeout drops a destination's watch when unused this long; default 5m.
	IdleTimeout time.Duration
	// FirstConfigTimeout bounds how long a request or a connection waits, in
	// all, for its destination's first config before it is refused with
	// no_config: however many of the sidecar's paths it passes through (the
	// HTTP/1.1 relay, then net/http), it is not waited for again; default 3s
	// (defaultFirstConfigTimeout).
	FirstConfigTimeout time.Duration

	AccessLog io.Writer // JSON lines; nil: none
	Logger    *slog.Logger
	// LogLevel, when set, is the level Logger logs at; the mesh config's
	// sidecar log level changes it while the sidecar runs, and
	// DefaultLogLevel is what it returns to when the mesh config names none.
	LogLevel        *slog.LevelVar
	DefaultLogLevel slog.Level

	// AccessLogEvery gathers access log lines and writes them together at
	// most this far apart; 0 (the default): each line is written at once.
	// trellis-proxy sets 100ms (--access-log-every).
	AccessLogEvery time.Duration
}

// Run parses args as trellis-proxy's flags and runs the sidecar until ctx ends.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("trellis-proxy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o Options
	fs.StringVar(&o.ControlPlane, "control-plane", "127.0.0.1:15128", "control plane gRPC `address`: host:port, or unix:PATH")
	fs.StringVar(&o.CAFile, "ca-file", "", "PEM `file` of the roots that verify the control plane (required)")
	fs.StringVar(&o.WorkloadID, "workload-id", "", "registered workload `id` (required)")
	keyType := fs.String("key-type", string(spiffe.KeyP256), "the `type` of key made for the certificate: ecdsa-p256, ecdsa-p384, rsa-2048 or rsa-3072")
	fs.StringVar(&o.CredentialFile, "token-file", "", "`file` holding the credential, read at each renewal (default: $"+TokenEnv+")")
	fs.StringVar(&o.InboundAddr, "inbound", "127.0.0.1:15003", "inbound mTLS listen `address` (host:port, or fd:N for an inherited socket)")
	fs.StringVar(&o.OutboundAddr, "outbound", "127.0.0.1:15001", "outbound (app's HTTP proxy) listen `address` (host:port or fd:N)")
	fs.StringVar(&o.AdminAddr, "admin", "127.0.0.1:15000", "admin listen `address` (host:port or fd:N)")
	fs.StringVar(&o.AppAddr, "app", "", "the app's `address`, host:port (empty: the app serves nothing)")
	fs.DurationVar(&o.DrainTimeout, "drain-timeout", 10*time.Second, "how long in-flight requests may finish at shutdown")
	fs.DurationVar(&o.IdleTimeout, "idle-timeout", 5*time.Minute, "drop a destination's watch when unused this long")
	fs.Func("tcp-forward", "bind `LISTEN=AUTHORITY`: connections to LISTEN (host:port or fd:N) are opaque TCP to the mesh destination AUTHORITY (repeatable)", func(v string) error {
		f, err := ParseTCPForward(v)
		if err == nil {
			o.TCPForwards = append(o.TCPForwards, f)
		}
		return err
	})
	fs.StringVar(&o.CaptureOutboundAddr, "capture-outbound", "", "listen `address` for the app's connections redirected by transparent capture (e.g. 127.0.0.1:15002; empty: none)")
	fs.StringVar(&o.CaptureInboundAddr, "capture-inbound", "", "listen `address` for connections to the app's ports redirected by transparent capture (e.g. 0.0.0.0:15006; empty: none)")
	fs.Func("socket-mark", "mark every socket the sidecar dials with this `number` (SO_MARK), as capture rules exclude it; needs CAP_NET_ADMIN", func(v string) error {
		m, err := strconv.ParseUint(v, 0, 32)
		if err != nil || m == 0 {
			return fmt.Errorf("want a non-zero 32-bit number, such as 0x7e11")
		}
		o.SocketMark = uint32(m)
		return nil
	})
	fs.Func("app-probes", "serve the app's health probes on the admin listener: `JSON` of /app-health/<container>/<kind> to {scheme, port, path, timeoutSeconds} (set by injection)", func(v string) (err error) {
		o.AppProbes, err = probe.Parse(v)
		return err
	})
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn, error")
	accessLog := fs.Bool("access-log", true, "write JSON access log lines to stdout")
	fs.DurationVar(&o.AccessLogEvery, "access-log-every", 100*time.Millisecond, "write access log lines together at most this far apart (0: each at once)")
	concurrency := fs.Int("concurrency", procenv.DefaultConcurrency, "how many threads run the sidecar's Go code at once (GOMAXPROCS; 0: the Go runtime's choice, the CPU count or the container's CPU limit but at least 2); $GOMAXPROCS, when set, wins")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: trellis-proxy [flags]\n\nThe Trellis sidecar. The join token is read from $%s.\n\nExample:\n  %s=... trellis-proxy --ca-file ca.pem --workload-id bookstore/bookstore-v1-1a2b3c --app 127.0.0.1:14001\n\nFlags:\n", TokenEnv, TokenEnv)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *concurrency < 0 {
		return fmt.Errorf("--concurrency: want 0 or more threads, not %d", *concurrency)
	}
	// Process-wide, so set here for the binary and not in New, which tests
	// call many times in one process.
	procenv.SetConcurrency(*concurrency)
	o.Credential = os.Getenv(TokenEnv)
	kt, err := spiffe.ParseKeyType(*keyType)
	if err != nil {
		return fmt.Errorf("--key-type: %w", err)
	}
	o.KeyType = kt
	var lvl slog.Level
	o.LogLevel = new(slog.LevelVar)
	if err := lvl.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	o.LogLevel.Set(lvl)
	o.DefaultLogLevel = lvl
	o.Logger = slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: o.LogLevel}))
	if *accessLog {
		o.AccessLog = stdout
	}
	p, err := New(o)
	if err != nil {
		return err
	}
	return p.Run(ctx)
}

// Proxy is one sidecar.
type Proxy struct {
	opts    Options
	creds   *spiffe.Credentials
	client  *control.Client
	metrics *telemetry.Metrics
	access  *telemetry.AccessLog
	log     *slog.Logger

	policy   atomic.Pointer[authz.Policy]
	dests    *destinations
	streams  *streams
	draining atomic.Bool
	ready    atomic.Bool

	upMu      sync.Mutex
	upstreams map[upstreamKey]*http.Transport
	app       *http.Transport // HTTP/1.1 to the app (and to egress destinations)
	appH2     *http.Transport // h2c, prior knowledge, to the app
	// dialControl marks the sidecar's own sockets for capture (nil: none).
	dialControl func(network, address string, c syscall.RawConn) error

	// The HTTP/1.1 relays of the outbound and inbound listeners (h1relay.go).
	h1out, h1in *h1Relay

	// bound addresses, known once listening
	Inbound, Outbound, Admin        net.Addr
	CaptureOutbound, CaptureInbound net.Addr   // nil when not capturing
	TCPForwards                     []net.Addr // in the order of Options.TCPForwards
	listening                       chan struct{}
}

// New checks the options and makes a sidecar; Run starts it.
func New(o Options) (*Proxy, error) {
	if o.CAFile == "" {
		return nil, errors.New("--ca-file is required: the control plane's CA bundle (ca.pem in the state directory)")
	}
	if o.WorkloadID == "" {
		return nil, errors.New("--workload-id is required: the ID `trellis run` registered")
	}
	if o.Credential == "" && o.CredentialFile == "" {
		return nil, fmt.Errorf("no credential: set $%s or pass --token-file", TokenEnv)
	}
	pem, err := os.ReadFile(o.CAFile)
	if err != nil {
		return nil, fmt.Errorf("--ca-file: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("--ca-file %s holds no PEM certificate", o.CAFile)
	}
	if o.DrainTimeout == 0 {
		o.DrainTimeout = 10 * time.Second
	}
	if o.IdleTimeout == 0 {
		o.IdleTimeout = 5 * time.Minute
	}
	if o.FirstConfigTimeout == 0 {
		o.FirstConfigTimeout = defaultFirstConfigTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	creds := &spiffe.Credentials{}
	ctl := dialControl(o.SocketMark)
	p := &Proxy{
		dialControl: ctl,
		opts:        o,
		creds:       creds,
		metrics:     telemetry.NewMetrics(),
		log:         o.Logger,
		upstreams:   map[upstreamKey]*http.Transport{},
		streams:     newStreams(),
		listening:   make(chan struct{}),
		app: &http.Transport{
			DialContext:           (&net.Dialer{Timeout: 2 * time.Second, Control: ctl}).DialContext,
			MaxIdleConnsPerHost:   64,
			IdleConnTimeout:       60 * time.Second,
			ExpectContinueTimeout: expectContinueTimeout,
		},
		appH2: &http.Transport{
			DialContext:     (&net.Dialer{Timeout: 2 * time.Second, Control: ctl}).DialContext,
			Protocols:       h2cOnly(),
			IdleConnTimeout: 60 * time.Second,
		},
	}
	p.h1out, p.h1in = newH1Relay(p, sideOutbound), newH1Relay(p, sideInbound)
	if o.AccessLog != nil {
		p.access = telemetry.NewAccessLogEvery(o.AccessLog, o.AccessLogEvery)
	}
	p.client = control.New(control.Config{
		Address:        o.ControlPlane,
		Roots:          roots,
		Credential:     o.Credential,
		CredentialFile: o.CredentialFile,
		KeyType:        o.KeyType,
		WorkloadID:     o.WorkloadID,
		Credentials:    creds,
		Logger:         o.Logger,
	})
	return p, nil
}

// Listening is closed once every listener is bound.
func (p *Proxy) Listening() <-chan struct{} { return p.listening }

// Run certifies, starts the listeners and serves until ctx ends, then drains.
func (p *Proxy) Run(ctx context.Context) error {
	start := time.Now()
	// Every listener bound so far, closed together when a later one fails.
	var opened []net.Listener
	bind := func(addr string) (net.Listener, error) {
		ln, err := listen(addr)
		if err != nil {
			closeListeners(opened)
			return nil, err
		}
		opened = append(opened, ln)
		return ln, nil
	}
	inLn, err := bind(p.opts.InboundAddr)
	if err != nil {
		return fmt.Errorf("inbound listener: %w", err)
	}
	outLn, err := bind(p.opts.OutboundAddr)
	if err != nil {
		return fmt.Errorf("outbound listener: %w", err)
	}
	admLn, err := bind(p.opts.AdminAddr)
	if err != nil {
		return fmt.Errorf("admin listener: %w", err)
	}
	var fwdLns []net.Listener
	closeFwd := func() { closeListeners(fwdLns) }
	for _, f := range p.opts.TCPForwards {
		ln, err := bind(f.Listen)
		if err != nil {
			return fmt.Errorf("tcp forward %s=%s: %w", f.Listen, f.Authority, err)
		}
		fwdLns = append(fwdLns, ln)
		p.TCPForwards = append(p.TCPForwards, ln.Addr())
	}
	var capLns []net.Listener // outbound, inbound; nil entries when off
	for _, a := range []string{p.opts.CaptureOutboundAddr, p.opts.CaptureInboundAddr} {
		if a == "" {
			capLns = append(capLns, nil)
			continue
		}
		ln, err := bind(a)
		if err != nil {
			return fmt.Errorf("capture listener %s: %w", a, err)
		}
		capLns = append(capLns, ln)
	}
	if capLns[0] != nil {
		p.CaptureOutbound = capLns[0].Addr()
	}
	if capLns[1] != nil {
		p.CaptureInbound = capLns[1].Addr()
	}
	// Capture redirects IPv6 connections too: the outbound port on ::1.
	capOut6, err := listenIPv6Twin(p.opts.CaptureOutboundAddr)
	if err != nil {
		closeListeners(opened)
		return fmt.Errorf("capture listener %s, on IPv6: %w", p.opts.CaptureOutboundAddr, err)
	}
	closeCapture := func() {
		closeListeners(capLns)
		if capOut6 != nil {
			capOut6.Close()
		}
	}
	p.Inbound, p.Outbound, p.Admin = inLn.Addr(), outLn.Addr(), admLn.Addr()
	close(p.listening)

	// Watches and renewal live until the sidecar has drained. The destination
	// table exists before the admin listener serves, since /config reads it.
	bg, stopBG := context.WithCancel(context.WithoutCancel(ctx))
	defer stopBG()
	p.dests = newDestinations(bg, p.opts.IdleTimeout, p.client.WatchDestination)

	admin := &http.Server{Handler: p.adminHandler(), ReadHeaderTimeout: 5 * time.Second}
	go admin.Serve(admLn)
	defer admin.Close()

	if err := p.client.CertifyUntilDone(ctx); err != nil {
		inLn.Close()
		outLn.Close()
		closeFwd()
		closeCapture()
		if ctx.Err() != nil {
			return nil // stopped before it was certified: nothing to drain
		}
		return err
	}
	go p.client.Renew(bg)
	policyReady := make(chan struct{})
	var once sync.Once
	go p.client.WatchInbound(bg, func(m *proxyv1.InboundConfig) error {
		pol, err := authz.Compile(m)
		if err != nil {
			return err
		}
		p.policy.Store(pol)
		if lv := p.opts.LogLevel; lv != nil {
			lv.Set(meshLogLevel(m.GetLogLevel(), p.opts.DefaultLogLevel))
		}
		once.Do(func() { close(policyReady) })
		return nil
	})
	go p.sweepLoop(bg)

	inbound := &http.Server{Handler: http.HandlerFunc(p.serveInbound), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute, ConnContext: relayConnContext}
	// The outbound listener serves HTTP/1.1 (the app's HTTP proxy) and h2c
	// with prior knowledge, told apart by net/http from the connection's
	// first bytes (the HTTP/2 preface); see docs/adr/0004.
	var outProtos http.Protocols
	outProtos.SetHTTP1(true)
	outProtos.SetUnencryptedHTTP2(true)
	outbound := &http.Server{Handler: http.HandlerFunc(p.serveOutbound), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute, Protocols: &outProtos, ConnContext: relayConnContext}
	acc := newTLSAcceptor(inLn, spiffe.ServerTLS(p.creds), p)
	// HTTP/1.1 on both listeners goes through the relays, which hand the
	// connections they do not take to these servers (h1relay.go).
	outQueue := newConnQueue(outLn.Addr())
	p.h1out.handoff, p.h1in.handoff = outQueue.push, acc.push
	go acc.run()
	go inbound.Serve(acc)
	go outbound.Serve(outQueue)
	go p.h1out.serveListener(outLn)
	for i, ln := range fwdLns {
		go p.serveTCPForward(bg, ln, p.opts.TCPForwards[i].Authority)
	}
	// Captured HTTP connections are served like the outbound listener's:
	// HTTP/1.1 by the outbound relay, HTTP/2 and what the relay hands over by
	// this server, each request knowing where its connection was going.
	captured := &http.Server{Handler: http.HandlerFunc(p.serveOutbound), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute, Protocols: &outProtos,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if cc, ok := c.(*capturedConn); ok {
				return context.WithValue(relayConnContext(ctx, cc.Conn), capturedKey{}, cc.authority)
			}
			return ctx
		}}
	servers := []*http.Server{inbound, outbound}
	if ln := capLns[0]; ln != nil {
		q := newConnQueue(ln.Addr())
		p.h1out.handoffCaptured = q.push
		go captured.Serve(q)
		go p.serveCaptureOutbound(bg, ln, q)
		if capOut6 != nil {
			go p.serveCaptureOutbound(bg, capOut6, q)
		}
		servers = append(servers, captured)
	}
	if ln := capLns[1]; ln != nil {
		go p.serveCaptureInbound(ln)
	}

	select {
	case <-policyReady:
		p.ready.Store(true)
		p.log.Info("ready", "inbound", p.Inbound.String(), "outbound", p.Outbound.String(), "admin", p.Admin.String(),
			"identity", p.creds.ID().String(), "start_to_ready", time.Since(start).String())
	case <-ctx.Done():
	}
	<-ctx.Done()

	// Drain: stop being ready, let in-flight requests finish (bounded), exit.
	p.draining.Store(true)
	p.log.Info("draining", "timeout", p.opts.DrainTimeout.String())
	dctx, cancel := context.WithTimeout(context.Background(), p.opts.DrainTimeout)
	defer cancel()
	var wg sync.WaitGroup
	closeFwd()
	closeCapture()
	outLn.Close()
	wg.Add(1)
	go func() {
		defer wg.Done()
		p.streams.drain(dctx) // tunnels and switched connections, which the servers forgot
	}()
	for _, r := range []*h1Relay{p.h1out, p.h1in} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.drain(dctx)
		}()
	}
	for _, s := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Shutdown(dctx); err != nil {
				s.Close()
			}
		}()
	}
	wg.Wait()
	acc.Close()
	if p.access != nil {
		p.access.Flush()
	}
	p.log.Info("stopped")
	return nil
}

// listenIPv6Twin listens on the IPv6 counterpart of a capture listener's
// address, where capture sends IPv6 connections: [::1]:port for
// 127.0.0.1:port, since outbound redirects go to the loopback address of the
// connection's family. (0.0.0.0:port needs none: Go listens there on both
// families, and inbound redirects go to the address a connection came to.)
// It returns nil, and no error, for any other address (another host, port 0,
// fd:N) and where the namespace has no IPv6.
func listenIPv6Twin(addr string) (net.Listener, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port == "0" || host != "127.0.0.1" {
		return nil, nil
	}
	ln, err := net.Listen("tcp6", net.JoinHostPort("::1", port))
	if errors.Is(err, syscall.EADDRNOTAVAIL) || errors.Is(err, syscall.EAFNOSUPPORT) {
		return nil, nil
	}
	return ln, err
}

// closeListeners closes each listener that is not nil.
func closeListeners(lns []net.Listener) {
	for _, ln := range lns {
		if ln != nil {
			ln.Close()
		}
	}
}

// h2cOnly is the protocol set of a transport that speaks HTTP/2 with prior
// knowledge, unencrypted, for http:// URLs.
func h2cOnly() *http.Protocols {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return &p
}

// meshLogLevel maps the mesh config's sidecar log level (OSM's words) to a
// slog level; empty or unknown gives def.
func meshLogLevel(osm string, def slog.Level) slog.Level {
	switch strings.ToLower(osm) {
	case "trace", "debug":
		return slog.LevelDebug
	case "info":
		return slog.LevelInfo
	case "warning", "warn":
		return slog.LevelWarn
	case "error", "critical":
		return slog.LevelError
	case "off":
		return slog.LevelError + 100
	}
	return def
}

// listen opens a TCP listener on host:port, or takes over the listening socket
// inherited as file descriptor N for "fd:N".
func listen(addr string) (net.Listener, error) {
	num, ok := strings.CutPrefix(addr, "fd:")
	if !ok {
		return net.Listen("tcp", addr)
	}
	fd, err := strconv.Atoi(num)
	if err != nil || fd < 3 {
		return nil, fmt.Errorf("%q: want fd:N with N ≥ 3, an inherited listening socket", addr)
	}
	f := os.NewFile(uintptr(fd), "listener-"+num)
	if f == nil {
		return nil, fmt.Errorf("%q: file descriptor %d is not open", addr, fd)
	}
	defer f.Close() // FileListener holds its own duplicate
	ln, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("%q: not a listening socket: %w", addr, err)
	}
	return ln, nil
}

func (p *Proxy) sweepLoop(ctx context.Context) {
	t := time.NewTicker(p.opts.IdleTimeout / 4)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			p.dests.sweep(now)
			p.h1out.sweep(now)
			p.h1in.sweep(now)
		}
	}
}
