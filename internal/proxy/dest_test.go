package proxy

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	proxyv1 "github.com/trellis-mesh/trellis/api/proxy/v1"
)

// splitConfig is a DestinationConfig for bookstore.bookstore with a TrafficSplit
// over the given backends and weights; every backend named in weights except
// those in missing is also listed among the config's backends.
func splitConfig(weights []*proxyv1.WeightedBackend, missing ...string) *proxyv1.DestinationConfig {
	m := &proxyv1.DestinationConfig{
		Authority: "bookstore.bookstore:14001",
		Found:     true,
		Service:   "bookstore.bookstore",
		Routes:    []*proxyv1.Route{{Name: "default", Backends: weights}},
	}
	skip := map[string]bool{}
	for _, name := range missing {
		skip[name] = true
	}
	for _, wb := range weights {
		if skip[wb.GetBackend()] {
			continue
		}
		m.Backends = append(m.Backends, &proxyv1.Backend{Name: wb.GetBackend()})
	}
	return m
}

func TestPickDistribution(t *testing.T) {
	const picks = 10000
	tests := []struct {
		name    string
		weights []*proxyv1.WeightedBackend
		missing []string
		want    map[string]float64 // share of picks
	}{
		{
			name:    "50/50",
			weights: []*proxyv1.WeightedBackend{{Backend: "bookstore-v1.bookstore", Weight: 50}, {Backend: "bookstore-v2.bookstore", Weight: 50}},
			want:    map[string]float64{"bookstore-v1.bookstore": 0.5, "bookstore-v2.bookstore": 0.5},
		},
		{
			name:    "80/20",
			weights: []*proxyv1.WeightedBackend{{Backend: "bookstore-v1.bookstore", Weight: 80}, {Backend: "bookstore-v2.bookstore", Weight: 20}},
			want:    map[string]float64{"bookstore-v1.bookstore": 0.8, "bookstore-v2.bookstore": 0.2},
		},
		{
			name:    "0/100",
			weights: []*proxyv1.WeightedBackend{{Backend: "bookstore-v1.bookstore", Weight: 0}, {Backend: "bookstore-v2.bookstore", Weight: 100}},
			want:    map[string]float64{"bookstore-v2.bookstore": 1},
		},
		{
			name: "weight 0 among three",
			weights: []*proxyv1.WeightedBackend{
				{Backend: "bookstore-v1.bookstore", Weight: 50}, {Backend: "bookstore-v2.bookstore", Weight: 0}, {Backend: "bookstore-v3.bookstore", Weight: 50},
			},
			want: map[string]float64{"bookstore-v1.bookstore": 0.5, "bookstore-v3.bookstore": 0.5},
		},
		{
			name:    "backend missing from the config is ignored",
			weights: []*proxyv1.WeightedBackend{{Backend: "bookstore-v1.bookstore", Weight: 50}, {Backend: "bookstore-gone.bookstore", Weight: 50}},
			missing: []string{"bookstore-gone.bookstore"},
			want:    map[string]float64{"bookstore-v1.bookstore": 1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRoute(splitConfig(tt.weights, tt.missing...))
			got := map[string]int{}
			for range picks {
				b := pickFor(r)
				if b == nil {
					t.Fatal("pick() = nil, want a backend")
				}
				got[b.msg.GetName()]++
			}
			for name := range got {
				if _, ok := tt.want[name]; !ok {
					t.Errorf("backend %s picked %d times, want never", name, got[name])
				}
			}
			for name, share := range tt.want {
				lo, hi := int((share-0.03)*picks), int((share+0.03)*picks)
				if n := got[name]; n < lo || n > hi {
					t.Errorf("backend %s picked %d of %d times, want %d to %d", name, n, picks, lo, hi)
				}
			}
		})
	}
}

func TestPickNone(t *testing.T) {
	tests := []struct {
		name string
		m    *proxyv1.DestinationConfig
	}{
		{name: "no routes", m: &proxyv1.DestinationConfig{Found: true, Backends: []*proxyv1.Backend{{Name: "bookstore.bookstore"}}}},
		{name: "all weights zero", m: splitConfig([]*proxyv1.WeightedBackend{{Backend: "bookstore-v1.bookstore"}, {Backend: "bookstore-v2.bookstore"}})},
		{name: "every backend missing", m: splitConfig([]*proxyv1.WeightedBackend{{Backend: "bookstore-v1.bookstore", Weight: 1}}, "bookstore-v1.bookstore")},
		{name: "not found", m: &proxyv1.DestinationConfig{Reason: "no service"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if b := pickFor(newRoute(tt.m)); b != nil {
				t.Errorf("pick() = %s, want nil", b.msg.GetName())
			}
		})
	}
}

