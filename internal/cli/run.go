package cli

import (
	"github.com/trellis-mesh/trellis/internal/proxy/procenv"

	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/trellis-mesh/trellis/internal/controlplane"
	"github.com/trellis-mesh/trellis/internal/freeport"
	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/internal/source/local"
	"github.com/trellis-mesh/trellis/internal/spiffe"
)

// ProxyEnv names the sidecar binary when it is not beside trellis.
const ProxyEnv = "TRELLIS_PROXY"

type runOptions struct {
	*globals
	namespace, account, name string
	services                 []string
	port                     int
	proxyBin                 string
	readyTimeout             time.Duration
	withdrawDelay            time.Duration
	stopTimeout              time.Duration
	accessLog                bool
	keyType                  string
	proxyConcurrency         int
	tcpForwards              []string
	isolation                string
	excludeInboundPorts      string
	excludeOutboundPorts     string
	excludeOutboundCIDRs     string
}

func newRunCmd(g *globals) *cobra.Command {
	o := &runOptions{globals: g}
	cmd := &cobra.Command{
		Use:   "run --namespace NS --account SA [--service NAME[:PORT][/PROTOCOL],...] [--port APP_PORT] -- CMD [ARGS...]",
		Short: "Run a program in the local mesh with its own sidecar",
		Long: `Registers a workload, starts its sidecar, waits until the sidecar is ready, then starts
the program with HTTP_PROXY pointing at the sidecar. The workload takes traffic once the
program listens on --port. On SIGINT or SIGTERM, or when the program exits, the workload
stops taking traffic first, then the program is stopped, then the sidecar drains, then the
workload is deregistered. The exit code is the program's.

A service port defaults to --port; the protocol defaults to http.

A program that speaks a protocol other than HTTP to a mesh service (a database
client, say) gets a local port per destination with --tcp-forward: trellis run binds
LISTEN on loopback and the sidecar carries each connection to it as opaque TCP to
AUTHORITY.

With --isolation netns (root) the workload gets a network namespace of its own, as a
pod has: an address on the bridge trellis0 (198.19.0.0/16), an /etc/hosts that resolves
every mesh service (name.namespace, name.namespace.svc.cluster.local) to its virtual
address (198.18.0.0/16), and transparent capture programmed with nftables. The program
needs no proxy setting: its TCP connections are redirected to the sidecar, which reads
their original destination; connections to the program's ports from outside the mesh
are refused under strict mTLS. --exclude-* leave ports and CIDRs alone. Everything is
removed when the workload stops.`,
		Example: `  trellis run --namespace bookstore --account bookstore --service bookstore:14001,bookstore-v1:14001 \
      --port 14011 -- ./bookstore --listen 127.0.0.1:14011
  trellis run --namespace bookbuyer --account bookbuyer -- ./bookbuyer
  trellis run --namespace shop --account orders --tcp-forward 127.0.0.1:13306=mysql.shop:3306 -- ./orders
  trellis run --isolation netns --namespace bookbuyer --account bookbuyer --exclude-inbound-ports 8080 -- ./bookbuyer`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.run(cmd.Context(), args, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.namespace, "namespace", "n", "default", "the workload's `namespace`")
	f.StringVar(&o.account, "account", "", "the workload's service `account`: its identity (required)")
	f.StringVar(&o.name, "name", "", "workload `name`; default: the account")
	f.StringSliceVar(&o.services, "service", nil, "services the workload backs, NAME[:PORT][/PROTOCOL] (repeatable or comma-separated)")
	f.IntVar(&o.port, "port", 0, "the `port` the program listens on (127.0.0.1)")
	f.StringVar(&o.proxyBin, "proxy", "", "the trellis-proxy `binary`; default: beside trellis, then $"+ProxyEnv+", then PATH")
	f.DurationVar(&o.readyTimeout, "ready-timeout", 30*time.Second, "how long to wait for the sidecar and the program to be ready")
	f.DurationVar(&o.withdrawDelay, "withdraw-delay", 500*time.Millisecond, "at shutdown, how long to keep serving after withdrawing the endpoint, while callers learn of it")
	f.DurationVar(&o.stopTimeout, "stop-timeout", 10*time.Second, "how long the program may take to exit after SIGTERM before SIGKILL")
	f.StringVar(&o.keyType, "key-type", "ecdsa-p256", "the `type` of key the sidecar makes for its certificate: ecdsa-p256, ecdsa-p384, rsa-2048 or rsa-3072")
	f.IntVar(&o.proxyConcurrency, "proxy-concurrency", procenv.DefaultConcurrency, "how many threads run the sidecar's Go code at once (its --concurrency; 0: the Go runtime's choice)")
	f.BoolVar(&o.accessLog, "access-log", true, "the sidecar writes a JSON access log line per request to stdout")
	f.StringVar(&o.isolation, "isolation", "none", "none: the workload shares the host's network and uses the sidecar as its HTTP proxy; netns (root): it gets a network namespace of its own with transparent capture, as a pod")
	f.StringVar(&o.excludeInboundPorts, "exclude-inbound-ports", "", "with --isolation netns: comma-separated app `ports` that inbound capture leaves alone")
	f.StringVar(&o.excludeOutboundPorts, "exclude-outbound-ports", "", "with --isolation netns: comma-separated destination `ports` that outbound capture leaves alone")
	f.StringVar(&o.excludeOutboundCIDRs, "exclude-outbound-cidrs", "", "with --isolation netns: comma-separated IPv4 or IPv6 `CIDRs` that outbound capture leaves alone")
	f.StringArrayVar(&o.tcpForwards, "tcp-forward", nil, "LISTEN=AUTHORITY: bind LISTEN (127.0.0.1:PORT) for opaque TCP to the mesh destination AUTHORITY (repeatable)")
	return cmd
}

// parseServices turns NAME[:PORT][/PROTOCOL] items into memberships.
func parseServices(items []string, appPort int) ([]model.ServiceMembership, error) {
	var out []model.ServiceMembership
	for _, it := range items {
		if it == "" {
			continue
		}
		name, proto, _ := strings.Cut(it, "/")
		name, portStr, hasPort := strings.Cut(name, ":")
		port := appPort
		if hasPort {
			p, err := strconv.Atoi(portStr)
			if err != nil {
				return nil, fmt.Errorf("--service %q: port %q is not a number", it, portStr)
			}
			port = p
		}
		if port == 0 {
			return nil, fmt.Errorf("--service %q: give the service port (NAME:PORT) or the program's --port", it)
		}
		p, err := model.ParseProtocol(proto)
		if err != nil {
			return nil, fmt.Errorf("--service %q: %w", it, err)
		}
		out = append(out, model.ServiceMembership{Service: name, ServicePort: port, Protocol: p})
	}
	return out, nil
}

// tcpForward is one --tcp-forward: a loopback address to bind for opaque TCP
// to a mesh destination.
type tcpForward struct{ listen, authority string }

// parseTCPForwards checks LISTEN=AUTHORITY items: LISTEN a loopback
// host:port, AUTHORITY a host:port.
func parseTCPForwards(items []string) ([]tcpForward, error) {
	var out []tcpForward
	for _, it := range items {
		listen, authority, ok := strings.Cut(it, "=")
		host, _, err := net.SplitHostPort(listen)
		if !ok || err != nil || (host != "127.0.0.1" && host != "localhost") {
			return nil, fmt.Errorf("--tcp-forward %q: want LISTEN=AUTHORITY with LISTEN on loopback, e.g. 127.0.0.1:13306=mysql.shop:3306", it)
		}
		if _, _, err := net.SplitHostPort(authority); err != nil {
			return nil, fmt.Errorf("--tcp-forward %q: the authority needs a port, e.g. mysql.shop:3306", it)
		}
		out = append(out, tcpForward{listen, authority})
	}
	return out, nil
}

// findProxy locates the sidecar binary.
func findProxy(flagValue string) (string, error) {
	if flagValue != "" {
		return flagValue, nil
	}
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), "trellis-proxy")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p := os.Getenv(ProxyEnv); p != "" {
		return p, nil
	}
	p, err := exec.LookPath("trellis-proxy")
	if err != nil {
		return "", errors.New("trellis-proxy not found beside trellis, in $" + ProxyEnv + " or on PATH: run `make build` or pass --proxy")
	}
	return p, nil
}

