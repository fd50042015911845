package controlplane

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/trellis-mesh/trellis/internal/metrics"
	"github.com/trellis-mesh/trellis/internal/serve"
	"github.com/trellis-mesh/trellis/internal/source/local"
)

// TestAdminMetrics: GET /metrics answers without the admin token, in a format
// Prometheus's own parser reads, with the control plane's families; every other
// path still needs the token.
func TestAdminMetrics(t *testing.T) {
	builds := metrics.NewHistogram(nil)
	store, err := local.Open(local.Options{Dir: t.TempDir(), ObserveBuild: builds.Observe})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := store.Register(local.Registration{Name: "web", Namespace: "shop", Account: "web", Address: "127.0.0.1:1"}); err != nil {
		t.Fatal(err)
	}
	srv := serve.New(serve.Config{Authenticator: store})
	srv.Update(store.Snapshot())
	ts := httptest.NewServer(newAdmin(store, srv, builds, "secret", slog.New(slog.DiscardHandler), nil))
	defer ts.Close()

	resp, err := http.Get(ts.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s, want 200", resp.Status)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Errorf("Content-Type = %q, want the text exposition format", ct)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("the reference parser refuses /metrics: %v", err)
	}
	for _, name := range []string{
		"trellis_controlplane_connected_proxies", "trellis_controlplane_streams", "trellis_controlplane_pushes_total",
		"trellis_controlplane_push_latency_seconds", "trellis_controlplane_certificates_issued_total",
		"trellis_controlplane_snapshot_build_seconds", "trellis_controlplane_workloads",
	} {
		if fams[name] == nil {
			t.Errorf("/metrics has no family %s", name)
		}
	}
	// Open and Register each built a snapshot.
	if got := fams["trellis_controlplane_snapshot_build_seconds"].GetMetric()[0].GetHistogram().GetSampleCount(); got < 2 {
		t.Errorf("snapshot builds observed = %d, want at least 2", got)
	}
	if got := fams["trellis_controlplane_workloads"].GetMetric()[0].GetGauge().GetValue(); got != 1 {
		t.Errorf("trellis_controlplane_workloads = %v, want 1", got)
	}

	resp, err = http.Get(ts.URL + "/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("GET /v1/status without the token: %s, want 401", resp.Status)
	}
}

// TestAdminPprof: the runtime's profiles are served on the admin listener, and
// only with the admin token.
func TestAdminPprof(t *testing.T) {
	store, err := local.Open(local.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	srv := serve.New(serve.Config{Authenticator: store})
	srv.Update(store.Snapshot())
	ts := httptest.NewServer(newAdmin(store, srv, metrics.NewHistogram(nil), "secret", slog.New(slog.DiscardHandler), nil))
	defer ts.Close()

	for _, tc := range []struct {
		name, token string
		want        int
	}{
		{"without the token", "", http.StatusUnauthorized},
		{"with a wrong token", "guess", http.StatusUnauthorized},
		{"with the token", "secret", http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, ts.URL+"/debug/pprof/heap?debug=1", nil)
			if tc.token != "" {
				req.Header.Set("Authorization", "Bearer "+tc.token)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("GET /debug/pprof/heap: %s, want %d", resp.Status, tc.want)
			}
			if tc.want == http.StatusOK && !strings.Contains(string(body), "runtime.MemStats") {
				t.Errorf("GET /debug/pprof/heap?debug=1 has no MemStats:\n%.300s", body)
			}
		})
	}
}
