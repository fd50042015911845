package proxy_test

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/probe"
	"github.com/trellis-mesh/trellis/internal/proxy"
)

// probeApp is an app with health endpoints that records the probes it gets.
type probeApp struct {
	mu   sync.Mutex
	seen []*http.Request
}

func (a *probeApp) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /readiness", func(w http.ResponseWriter, r *http.Request) {
		a.record(r)
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Identity", "bookstore-v1")
		io.WriteString(w, "ready: "+r.URL.RawQuery+"\n")
	})
	mux.HandleFunc("GET /liveness", func(w http.ResponseWriter, r *http.Request) {
		a.record(r)
		http.Error(w, "wedged", http.StatusServiceUnavailable)
	})
	mux.HandleFunc("GET /old-startup", func(w http.ResponseWriter, r *http.Request) {
		a.record(r)
		http.Redirect(w, r, "/startup", http.StatusFound)
	})
	mux.HandleFunc("GET /startup", func(w http.ResponseWriter, r *http.Request) {
		a.record(r)
		io.WriteString(w, "started\n")
	})
	mux.HandleFunc("GET /slow", func(w http.ResponseWriter, r *http.Request) {
		a.record(r)
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	})
	return mux
}

func (a *probeApp) record(r *http.Request) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.seen = append(a.seen, r.Clone(r.Context()))
}

func (a *probeApp) last() *http.Request {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.seen) == 0 {
		return nil
	}
	return a.seen[len(a.seen)-1]
}

func portOf(t *testing.T, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(p)
	return n
}