// freePort picks a loopback port for a listener another process will open.
func freePort() (int, error) { return freeport.Pick() }

// bindLoopback opens n listeners on kernel-chosen ports of 127.0.0.1.
func bindLoopback(n int) ([]net.Listener, error) {
	var lns []net.Listener
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			closeAll(lns)
			return nil, fmt.Errorf("bind a sidecar listener: %w", err)
		}
		lns = append(lns, ln)
	}
	return lns, nil
}

func closeAll(lns []net.Listener) {
	for _, ln := range lns {
		ln.Close()
	}
}

func (o *runOptions) run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if o.account == "" {
		return errors.New("--account is required: it is the workload's identity")
	}
	if o.name == "" {
		o.name = o.account
	}
	svcs, err := parseServices(o.services, o.port)
	if err != nil {
		return err
	}
	if _, err := spiffe.ParseKeyType(o.keyType); err != nil {
		return fmt.Errorf("--key-type: %w", err)
	}
	if o.proxyConcurrency < 0 {
		return fmt.Errorf("--proxy-concurrency: want 0 or more threads, not %d", o.proxyConcurrency)
	}
	forwards, err := parseTCPForwards(o.tcpForwards)
	if err != nil {
		return err
	}
	proxyBin, err := findProxy(o.proxyBin)
	if err != nil {
		return err
	}
	c, err := controlplane.Dial(o.stateDir)
	if err != nil {
		return err
	}
	var pl *placement
	switch o.isolation {
	case "", "none":
		if o.excludeInboundPorts != "" || o.excludeOutboundPorts != "" || o.excludeOutboundCIDRs != "" {
			return errors.New("--exclude-* need --isolation netns: without a namespace of its own nothing is captured")
		}
		pl, err = sharedPlacement(c.Info.GRPC, forwards)
	case "netns":
		pl, err = o.isolatedPlacement(c, forwards)
	default:
		return fmt.Errorf("--isolation %q: want none or netns", o.isolation)
	}
	if err != nil {
		return err
	}
	defer pl.close()
	lns, inbound, admin := pl.listeners, pl.inbound, pl.admin

	// Signals are handled here from now on: the order of shutdown matters.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)

	reg, err := c.Register(ctx, local.Registration{
		Name: o.name, Namespace: o.namespace, Account: o.account,
		Services: svcs, Address: inbound, AdminAddress: admin,
	})
	if err != nil {
		return err
	}
	bg := context.WithoutCancel(ctx)
	defer func() {
		if err := c.Deregister(bg, reg.ID); err != nil {
			fmt.Fprintln(stderr, "trellis run: deregister:", err)
		}
	}()

	proxyArgs := append([]string{
		"--ca-file", filepath.Join(o.stateDir, controlplane.CAFile),
		"--workload-id", reg.ID,
	}, pl.proxyArgs...)
	if o.port != 0 {
		proxyArgs = append(proxyArgs, "--app", fmt.Sprintf("127.0.0.1:%d", o.port))
	}
	if !o.accessLog {
		proxyArgs = append(proxyArgs, "--access-log=false")
	}
	if o.keyType != "" {
		proxyArgs = append(proxyArgs, "--key-type", o.keyType)
	}
	proxyArgs = append(proxyArgs, "--concurrency", strconv.Itoa(o.proxyConcurrency))
	proxy := pl.command(proxyBin, proxyArgs...)
	proxy.Env = procenv.Env(append(os.Environ(), "TRELLIS_JOIN_TOKEN="+reg.Token))
	proxy.Stdout, proxy.Stderr = stdout, stderr
	proxy.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	for _, ln := range lns {
		f, err := ln.(*net.TCPListener).File()
		if err != nil {
			return fmt.Errorf("hand listener %s to the sidecar: %w", ln.Addr(), err)
		}
		proxy.ExtraFiles = append(proxy.ExtraFiles, f) // fd 3, 4, 5, then the TCP forwards
	}
	err = proxy.Start()
	// The sidecar holds the sockets now; ours would only keep them open.
	for _, f := range proxy.ExtraFiles {
		f.Close()
	}
	closeAll(lns)
	if err != nil {
		return fmt.Errorf("start sidecar %s: %w", proxyBin, err)
	}
	proxyDone := make(chan error, 1)
	go func() { proxyDone <- proxy.Wait() }()
	stopProxy := func() {
		proxy.Process.Signal(syscall.SIGTERM)
		select {
		case <-proxyDone:
		case <-time.After(15 * time.Second):
			proxy.Process.Kill()
			<-proxyDone
		}
	}

	if err := waitReady(ctx, "http://"+admin+"/ready", o.readyTimeout, proxyDone, sigs); err != nil {
		stopProxy()
		return fmt.Errorf("sidecar of %s: %w", reg.ID, err)
	}

	app := pl.command(args[0], args[1:]...)
	app.Env = append(append(os.Environ(), pl.appEnv...),
		"TRELLIS_WORKLOAD_ID="+reg.ID, "TRELLIS_NAMESPACE="+o.namespace,
	)
	app.Stdin, app.Stdout, app.Stderr = os.Stdin, stdout, stderr
	app.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := app.Start(); err != nil {
		stopProxy()
		return fmt.Errorf("start %s: %w", args[0], err)
	}
	appDone := make(chan error, 1)
	go func() { appDone <- app.Wait() }()

	var appErr error
	appExited, stopping := false, false
	if o.port != 0 {
		err := waitListening(ctx, pl.dial, fmt.Sprintf("127.0.0.1:%d", o.port), o.readyTimeout, appDone, sigs)
		var exited *exitedError
		switch {
		case errors.As(err, &exited):
			appErr, appExited = exited.err, true
		case errors.Is(err, errInterrupted):
			stopping = true
		case err != nil:
			fmt.Fprintf(stderr, "trellis run: %s: %v; it takes no traffic\n", reg.ID, err)
		default:
			if err := c.SetReady(ctx, reg.ID, true); err != nil {
				fmt.Fprintln(stderr, "trellis run: mark ready:", err)
			}
		}
	}

	if !appExited && !stopping {
		select {
		case appErr = <-appDone:
			appExited = true
		case <-sigs:
		case <-ctx.Done():
		}
	}
	// Shutdown, in order: withdraw the endpoint, let callers learn of it, stop
	// the program, then drain the sidecar, which outlives its program.
	if o.port != 0 {
		c.SetReady(bg, reg.ID, false)
		if !appExited {
			time.Sleep(o.withdrawDelay)
		}
	}
	if !appExited {
		app.Process.Signal(syscall.SIGTERM)
		select {
		case appErr = <-appDone:
		case <-time.After(o.stopTimeout):
			fmt.Fprintf(stderr, "trellis run: %s did not exit %s after SIGTERM; killing it\n", args[0], o.stopTimeout)
			app.Process.Kill()
			appErr = <-appDone
		}
	}
	stopProxy()
	var ee *exec.ExitError
	if errors.As(appErr, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && (ws.Signal() == syscall.SIGTERM || ws.Signal() == syscall.SIGINT) {
			return nil // stopped as asked
		}
		return &exitError{code: ee.ExitCode()}
	}
	return appErr
}

