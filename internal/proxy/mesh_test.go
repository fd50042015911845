package proxy_test

// A small mesh for the integration tests: the real control plane in process,
// real sidecars, apps on loopback. Nothing here resolves a name: apps call
// services through their sidecar, which dials endpoint addresses, and every
// mesh config turns egress off so that an unknown name is refused.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/freeport"
	"github.com/trellis-mesh/trellis/internal/syncbuf"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/trellis-mesh/trellis/internal/controlplane"
	"github.com/trellis-mesh/trellis/internal/probe"
	"github.com/trellis-mesh/trellis/internal/proxy"
	"github.com/trellis-mesh/trellis/internal/source/local"
	"github.com/trellis-mesh/trellis/internal/spiffe"
)

const (
	permissiveMesh = `apiVersion: config.openservicemesh.io/v1alpha2
kind: MeshConfig
metadata:
  name: osm-mesh-config
  namespace: osm-system
spec:
  traffic:
    enablePermissiveTrafficPolicyMode: true
    enableEgress: false
`
	strictMesh = `apiVersion: config.openservicemesh.io/v1alpha2
kind: MeshConfig
metadata:
  name: osm-mesh-config
  namespace: osm-system
spec:
  traffic:
    enablePermissiveTrafficPolicyMode: false
    enableEgress: false
`
)

// mesh is a control plane with its state directory and the sidecars started
// against it.
type mesh struct {
	t    *testing.T
	dir  string
	logs *syncbuf.Buffer // control plane and sidecar logs, shown if the test fails

	mu     sync.Mutex
	grpc   string
	client *controlplane.Client
	stopCP func()
}

// newMesh starts a control plane on a fresh state directory and applies the
// mesh config (which must disable egress) and any other documents.
func newMesh(t *testing.T, meshConfig string, docs ...string) *mesh {
	t.Helper()
	return newMeshAt(t, "127.0.0.1:0", meshConfig, docs...)
}

// newMeshAt is newMesh with the control plane's gRPC endpoint on grpcAddr.
func newMeshAt(t *testing.T, grpcAddr, meshConfig string, docs ...string) *mesh {
	t.Helper()
	if !strings.Contains(meshConfig, "enableEgress: false") {
		t.Fatal("test mesh configs must disable egress, so that no name is ever resolved")
	}
	m := &mesh{t: t, dir: t.TempDir(), logs: &syncbuf.Buffer{}}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("logs:\n%s", m.logs.String())
		}
	})
	m.startControlPlane(grpcAddr, time.Millisecond)
	m.apply("mesh-config.yaml", meshConfig)
	for i, d := range docs {
		m.apply(fmt.Sprintf("doc-%d.yaml", i), d)
	}
	return m
}

func (m *mesh) logger(name string) *slog.Logger {
	return slog.New(slog.NewTextHandler(m.logs, &slog.HandlerOptions{Level: slog.LevelDebug})).With("component", name)
}

// startControlPlane runs a control plane on the mesh's state directory, its
// gRPC endpoint on grpcAddr; grace is how long registered workloads count as
// alive before their sidecars reconnect.
func (m *mesh) startControlPlane(grpcAddr string, grace time.Duration) {
	t := m.t
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan controlplane.Info, 1)
	done := make(chan error, 1)
	go func() {
		done <- controlplane.Run(ctx, controlplane.Options{
			StateDir:  m.dir,
			GRPCAddr:  grpcAddr,
			AdminAddr: "127.0.0.1:0",
			Grace:     grace,
			Logger:    m.logger("control-plane"),
			Ready:     func(i controlplane.Info) { ready <- i },
		})
	}()
	var info controlplane.Info
	select {
	case info = <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("control plane: %v", err)
	case <-time.After(10 * time.Second):
		cancel()
		t.Fatal("control plane not listening after 10s")
	}
	c, err := controlplane.Dial(m.dir)
	if err != nil {
		cancel()
		t.Fatalf("dial control plane: %v", err)
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("control plane: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Error("control plane did not stop within 10s")
			}
		})
	}
	t.Cleanup(stop)
	m.mu.Lock()
	m.grpc, m.client, m.stopCP = info.GRPC, c, stop
	m.mu.Unlock()
}

// stopControlPlane stops the running control plane and waits for it.
func (m *mesh) stopControlPlane() {
	m.mu.Lock()
	stop := m.stopCP
	m.mu.Unlock()
	stop()
}

