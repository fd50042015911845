// Package balance owns endpoint selection for the sidecar: given the endpoints
// of one backend, it picks the one a request goes to. It offers round robin,
// least request (power of two choices over in-flight requests), peak EWMA
// (power of two choices over latency times load, as Finagle and linkerd do) and
// ring hash (consistent hashing on a key the caller supplies). Balancers are
// built whole for each config and are safe for concurrent use; picking and
// reporting allocate nothing. State that must outlive a config (in-flight
// counts, latency estimates) lives in a Stats keyed by address. It uses the
// standard library only; the sidecar (internal/proxy) imports it.
package balance

import (
	"math/rand/v2"
	"sync/atomic"
	"time"
)

// Balancer picks one of a fixed list of endpoints.
type Balancer interface {
	// Pick returns the index, in the config's Addresses, of the endpoint for a
	// request with the given key (only RingHash looks at it), or -1 when there
	// are no endpoints; and the Done to call exactly once when that request
	// ends. Done is never nil.
	Pick(key uint64) (int, Done)
}

// Done reports how a picked request went: its latency (time to the response
// headers, or to the failure) and whether it failed (the connection could not
// be made, or the endpoint answered with a server error).
type Done func(latency time.Duration, failed bool)

// Config is what every balancer is built from.
type Config struct {
	// Addresses of the endpoints, host:port; Pick returns indexes into it.
	// Addresses should be distinct. Empty is allowed: Pick then returns -1.
	Addresses []string
	// Stats holds per-address state that survives from one config's balancer
	// to the next; pass the same Stats for each config of one backend. Nil
	// means state private to this balancer. Round robin and ring hash keep no
	// such state and ignore it.
	Stats *Stats
}

var (
	_ Balancer = (*RoundRobin)(nil)
	_ Balancer = (*LeastRequest)(nil)
	_ Balancer = (*PeakEWMA)(nil)
	_ Balancer = (*RingHash)(nil)
)

// noop is the Done of balancers that learn nothing from outcomes.
func noop(time.Duration, bool) {}

// RoundRobin takes the endpoints in turn.
type RoundRobin struct {
	n    uint64
	next atomic.Uint64
}

// NewRoundRobin returns a round robin over c.Addresses, starting at a random
// endpoint so that sidecars given the same config do not all start on the
// first one.
func NewRoundRobin(c Config) *RoundRobin {
	r := &RoundRobin{n: uint64(len(c.Addresses))}
	if r.n > 0 {
		r.next.Store(rand.Uint64N(r.n))
	}
	return r
}

// Pick returns the next endpoint in turn.
func (r *RoundRobin) Pick(uint64) (int, Done) {
	if r.n == 0 {
		return -1, noop
	}
	return int((r.next.Add(1) - 1) % r.n), noop
}

// pair returns two distinct random indexes below n, n >= 2.
func pair(n int) (int, int) {
	r := rand.Uint64()
	a := int((r & 0xffffffff) * uint64(n) >> 32)
	b := int((r >> 32) * uint64(n-1) >> 32)
	if b >= a {
		b++
	}
	return a, b
}

// LeastRequest picks two endpoints at random and takes the one with fewer
// requests in flight (the power of two choices).
type LeastRequest struct {
	eps  []*endpoint
	done []Done
}

// NewLeastRequest returns a least-request balancer over c.Addresses. In-flight
// counts live in c.Stats, so requests picked by the previous config's balancer
// still count.
func NewLeastRequest(c Config) *LeastRequest {
	eps := statsOrPrivate(c.Stats).endpoints(c.Addresses)
	b := &LeastRequest{eps: eps, done: make([]Done, len(eps))}
	for i, e := range eps {
		b.done[i] = func(time.Duration, bool) { e.inflight.Add(-1) }
	}
	return b
}

// Pick returns the less loaded of two random endpoints.
func (b *LeastRequest) Pick(uint64) (int, Done) {
	i := 0
	switch len(b.eps) {
	case 0:
		return -1, noop
	case 1:
	default:
		x, y := pair(len(b.eps))
		i = x
		if b.eps[y].inflight.Load() < b.eps[x].inflight.Load() {
			i = y
		}
	}
	b.eps[i].inflight.Add(1)
	return i, b.done[i]
}