func TestEndpointRoundRobin(t *testing.T) {
	eps := []*proxyv1.Endpoint{{Address: "127.0.0.1:1001"}, {Address: "127.0.0.1:1002"}, {Address: "127.0.0.1:1003"}}
	b := newBackend(&proxyv1.Backend{Name: "bookstore.bookstore", Endpoints: eps, Balancer: proxyv1.Balancer_BALANCER_ROUND_ROBIN}, nil)
	var got []string
	for range 3 * len(eps) {
		got = append(got, pickOne(b).GetAddress())
	}
	// Every window of len(eps) consecutive picks holds each endpoint once.
	for i := 0; i+len(eps) <= len(got); i++ {
		seen := map[string]int{}
		for _, a := range got[i : i+len(eps)] {
			seen[a]++
		}
		want := map[string]int{"127.0.0.1:1001": 1, "127.0.0.1:1002": 1, "127.0.0.1:1003": 1}
		if diff := cmp.Diff(want, seen); diff != "" {
			t.Fatalf("picks %d..%d of %v (-want +got):\n%s", i, i+len(eps)-1, got, diff)
		}
	}

	empty := newBackend(&proxyv1.Backend{Name: "bookstore.bookstore"}, nil)
	if ep := pickOne(empty); ep != nil {
		t.Errorf("endpoint() of a backend without endpoints = %v, want nil", ep)
	}
}

func TestEndpointRoundRobinConcurrent(t *testing.T) {
	eps := []*proxyv1.Endpoint{{Address: "127.0.0.1:1001"}, {Address: "127.0.0.1:1002"}}
	b := newBackend(&proxyv1.Backend{Name: "bookstore.bookstore", Endpoints: eps, Balancer: proxyv1.Balancer_BALANCER_ROUND_ROBIN}, nil)
	var mu sync.Mutex
	got := map[string]int{}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			local := map[string]int{}
			for range 1000 {
				local[pickOne(b).GetAddress()]++
			}
			mu.Lock()
			for k, v := range local {
				got[k] += v
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	want := map[string]int{"127.0.0.1:1001": 4000, "127.0.0.1:1002": 4000}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("picks by endpoint (-want +got):\n%s", diff)
	}
}

func TestBackendAllows(t *testing.T) {
	tests := []struct {
		name    string
		backend *proxyv1.Backend
		id      string
		want    bool
	}{
		{name: "open", backend: &proxyv1.Backend{Open: true}, id: bookthiefID, want: true},
		{name: "open without identity", backend: &proxyv1.Backend{Open: true}, id: "", want: true},
		{name: "allowed source", backend: &proxyv1.Backend{AllowedSources: []string{bookbuyerID}}, id: bookbuyerID, want: true},
		{name: "not an allowed source", backend: &proxyv1.Backend{AllowedSources: []string{bookbuyerID}}, id: bookthiefID},
		{name: "no allowed sources", backend: &proxyv1.Backend{}, id: bookbuyerID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRoute(&proxyv1.DestinationConfig{
				Found:    true,
				Routes:   []*proxyv1.Route{{Name: "default", Backends: []*proxyv1.WeightedBackend{{Backend: "bookstore.bookstore", Weight: 1}}}},
				Backends: []*proxyv1.Backend{withName(tt.backend, "bookstore.bookstore")},
			})
			b := pickFor(r)
			if b == nil {
				t.Fatal("pick() = nil")
			}
			if got := b.allows(tt.id); got != tt.want {
				t.Errorf("allows(%q) = %v, want %v", tt.id, got, tt.want)
			}
		})
	}
}

func withName(b *proxyv1.Backend, name string) *proxyv1.Backend {
	b.Name = name
	return b
}

// fakeWatch records the watches destinations starts and lets the test send configs.
type fakeWatch struct {
	mu      sync.Mutex
	started map[string]int
	apply   map[string]func(*proxyv1.DestinationConfig) error
	ended   map[string]chan struct{}
}

