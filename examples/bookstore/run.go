package bookstore

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// appNames lists the apps Run knows, for error messages.
const appNames = "bookbuyer, bookthief, bookstore, bookwarehouse"

// Timings shared by the apps.
const (
	// requestTimeout bounds every call an app makes, connection and body included.
	requestTimeout = 2 * time.Second
	// shutdownTimeout bounds how long an app drains in-flight requests once ctx ends.
	shutdownTimeout = 5 * time.Second
	// summaryEvery is how often an app logs a one-line summary of its counters.
	summaryEvery = time.Minute
)

// Headers the apps send or read. Go canonicalizes them on the wire
// (Identity, Booksbought, Client-App, X-Trellis-Reason).
const (
	headerIdentity    = "identity"
	headerBooksBought = "Booksbought"
	headerClientApp   = "client-app"
	headerUserAgent   = "user-agent"
	// headerReason is set by the sidecar on responses it makes itself.
	headerReason = "x-trellis-reason"
	// userAgent is what OSM's demo clients send; the demo's HTTPRouteGroup matches it.
	userAgent = "Go-http-client/1.1"
)

// Run runs the demo app named app ("bookbuyer", "bookthief", "bookstore" or
// "bookwarehouse") with its flags in args, until ctx is cancelled. It prints one
// line "<app> listening on http://ADDR" to stdout once its HTTP server listens,
// and logs to stderr. When ctx ends it stops making calls, drains its HTTP server
// and returns nil. Bad flags or an unknown app return an error before anything
// starts; -h returns an error wrapping flag.ErrHelp after printing the usage.
func Run(ctx context.Context, app string, args []string, stdout, stderr io.Writer) error {
	log := slog.New(slog.NewTextHandler(stderr, nil)).With("app", app)
	switch app {
	case "bookbuyer", "bookthief":
		return runClient(ctx, app, args, stdout, stderr, log)
	case "bookstore":
		return runStore(ctx, args, stdout, stderr, log)
	case "bookwarehouse":
		return runWarehouse(ctx, args, stdout, stderr, log)
	}
	return fmt.Errorf("unknown demo app %q: use one of %s", app, appNames)
}

// newFlagSet returns a flag set for app that reports errors instead of exiting.
func newFlagSet(app, about string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(app, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: %s [flags]\n\n%s\n\nFlags:\n", app, about)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args into fs and rejects positional arguments.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return fmt.Errorf("%s: %w", fs.Name(), err)
		}
		return fmt.Errorf("%s: %w; run %s -h for its flags", fs.Name(), err, fs.Name())
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%s: unexpected argument %q: %s takes only flags; run %s -h for them", fs.Name(), fs.Arg(0), fs.Name(), fs.Name())
	}
	return nil
}

// checkListen rejects a --listen value that is not HOST:PORT.
func checkListen(app, listen string) error {
	if _, _, err := net.SplitHostPort(listen); err != nil {
		return fmt.Errorf("%s: --listen %q is not HOST:PORT: %w; use e.g. --listen 127.0.0.1:14001", app, listen, err)
	}
	return nil
}

// checkBaseURL validates a flag holding the base URL of a service the app calls and
// returns it without a trailing slash.
func checkBaseURL(app, flagName, raw string) (string, error) {
	u, err := url.Parse(raw)
	switch {
	case err != nil:
	case u.Scheme != "http":
		err = errors.New("want an http:// URL")
	case u.Host == "":
		err = errors.New("the URL has no host")
	case u.User != nil || u.RawQuery != "" || u.Fragment != "":
		err = errors.New("the URL may have only a scheme, a host and a path")
	}
	if err != nil {
		return "", fmt.Errorf("%s: --%s %q: %w; use e.g. --%s http://NAME.NAMESPACE:14001", app, flagName, raw, err, flagName)
	}
	return "http://" + u.Host + strings.TrimSuffix(u.EscapedPath(), "/"), nil
}

// newHTTPClient returns the client every app calls other services with: through
// the proxy the environment names (HTTP_PROXY, NO_PROXY), with keep-alive, and
// requestTimeout per request.
func newHTTPClient() *http.Client {
	return &http.Client{
		Timeout: requestTimeout,
		Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: requestTimeout, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConns:          16,
			MaxIdleConnsPerHost:   4,
			IdleConnTimeout:       90 * time.Second,
			ResponseHeaderTimeout: requestTimeout,
		},
	}
}

// drain reads what is left of a response body, so that the connection can be
// reused, and closes it.
func drain(resp *http.Response) {
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
}

// serveConfig is what serve needs to run an app's HTTP server.
type serveConfig struct {
	App     string
	Listen  string // HOST:PORT
	Handler http.Handler
	Stdout  io.Writer // receives the "listening on" line
	Log     *slog.Logger
}

// serve listens on c.Listen and serves c.Handler until ctx ends, then drains
// in-flight requests for up to shutdownTimeout. It prints where it listens to
// c.Stdout once the listener is open.
func serve(ctx context.Context, c serveConfig) error {
	ln, err := net.Listen("tcp", c.Listen)
	if err != nil {
		return fmt.Errorf("%s: listen on %s: %w; pick a free address with --listen", c.App, c.Listen, err)
	}
	srv := &http.Server{
		Handler:           c.Handler,
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(c.Log.Handler(), slog.LevelWarn),
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	fmt.Fprintf(c.Stdout, "%s listening on http://%s\n", c.App, ln.Addr())
	c.Log.Info("listening", "addr", ln.Addr().String())

	select {
	case err := <-served:
		return fmt.Errorf("%s: serving on %s stopped: %w", c.App, ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
		<-served
		return fmt.Errorf("%s: in-flight requests did not finish within %s of shutdown: %w", c.App, shutdownTimeout, err)
	}
	<-served
	c.Log.Info("stopped")
	return nil
}
