package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/trellis-mesh/trellis/internal/probe"
)

// maxProbeBody is how much of the app's answer to a probe is passed on; the
// kubelet reads no more than 10 KiB of it either.
const maxProbeBody = 10 << 10

// probes serves the app's health probes that injection moved to the admin
// port (Options.AppProbes): GET /app-health/<container>/<kind> is sent on to
// the app on 127.0.0.1 at the probe's original port, path and scheme, with the
// kubelet's headers, and the app's status and body come back. A TCP probe is
// a connection that opens: 200, else 503. Only the paths in the table are
// served, so the admin port never forwards anywhere else. Each probe is
// counted in trellis_app_probes_total by container, probe and the code sent
// back.
type probes struct {
	table     probe.Table
	client    *http.Client
	adminPort string // the kubelet's Host names it; the app sees its own port

	mu     sync.RWMutex
	counts map[probeKey]*atomic.Uint64
}

type probeKey struct{ container, kind, code string }

func newProbes(t probe.Table) *probes {
	return &probes{
		table: t,
		client: &http.Client{
			Transport: &http.Transport{
				Proxy:             nil, // the app is on localhost, never through a proxy
				DisableKeepAlives: true,
				DialContext:       (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
				// As the kubelet probes HTTPS: without verifying the
				// app's certificate.
				TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
			},
			// Redirects are followed while they stay on the app's
			// address; the kubelet follows them too, but a Location
			// on the app's port could not reach it from outside.
			CheckRedirect: func(req *http.Request, via []*http.Request) error {
				if len(via) >= 10 || req.URL.Host != via[0].URL.Host {
					return http.ErrUseLastResponse
				}
				return nil
			},
		},
		counts: map[probeKey]*atomic.Uint64{},
	}
}

func (ps *probes) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	tg, ok := ps.table[r.URL.Path]
	if !ok {
		http.Error(w, "no app probe at "+r.URL.Path+": the pod's injected probes are listed in its trellis.io/original-probes annotation", http.StatusNotFound)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "app probes answer GET", http.StatusMethodNotAllowed)
		return
	}
	timeout := time.Duration(max(tg.TimeoutSeconds, 1)) * time.Second
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	code := ps.forward(ctx, w, r, tg)
	rest := strings.TrimPrefix(r.URL.Path, probe.PathPrefix)
	container, kind, _ := strings.Cut(rest, "/")
	ps.count(probeKey{container, kind, strconv.Itoa(code)})
}

// forward sends one probe on to the app and writes the answer; it returns the
// status code written.
func (ps *probes) forward(ctx context.Context, w http.ResponseWriter, r *http.Request, tg probe.Target) int {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(tg.Port))
	if tg.Scheme == probe.SchemeTCP {
		c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		if err != nil {
			http.Error(w, fmt.Sprintf("app at %s: %v", addr, err), http.StatusServiceUnavailable)
			return http.StatusServiceUnavailable
		}
		c.Close()
		w.Write([]byte("ok\n"))
		return http.StatusOK
	}
	path := tg.Path
	if path == "" {
		path = "/"
	}
	u, err := url.Parse(strings.ToLower(tg.Scheme) + "://" + addr + path)
	if err != nil {
		http.Error(w, fmt.Sprintf("app probe path %q: %v", tg.Path, err), http.StatusInternalServerError)
		return http.StatusInternalServerError
	}
	out, err := http.NewRequestWithContext(ctx, r.Method, u.String(), nil)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return http.StatusInternalServerError
	}
	// The probe's own headers (httpHeaders, User-Agent kube-probe/...) go
	// on; a Host the kubelet made from the admin port names the app's.
	out.Header = r.Header.Clone()
	out.Host = r.Host
	if h, port, err := net.SplitHostPort(r.Host); err == nil && port == ps.adminPort {
		out.Host = net.JoinHostPort(h, strconv.Itoa(tg.Port))
	}
	resp, err := ps.client.Do(out)
	if err != nil {
		code := http.StatusServiceUnavailable
		if ctx.Err() != nil {
			code = http.StatusGatewayTimeout
		}
		http.Error(w, fmt.Sprintf("app at %s: %v", u.Host, err), code)
		return code
	}
	defer resp.Body.Close()
	// The app's headers come back, but for those of its own connection and
	// framing: the body may be cut at maxProbeBody.
	h := w.Header()
	for k, vs := range resp.Header {
		h[k] = vs
	}
	for _, k := range []string{"Connection", "Keep-Alive", "Transfer-Encoding", "Content-Length", "Trailer", "Upgrade"} {
		h.Del(k)
	}
	w.WriteHeader(resp.StatusCode)
	io.Copy(w, io.LimitReader(resp.Body, maxProbeBody))
	return resp.StatusCode
}

func (ps *probes) count(k probeKey) {
	ps.mu.RLock()
	c := ps.counts[k]
	ps.mu.RUnlock()
	if c == nil {
		ps.mu.Lock()
		if c = ps.counts[k]; c == nil {
			c = new(atomic.Uint64)
			ps.counts[k] = c
		}
		ps.mu.Unlock()
	}
	c.Add(1)
}

// writeMetrics writes trellis_app_probes_total in the text exposition format;
// nothing when no probe has been served.
func (ps *probes) writeMetrics(w io.Writer) {
	ps.mu.RLock()
	keys := make([]probeKey, 0, len(ps.counts))
	for k := range ps.counts {
		keys = append(keys, k)
	}
	ps.mu.RUnlock()
	if len(keys) == 0 {
		return
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := keys[i], keys[j]
		if a.container != b.container {
			return a.container < b.container
		}
		if a.kind != b.kind {
			return a.kind < b.kind
		}
		return a.code < b.code
	})
	var b strings.Builder
	b.WriteString("# HELP trellis_app_probes_total The app's health probes the sidecar served on its admin port, by container, probe (livez, readyz, startupz) and the status code sent back (the app's, or 503/504 when the app could not be reached in time).\n# TYPE trellis_app_probes_total counter\n")
	ps.mu.RLock()
	for _, k := range keys {
		fmt.Fprintf(&b, "trellis_app_probes_total{container=%q,probe=%q,code=%q} %d\n", k.container, k.kind, k.code, ps.counts[k].Load())
	}
	ps.mu.RUnlock()
	io.WriteString(w, b.String())
}