func newFakeWatch() *fakeWatch {
	return &fakeWatch{started: map[string]int{}, apply: map[string]func(*proxyv1.DestinationConfig) error{}, ended: map[string]chan struct{}{}}
}

func (f *fakeWatch) watch(ctx context.Context, authority string, apply func(*proxyv1.DestinationConfig) error) {
	ended := make(chan struct{})
	f.mu.Lock()
	f.started[authority]++
	f.apply[authority] = apply
	f.ended[authority] = ended
	f.mu.Unlock()
	<-ctx.Done()
	close(ended)
}

// send applies m through the watch of authority, waiting for it to start.
func (f *fakeWatch) send(authority string, m *proxyv1.DestinationConfig) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		f.mu.Lock()
		apply := f.apply[authority]
		f.mu.Unlock()
		if apply != nil {
			return apply(m)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no watch for %s started", authority)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestDestinationsWatchOncePerAuthority(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f := newFakeWatch()
	d := newDestinations(ctx, time.Minute, f.watch)

	dst := d.get("bookstore.bookstore:14001")
	if again := d.get("bookstore.bookstore:14001"); again != dst {
		t.Error("second get returned another destination, want the same one")
	}
	if r := dst.wait(ctx, 10*time.Millisecond); r != nil {
		t.Errorf("wait before any config = %v, want nil", r.msg)
	}
	m := &proxyv1.DestinationConfig{Version: "v1", Found: true, Service: "bookstore.bookstore"}
	if err := f.send("bookstore.bookstore:14001", m); err != nil {
		t.Fatal(err)
	}
	if r := dst.wait(ctx, time.Second); r == nil || r.msg != m {
		t.Fatalf("wait after a config = %v, want the config sent", r)
	}
	m2 := &proxyv1.DestinationConfig{Version: "v2", Found: true, Service: "bookstore.bookstore"}
	if err := f.send("bookstore.bookstore:14001", m2); err != nil {
		t.Fatal(err)
	}
	if r := dst.wait(ctx, time.Second); r == nil || r.msg != m2 {
		t.Fatalf("wait after a second config = %v, want the second config", r)
	}
	f.mu.Lock()
	started := f.started["bookstore.bookstore:14001"]
	f.mu.Unlock()
	if started != 1 {
		t.Errorf("watches started = %d, want 1", started)
	}
	if diff := cmp.Diff(map[string]string{"bookstore.bookstore:14001": "v2"}, versions(d.snapshot())); diff != "" {
		t.Errorf("snapshot (-want +got):\n%s", diff)
	}
}

func TestDestinationsWaitFirstConfig(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f := newFakeWatch()
	d := newDestinations(ctx, time.Minute, f.watch)
	dst := d.get("bookstore.bookstore:14001")
	m := &proxyv1.DestinationConfig{Version: "v1", Found: true}
	go func() {
		time.Sleep(20 * time.Millisecond)
		if err := f.send("bookstore.bookstore:14001", m); err != nil {
			t.Error(err)
		}
	}()
	if r := dst.wait(ctx, 5*time.Second); r == nil || r.msg != m {
		t.Fatalf("wait = %v, want the config that arrived while waiting", r)
	}
}

func TestDestinationsSweep(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f := newFakeWatch()
	d := newDestinations(ctx, time.Minute, f.watch)
	d.get("idle.bookstore:80")
	if err := f.send("idle.bookstore:80", &proxyv1.DestinationConfig{Version: "v1"}); err != nil {
		t.Fatal(err)
	}
	busy := d.get("busy.bookstore:80")
	if err := f.send("busy.bookstore:80", &proxyv1.DestinationConfig{Version: "v1"}); err != nil {
		t.Fatal(err)
	}

	now := time.Now()
	d.byName["idle.bookstore:80"].lastUsed.Store(now.Add(-2 * time.Minute).UnixNano())
	busy.lastUsed.Store(now.Add(-30 * time.Second).UnixNano())
	d.sweep(now)

	if diff := cmp.Diff(map[string]string{"busy.bookstore:80": "v1"}, versions(d.snapshot())); diff != "" {
		t.Errorf("destinations after sweep (-want +got):\n%s", diff)
	}
	f.mu.Lock()
	idleEnded, busyEnded := f.ended["idle.bookstore:80"], f.ended["busy.bookstore:80"]
	f.mu.Unlock()
	select {
	case <-idleEnded:
	case <-time.After(5 * time.Second):
		t.Error("the idle destination's watch was not cancelled")
	}
	select {
	case <-busyEnded:
		t.Error("the busy destination's watch was cancelled")
	default:
	}

	// Used again, the swept destination starts a new watch.
	d.get("idle.bookstore:80")
	deadline := time.Now().Add(5 * time.Second)
	for {
		f.mu.Lock()
		started := f.started["idle.bookstore:80"]
		f.mu.Unlock()
		if started == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("watches started for the swept destination = %d, want 2", started)
		}
		time.Sleep(time.Millisecond)
	}
}