// TestAppProbes serves rewritten probes on a sidecar's admin listener and
// checks each reaches the app at its own port, path and scheme, with the
// kubelet's headers, and that the app's answer is the probe's.
func TestAppProbes(t *testing.T) {
	t.Parallel()
	app := &probeApp{}
	plain := httptest.NewServer(app.handler())
	t.Cleanup(plain.Close)
	secure := httptest.NewTLSServer(app.handler())
	t.Cleanup(secure.Close)
	open, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { open.Close() })
	go func() {
		for {
			c, err := open.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	closed := portOf(t, freeAddr(t))
	web, tls := portOf(t, plain.Listener.Addr().String()), portOf(t, secure.Listener.Addr().String())

	m := newMesh(t, strictMesh)
	s := m.sidecar(sidecarSpec{reg: bookstoreReg("bookstore-v1", "bookstore"), app: plain.Listener.Addr().String(), appProbes: probe.Table{
		probe.Path("bookstore", probe.Readiness): {Scheme: probe.SchemeHTTP, Port: web, Path: "/readiness?full=1", TimeoutSeconds: 2},
		probe.Path("bookstore", probe.Liveness):  {Scheme: probe.SchemeHTTP, Port: web, Path: "/liveness"},
		probe.Path("bookstore", probe.Startup):   {Scheme: probe.SchemeHTTPS, Port: tls, Path: "/old-startup"},
		probe.Path("ledger", probe.Liveness):     {Scheme: probe.SchemeTCP, Port: portOf(t, open.Addr().String())},
		probe.Path("ledger", probe.Readiness):    {Scheme: probe.SchemeTCP, Port: closed},
		probe.Path("ledger", probe.Startup):      {Scheme: probe.SchemeHTTP, Port: web, Path: "/slow", TimeoutSeconds: 1},
	}})
	admin := s.p.Admin.String()

	// probeGet sends a probe as the kubelet does: to the pod's address and
	// the admin port, with the probe's headers and kube-probe's User-Agent.
	probeGet := func(t *testing.T, method, path string) (*http.Response, string, time.Duration) {
		t.Helper()
		req, err := http.NewRequest(method, "http://"+admin+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("User-Agent", "kube-probe/1.33")
		req.Header.Set("Client-App", "kubelet")
		start := time.Now()
		resp, err := s.direct.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b), time.Since(start)
	}

	tests := []struct {
		name     string
		path     string
		wantCode int
		wantBody string
		appPath  string // the request the app saw last; empty: none checked
		appPort  int    // the port the app's Host header names
	}{
		{"HTTP readiness with query and headers", "/app-health/bookstore/readyz", 200, "ready: full=1\n", "/readiness?full=1", web},
		{"the app's failure is the probe's", "/app-health/bookstore/livez", 503, "wedged\n", "/liveness", web},
		{"HTTPS, redirect on the app followed", "/app-health/bookstore/startupz", 200, "started\n", "/startup", tls},
		{"TCP probe of an open port", "/app-health/ledger/livez", 200, "ok\n", "", 0},
		{"TCP probe of a closed port", "/app-health/ledger/readyz", 503, "connection refused", "", 0},
		{"a path not in the table", "/app-health/bookstore/other", 404, "no app probe", "", 0},
		{"a container not in the table", "/app-health/exporter/readyz", 404, "no app probe", "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body, _ := probeGet(t, http.MethodGet, tt.path)
			if resp.StatusCode != tt.wantCode || !strings.Contains(body, tt.wantBody) {
				t.Errorf("GET %s = %d %q, want %d with %q", tt.path, resp.StatusCode, body, tt.wantCode, tt.wantBody)
			}
			if strings.HasPrefix(tt.wantBody, "ready") && resp.Header.Get("Identity") != "bookstore-v1" {
				t.Errorf("GET %s: headers %v, want the app's Identity", tt.path, resp.Header)
			}
			if tt.appPath == "" {
				return
			}
			r := app.last()
			if r == nil || r.URL.RequestURI() != tt.appPath {
				t.Fatalf("the app last saw %v, want GET %s", r, tt.appPath)
			}
			if r.Header.Get("User-Agent") != "kube-probe/1.33" || r.Header.Get("Client-App") != "kubelet" {
				t.Errorf("the app saw headers %v; want the probe's User-Agent and Client-App", r.Header)
			}
			// The kubelet's Host names the admin port; the app sees its own.
			if want := "127.0.0.1:" + strconv.Itoa(tt.appPort); r.Host != want {
				t.Errorf("the app saw Host %q, want %q", r.Host, want)
			}
		})
	}

	t.Run("the probe's timeout bounds the call to the app", func(t *testing.T) {
		resp, _, took := probeGet(t, http.MethodGet, "/app-health/ledger/startupz")
		if resp.StatusCode != http.StatusGatewayTimeout || took > 3*time.Second {
			t.Errorf("probe of an app that never answers: %d after %s, want 504 after about 1s", resp.StatusCode, took)
		}
	})
	t.Run("only GET and HEAD", func(t *testing.T) {
		if resp, _, _ := probeGet(t, http.MethodPost, "/app-health/bookstore/readyz"); resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("POST = %d, want 405", resp.StatusCode)
		}
		if resp, _, _ := probeGet(t, http.MethodHead, "/app-health/bookstore/readyz"); resp.StatusCode != http.StatusOK {
			t.Errorf("HEAD = %d, want 200", resp.StatusCode)
		}
	})
	t.Run("counted in trellis_app_probes_total", func(t *testing.T) {
		want := map[[3]string]float64{
			{"bookstore", "readyz", "200"}: 2, // GET and HEAD
			{"bookstore", "livez", "503"}:  1,
			{"ledger", "readyz", "503"}:    1,
			{"ledger", "startupz", "504"}:  1,
		}
		got := map[[3]string]float64{}
		for _, mm := range s.metricFamily(t, "trellis_app_probes_total").GetMetric() {
			l := map[string]string{}
			for _, lp := range mm.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			got[[3]string{l["container"], l["probe"], l["code"]}] = mm.GetCounter().GetValue()
		}
		for k, n := range want {
			if got[k] != n {
				t.Errorf("trellis_app_probes_total{container=%q,probe=%q,code=%q} = %v, want %v (all: %v)", k[0], k[1], k[2], got[k], n, got)
			}
		}
	})
	t.Run("probes are served while the control plane is away", func(t *testing.T) {
		m.stopControlPlane()
		if resp, body, _ := probeGet(t, http.MethodGet, "/app-health/bookstore/readyz"); resp.StatusCode != http.StatusOK {
			t.Errorf("readiness probe with the control plane stopped = %d %q, want the app's 200", resp.StatusCode, body)
		}
	})
	t.Run("the effective config lists the probes", func(t *testing.T) {
		_, b := s.admin(t, "/config")
		if !strings.Contains(string(b), `"/app-health/bookstore/readyz"`) || !strings.Contains(string(b), `"path": "/readiness?full=1"`) {
			t.Errorf("/config does not list the app probes:\n%s", b)
		}
	})
}

func TestRunRejectsBadAppProbes(t *testing.T) {
	err := proxy.Run(t.Context(), []string{"--app-probes", `{"/healthz":{"scheme":"HTTP","port":80}}`}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "/app-health/<container>/") {
		t.Errorf("Run(--app-probes with a path outside /app-health/) = %v; want an error that shows the form", err)
	}
}