func (m *mesh) cp() *controlplane.Client {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.client
}

func (m *mesh) apply(name, doc string) {
	m.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := m.cp().Apply(ctx, name, []byte(doc)); err != nil {
		m.t.Fatalf("apply %s: %v", name, err)
	}
}

func (m *mesh) setReady(id string, ready bool) {
	m.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := m.cp().SetReady(ctx, id, ready); err != nil {
		m.t.Fatalf("set %s ready=%v: %v", id, ready, err)
	}
}

// sidecarSpec describes a workload and its sidecar.
type sidecarSpec struct {
	reg     local.Registration // Address empty: the sidecar's inbound address
	inbound string             // where the sidecar listens; empty: reg.Address, or a free port
	app     string             // the app's address; empty: none
	ready   bool               // mark the workload ready once its sidecar is
	// tcpForwards bind local ports for TCP destinations; the bound addresses
	// are in p.TCPForwards.
	tcpForwards []proxy.TCPForward
	keyType     spiffe.KeyType // empty: the default, ECDSA P-256
	appProbes   probe.Table    // the app's probes served on the admin listener
	// firstConfigTimeout is the sidecar's FirstConfigTimeout; 0: 5s, to
	// spare loaded test machines; negative: the sidecar's own default.
	firstConfigTimeout time.Duration
}

// sidecar is a running trellis-proxy.
type sidecar struct {
	p      *proxy.Proxy
	id     string
	access *syncbuf.Buffer
	cancel context.CancelFunc
	done   chan error
	client *http.Client // an app's client that uses the sidecar as its HTTP proxy
	direct *http.Client // no proxy: for the admin listener
}

// freeAddr returns a loopback address nothing listens on. Registrations need the
// sidecar's inbound address before the sidecar exists (its join token comes
// from the registration), so the port is chosen here and bound by the sidecar.
func freeAddr(t *testing.T) string {
	t.Helper()
	p, err := freeport.Pick()
	if err != nil {
		t.Fatal(err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
}

// sidecar registers a workload and starts its sidecar; it returns once the
// sidecar is ready (certified, with its inbound policy).
func (m *mesh) sidecar(spec sidecarSpec) *sidecar {
	t := m.t
	t.Helper()
	s := m.startSidecar(m.register(&spec), spec)
	s.waitReady(t)
	if spec.ready {
		m.setReady(s.id, true)
	}
	return s
}

// register registers spec's workload, choosing its inbound address if needed.
func (m *mesh) register(spec *sidecarSpec) controlplane.RegisterResponse {
	t := m.t
	t.Helper()
	if spec.inbound == "" {
		spec.inbound = spec.reg.Address
	}
	if spec.inbound == "" {
		spec.inbound = freeAddr(t)
	}
	if spec.reg.Address == "" {
		spec.reg.Address = spec.inbound
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := m.cp().Register(ctx, spec.reg)
	if err != nil {
		t.Fatalf("register %s/%s: %v", spec.reg.Namespace, spec.reg.Name, err)
	}
	return resp
}

// startSidecar starts the sidecar of a registered workload and returns once it
// listens.
func (m *mesh) startSidecar(reg controlplane.RegisterResponse, spec sidecarSpec) *sidecar {
	t := m.t
	t.Helper()
	m.mu.Lock()
	grpc := m.grpc
	m.mu.Unlock()
	firstConfig := spec.firstConfigTimeout
	switch {
	case firstConfig == 0:
		firstConfig = 5 * time.Second
	case firstConfig < 0:
		firstConfig = 0 // proxy.New's default
	}
	s := &sidecar{
		id: reg.ID, access: &syncbuf.Buffer{}, done: make(chan error, 1),
		direct: &http.Client{Transport: &http.Transport{}, Timeout: 15 * time.Second},
	}
	p, err := proxy.New(proxy.Options{
		ControlPlane:       grpc,
		CAFile:             filepath.Join(m.dir, controlplane.CAFile),
		Credential:         reg.Token,
		WorkloadID:         reg.ID,
		InboundAddr:        spec.inbound,
		OutboundAddr:       "127.0.0.1:0",
		AdminAddr:          "127.0.0.1:0",
		AppAddr:            spec.app,
		TCPForwards:        spec.tcpForwards,
		KeyType:            spec.keyType,
		AppProbes:          spec.appProbes,
		DrainTimeout:       5 * time.Second,
		FirstConfigTimeout: firstConfig,
		AccessLog:          s.access,
		Logger:             m.logger("sidecar " + reg.ID),
	})
	if err != nil {
		t.Fatalf("proxy.New: %v", err)
	}
	s.p = p
	var ctx context.Context
	ctx, s.cancel = context.WithCancel(context.Background())
	go func() { s.done <- p.Run(ctx) }()
	t.Cleanup(func() { s.stop(t) })
	select {
	case <-p.Listening():
	case err := <-s.done:
		s.done <- err
		t.Fatalf("sidecar of %s: %v", reg.ID, err)
	case <-time.After(10 * time.Second):
		t.Fatalf("sidecar of %s not listening after 10s", reg.ID)
	}
	s.client = &http.Client{
		Transport: &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: p.Outbound.String()})},
		Timeout:   15 * time.Second,
	}
	t.Cleanup(s.client.CloseIdleConnections)
	t.Cleanup(s.direct.CloseIdleConnections)
	return s
}

