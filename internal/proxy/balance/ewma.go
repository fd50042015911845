package balance

import (
	"time"
)

// PeakEWMAConfig configures a PeakEWMA balancer.
type PeakEWMAConfig struct {
	Config
	// Decay is the time constant of the latency estimate: a sample's weight
	// falls to 1/e after this long, and so does the estimate of an endpoint
	// that gets no requests. Default 10s.
	Decay time.Duration
}

// PeakEWMA picks two endpoints at random and takes the one with the lower
// cost, its latency estimate times one more than its requests in flight. The
// estimate is a moving average that jumps to any sample above it at once and
// otherwise decays with the configured time constant, so a slow endpoint is
// shunned at once and tried again once its estimate has decayed.
//
// An endpoint with no estimate (new, or without a sample for five time
// constants, when what was known about it is stale) costs nothing while it
// has no request in flight and more than any other while it has one: it is
// tried at once, but gets a second request only after the first has answered.
type PeakEWMA struct {
	eps   []*endpoint
	done  []Done
	stats *Stats
	tau   float64 // milliseconds
}

// penalty is the cost of an endpoint without an estimate that has a request
// in flight: more than any endpoint with an estimate can cost.
const penalty = 1e30

// NewPeakEWMA returns a peak-EWMA balancer over c.Addresses. Estimates and
// in-flight counts live in c.Stats, so they carry over from the previous
// config's balancer.
func NewPeakEWMA(c PeakEWMAConfig) *PeakEWMA {
	s := statsOrPrivate(c.Stats)
	decay := c.Decay
	if decay <= 0 {
		decay = 10 * time.Second
	}
	eps := s.endpoints(c.Addresses)
	b := &PeakEWMA{eps: eps, done: make([]Done, len(eps)), stats: s, tau: float64(decay) / float64(time.Millisecond)}
	for i, e := range eps {
		b.done[i] = func(latency time.Duration, failed bool) {
			e.observe(float64(max(latency, 0)), failed, s.millis(), b.tau)
			e.inflight.Add(-1)
		}
	}
	return b
}

// Pick returns the cheaper of two random endpoints.
func (b *PeakEWMA) Pick(uint64) (int, Done) {
	i := 0
	switch len(b.eps) {
	case 0:
		return -1, noop
	case 1:
	default:
		x, y := pair(len(b.eps))
		now := b.stats.millis()
		i = x
		if b.cost(b.eps[y], now) < b.cost(b.eps[x], now) {
			i = y
		}
	}
	b.eps[i].inflight.Add(1)
	return i, b.done[i]
}

func (b *PeakEWMA) cost(e *endpoint, now uint64) float64 {
	pending := float64(max(e.inflight.Load(), 0))
	rtt := e.estimate(now, b.tau)
	if rtt == 0 {
		if pending > 0 {
			return penalty + pending
		}
		return 0
	}
	return rtt * (pending + 1)
}