type exitedError struct{ err error }

func (e *exitedError) Error() string {
	return fmt.Sprintf("the program exited before it was ready: %v", e.err)
}

// waitReady polls url until it answers 200. A value on died (the sidecar
// exited) is put back, so that the caller's stop finds the sidecar gone
// instead of waiting for an exit that already came.
func waitReady(ctx context.Context, url string, timeout time.Duration, died chan error, sigs <-chan os.Signal) error {
	deadline := time.Now().Add(timeout)
	hc := &http.Client{Timeout: time.Second}
	for {
		if resp, err := hc.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %s (%s)", timeout, url)
		}
		select {
		case err := <-died:
			died <- err
			return fmt.Errorf("exited before it was ready: %v", err)
		case <-sigs:
			return errInterrupted
		case <-ctx.Done():
			return errInterrupted
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// waitListening waits until something accepts connections on addr.
func waitListening(ctx context.Context, dial func(addr string) (net.Conn, error), addr string, timeout time.Duration, died <-chan error, sigs <-chan os.Signal) error {
	deadline := time.Now().Add(timeout)
	for {
		if c, err := dial(addr); err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nothing listens on %s after %s", addr, timeout)
		}
		select {
		case err := <-died:
			return &exitedError{err}
		case <-sigs:
			return errInterrupted
		case <-ctx.Done():
			return errInterrupted
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// errInterrupted means a signal or cancellation arrived while waiting.
var errInterrupted = errors.New("interrupted")
