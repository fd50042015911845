package proxy

import (
	"context"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	proxyv1 "github.com/trellis-mesh/trellis/api/proxy/v1"
	"github.com/trellis-mesh/trellis/internal/proxy/balance"
)

// destination is one authority the app has called: its latest compiled config and
// the watch that keeps it fresh.
type destination struct {
	authority string
	stats     map[string]*balance.Stats // by backend; touched only by the watch
	cfg       atomic.Pointer[route]
	first     chan struct{} // closed on the first config
	once      sync.Once
	lastUsed  atomic.Int64 // unix nanoseconds
	cancel    context.CancelFunc
}

// route is a DestinationConfig made ready for the hot path.
type route struct {
	msg   *proxyv1.DestinationConfig
	rules []*rule // in order; the first whose match accepts a request serves it
	// readsHeaders says that a match or a balancer of the route reads the
	// request's header fields; the HTTP/1.1 relay builds them only then.
	readsHeaders bool
}

// rule is one route of a destination: its match and its weighted legs.
type rule struct {
	msg   *proxyv1.Route
	match *matcher // nil: every request
	legs
}

// legs are a rule's weighted backends, weight > 0 only.
type legs struct {
	backends []*backend
	cum      []uint32 // cumulative weights
	total    uint32
	// The legs that have endpoints, picked from while there are any: a
	// version scaled to zero does not fail its share of the requests.
	ready      []*backend
	readyCum   []uint32
	readyTotal uint32
}

type backend struct {
	msg        *proxyv1.Backend
	allowed    map[string]bool
	lb         balance.Balancer
	hashHeader string // canonical header name, with ring hash
}

// newBackend prepares one backend; stats, when not nil, carries per-endpoint
// latency and load across config versions of the same backend.
func newBackend(b *proxyv1.Backend, stats *balance.Stats) *backend {
	be := &backend{msg: b, allowed: map[string]bool{}}
	for _, s := range b.GetAllowedSources() {
		be.allowed[s] = true
	}
	addrs := make([]string, len(b.GetEndpoints()))
	for i, ep := range b.GetEndpoints() {
		addrs[i] = ep.GetAddress()
	}
	c := balance.Config{Addresses: addrs, Stats: stats}
	switch b.GetBalancer() {
	case proxyv1.Balancer_BALANCER_ROUND_ROBIN:
		be.lb = balance.NewRoundRobin(c)
	case proxyv1.Balancer_BALANCER_LEAST_REQUEST:
		be.lb = balance.NewLeastRequest(c)
	case proxyv1.Balancer_BALANCER_RING_HASH:
		be.lb = balance.NewRingHash(balance.RingHashConfig{Config: c})
		be.hashHeader = http.CanonicalHeaderKey(b.GetHashHeader())
	default: // BALANCER_P2C_PEAK_EWMA and unspecified
		be.lb = balance.NewPeakEWMA(balance.PeakEWMAConfig{Config: c})
	}
	return be
}

// newRoute prepares a config with per-backend state of its own.
func newRoute(m *proxyv1.DestinationConfig) *route { return newRouteStats(m, nil) }

// newRouteStats prepares a config; statsFor, when not nil, gives each backend
// the state its earlier versions kept. Rules that share a backend share its
// balancer.
func newRouteStats(m *proxyv1.DestinationConfig, statsFor func(backend string) *balance.Stats) *route {
	r := &route{msg: m}
	byName := map[string]*proxyv1.Backend{}
	for _, b := range m.GetBackends() {
		byName[b.GetName()] = b
	}
	made := map[string]*backend{}
	for _, rm := range m.GetRoutes() {
		ru := &rule{msg: rm, match: newMatcher(rm.GetMatch())}
		if ru.match != nil && len(ru.match.headers) > 0 {
			r.readsHeaders = true
		}
		for _, wb := range rm.GetBackends() {
			b, ok := byName[wb.GetBackend()]
			if !ok || wb.GetWeight() == 0 {
				continue
			}
			be := made[b.GetName()]
			if be == nil {
				var stats *balance.Stats
				if statsFor != nil {
					stats = statsFor(b.GetName())
				}
				be = newBackend(b, stats)
				made[b.GetName()] = be
				if be.hashHeader != "" {
					r.readsHeaders = true
				}
			}
			ru.add(be, wb.GetWeight())
		}
		r.rules = append(r.rules, ru)
	}
	return r
}

func (l *legs) add(be *backend, weight uint32) {
	l.total += weight
	l.backends = append(l.backends, be)
	l.cum = append(l.cum, l.total)
	if len(be.msg.GetEndpoints()) > 0 {
		l.readyTotal += weight
		l.ready = append(l.ready, be)
		l.readyCum = append(l.readyCum, l.readyTotal)
	}
}

// match returns the first rule that accepts req; nil when none does.
func (r *route) match(req *http.Request) *rule {
	for _, ru := range r.rules {
		if ru.match.accepts(req) {
			return ru
		}
	}
	return nil
}