func versions(m map[string]*proxyv1.DestinationConfig) map[string]string {
	out := map[string]string{}
	for k, v := range m {
		out[k] = v.GetVersion()
	}
	return out
}

const (
	bookbuyerID = "spiffe://cluster.local/ns/bookbuyer/sa/bookbuyer"
	bookthiefID = "spiffe://cluster.local/ns/bookthief/sa/bookthief"
)

// TestPickPrefersLegsWithEndpoints checks that a split leg with no endpoint gets
// no traffic while another leg has some, and that weights apply again when no
// leg has any.
func TestPickPrefersLegsWithEndpoints(t *testing.T) {
	leg := func(name string, eps int) *proxyv1.Backend {
		b := &proxyv1.Backend{Name: name}
		for i := range eps {
			b.Endpoints = append(b.Endpoints, &proxyv1.Endpoint{Address: fmt.Sprintf("127.0.0.1:%d", 1000+i)})
		}
		return b
	}
	cfg := func(v1, v2 int) *proxyv1.DestinationConfig {
		return &proxyv1.DestinationConfig{
			Routes: []*proxyv1.Route{{Name: "default", Backends: []*proxyv1.WeightedBackend{
				{Backend: "bookstore-v1.bookstore", Weight: 50}, {Backend: "bookstore-v2.bookstore", Weight: 50}}}},
			Backends: []*proxyv1.Backend{leg("bookstore-v1.bookstore", v1), leg("bookstore-v2.bookstore", v2)},
		}
	}
	count := func(r *route) map[string]int {
		got := map[string]int{}
		for range 2000 {
			got[pickFor(r).msg.GetName()]++
		}
		return got
	}
	if got := count(newRoute(cfg(0, 2))); got["bookstore-v2.bookstore"] != 2000 {
		t.Errorf("v1 without endpoints: picks %v, want every pick on v2", got)
	}
	if got := count(newRoute(cfg(0, 0))); got["bookstore-v1.bookstore"] < 800 || got["bookstore-v2.bookstore"] < 800 {
		t.Errorf("no leg with endpoints: picks %v, want the weights (about 1000 each)", got)
	}
}

// pickOne picks an endpoint and reports a quick success for it.
func pickOne(b *backend) *proxyv1.Endpoint {
	ep, done := b.endpoint(nil)
	done(time.Millisecond, false)
	return ep
}

// TestPeakEWMAAvoidsSlowEndpoint checks the default balancer end to end through
// the backend: an endpoint that answers ten times slower gets few requests.
func TestPeakEWMAAvoidsSlowEndpoint(t *testing.T) {
	eps := []*proxyv1.Endpoint{{Address: "127.0.0.1:1001"}, {Address: "127.0.0.1:1002"}, {Address: "127.0.0.1:1003"}}
	b := newBackend(&proxyv1.Backend{Name: "bookstore.bookstore", Endpoints: eps}, nil)
	got := map[string]int{}
	for i := range 3000 {
		ep, done := b.endpoint(nil)
		latency := 2 * time.Millisecond
		if ep.GetAddress() == "127.0.0.1:1003" {
			latency = 20 * time.Millisecond
		}
		done(latency, false)
		if i >= 300 {
			got[ep.GetAddress()]++
		}
	}
	if slow := float64(got["127.0.0.1:1003"]) / 2700; slow > 0.10 {
		t.Errorf("the slow endpoint got %.1f%% of requests after warm-up (%v), want under 10%%", 100*slow, got)
	}
}

// pickFor picks a backend for a GET / through the first rule that takes it;
// nil when no rule does or the rule has no backend.
func pickFor(r *route) *backend {
	ru := r.match(httptest.NewRequest(http.MethodGet, "http://bookstore.bookstore:14001/", nil))
	if ru == nil {
		return nil
	}
	return ru.pick()
}