// waitReady waits until the sidecar's /ready answers 200.
func (s *sidecar) waitReady(t *testing.T) {
	t.Helper()
	eventually(t, 15*time.Second, func() error {
		if code := s.adminStatus(t, "/ready"); code != http.StatusOK {
			return fmt.Errorf("sidecar of %s: /ready answers %d", s.id, code)
		}
		return nil
	})
}

// stop cancels the sidecar and waits for Run to return.
func (s *sidecar) stop(t *testing.T) error {
	s.cancel()
	select {
	case err := <-s.done:
		s.done <- err
		return err
	case <-time.After(15 * time.Second):
		t.Errorf("sidecar of %s did not stop within 15s", s.id)
		return errors.New("sidecar did not stop")
	}
}

func (s *sidecar) admin(t *testing.T, path string) (int, []byte) {
	t.Helper()
	resp, err := s.direct.Get("http://" + s.p.Admin.String() + path)
	if err != nil {
		t.Fatalf("admin %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("admin %s: %v", path, err)
	}
	return resp.StatusCode, b
}

func (s *sidecar) adminStatus(t *testing.T, path string) int {
	code, _ := s.admin(t, path)
	return code
}

// do sends a request through the sidecar and reads the whole response.
func (s *sidecar) do(t *testing.T, method, rawURL string, body io.Reader, header http.Header) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, rawURL, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := s.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, rawURL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the body: %v", method, rawURL, err)
	}
	return resp, b
}

func (s *sidecar) get(t *testing.T, rawURL string) (*http.Response, []byte) {
	t.Helper()
	return s.do(t, http.MethodGet, rawURL, nil, nil)
}

// getUntil repeats GET rawURL until ok accepts the response.
func (s *sidecar) getUntil(t *testing.T, rawURL string, ok func(*http.Response, []byte) bool) {
	t.Helper()
	eventually(t, 15*time.Second, func() error {
		resp, b := s.get(t, rawURL)
		if !ok(resp, b) {
			return fmt.Errorf("GET %s: %d %s %q", rawURL, resp.StatusCode, resp.Header.Get(proxy.ReasonHeader), b)
		}
		return nil
	})
}

func statusIs(code int) func(*http.Response, []byte) bool {
	return func(r *http.Response, _ []byte) bool { return r.StatusCode == code }
}

// eventually retries f until it succeeds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still failing after %v: %v", timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// requestCount sums trellis_requests_total over the series whose labels
// include want.
func (s *sidecar) requestCount(t *testing.T, want map[string]string) float64 {
	t.Helper()
	var n float64
	for _, m := range s.metricFamily(t, "trellis_requests_total").GetMetric() {
		if hasLabels(m, want) {
			n += m.GetCounter().GetValue()
		}
	}
	return n
}

func (s *sidecar) metricFamily(t *testing.T, name string) *dto.MetricFamily {
	t.Helper()
	code, b := s.admin(t, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics answers %d", code)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("/metrics does not parse: %v\n%s", err, b)
	}
	return fams[name]
}

func hasLabels(m *dto.Metric, want map[string]string) bool {
	got := map[string]string{}
	for _, lp := range m.GetLabel() {
		got[lp.GetName()] = lp.GetValue()
	}
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	return true
}

// accessLines returns the access log lines as decoded objects.
func (s *sidecar) accessLines(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(s.access.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("access log line %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}