// unconditional returns the first rule that takes every request, the one an
// opaque TCP stream (which no HTTP match can test) follows; nil when every
// rule has a match.
func (r *route) unconditional() *rule {
	for _, ru := range r.rules {
		if ru.match == nil {
			return ru
		}
	}
	return nil
}

// pick chooses a backend by weight among those with endpoints, or among all
// when none has any; nil when the rule has no backend.
func (l *legs) pick() *backend {
	if len(l.ready) > 0 {
		return pickWeighted(l.ready, l.readyCum, l.readyTotal)
	}
	return pickWeighted(l.backends, l.cum, l.total)
}

func pickWeighted(bs []*backend, cum []uint32, total uint32) *backend {
	switch len(bs) {
	case 0:
		return nil
	case 1:
		return bs[0]
	}
	n := rand.Uint32N(total)
	for i, c := range cum {
		if n < c {
			return bs[i]
		}
	}
	return bs[len(bs)-1]
}

// allows says whether the identity may call this backend (early refusal).
func (b *backend) allows(id string) bool { return b.msg.GetOpen() || b.allowed[id] }

// endpoint picks an endpoint for r with the backend's balancer; nil when there
// is none. The caller reports the request's outcome with done, exactly once.
func (b *backend) endpoint(r *http.Request) (ep *proxyv1.Endpoint, done balance.Done) {
	var key uint64
	if b.hashHeader != "" && r != nil {
		key = hashString(r.Header.Get(b.hashHeader))
	}
	i, done := b.lb.Pick(key)
	if i < 0 {
		return nil, done
	}
	return b.msg.GetEndpoints()[i], done
}

// hashString is FNV-1a, for ring-hash keys.
func hashString(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}

// destinations is the table of authorities the app has called.
type destinations struct {
	watch   func(ctx context.Context, authority string, apply func(*proxyv1.DestinationConfig) error)
	idle    time.Duration
	mu      sync.Mutex
	byName  map[string]*destination
	rootCtx context.Context
}

func newDestinations(ctx context.Context, idle time.Duration, watch func(context.Context, string, func(*proxyv1.DestinationConfig) error)) *destinations {
	return &destinations{watch: watch, idle: idle, byName: map[string]*destination{}, rootCtx: ctx}
}

// get returns the destination for authority, starting its watch on first use.
func (d *destinations) get(authority string) *destination {
	d.mu.Lock()
	dst, ok := d.byName[authority]
	if !ok {
		ctx, cancel := context.WithCancel(d.rootCtx)
		dst = &destination{authority: authority, first: make(chan struct{}), cancel: cancel}
		d.byName[authority] = dst
		dst.stats = map[string]*balance.Stats{}
		go d.watch(ctx, authority, func(m *proxyv1.DestinationConfig) error {
			dst.cfg.Store(newRouteStats(m, dst.statsFor(m)))
			dst.once.Do(func() { close(dst.first) })
			return nil
		})
	}
	d.mu.Unlock()
	dst.lastUsed.Store(time.Now().UnixNano())
	return dst
}

// wait returns the destination's current config, waiting up to timeout for the
// first one; nil if none came.
func (dst *destination) wait(ctx context.Context, timeout time.Duration) *route {
	if r := dst.cfg.Load(); r != nil {
		return r
	}
	if timeout <= 0 {
		return nil
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-dst.first:
		return dst.cfg.Load()
	case <-t.C:
	case <-ctx.Done():
	}
	return nil
}

// sweep drops destinations unused for longer than the idle time, so the sidecar
// holds only what its app calls.
func (d *destinations) sweep(now time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for name, dst := range d.byName {
		if now.Sub(time.Unix(0, dst.lastUsed.Load())) > d.idle {
			dst.cancel()
			delete(d.byName, name)
		}
	}
}

// snapshot returns the current configs by authority, for /config.
func (d *destinations) snapshot() map[string]*proxyv1.DestinationConfig {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make(map[string]*proxyv1.DestinationConfig, len(d.byName))
	for name, dst := range d.byName {
		if r := dst.cfg.Load(); r != nil {
			out[name] = r.msg
		} else {
			out[name] = nil
		}
	}
	return out
}

// statsFor returns the per-backend state for the backends of m, dropping that
// of backends m no longer has. Only the destination's watch calls it.
func (dst *destination) statsFor(m *proxyv1.DestinationConfig) func(string) *balance.Stats {
	keep := make(map[string]*balance.Stats, len(m.GetBackends()))
	for _, b := range m.GetBackends() {
		st := dst.stats[b.GetName()]
		if st == nil {
			st = balance.NewStats(balance.StatsConfig{})
		}
		keep[b.GetName()] = st
	}
	dst.stats = keep
	return func(name string) *balance.Stats { return keep[name] }
}
