package balance

import (
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// Stats is the per-address state of one backend's endpoints that outlives
// any one config: requests in flight and the latency estimate. Pass the same
// Stats to each balancer built for that backend; building a balancer forgets
// the addresses its config no longer lists. Safe for concurrent use.
type Stats struct {
	now  func() time.Time // nil: the monotonic clock
	base time.Time

	mu     sync.Mutex
	byAddr map[string]*endpoint
}

// StatsConfig configures a Stats.
type StatsConfig struct {
	// Now is the clock latency estimates decay by. Default time.Now.
	Now func() time.Time
}

// NewStats returns an empty Stats.
func NewStats(c StatsConfig) *Stats {
	s := &Stats{now: c.Now, byAddr: map[string]*endpoint{}}
	if s.now == nil {
		s.base = time.Now()
	} else {
		s.base = s.now()
	}
	return s
}

func statsOrPrivate(s *Stats) *Stats {
	if s == nil {
		return NewStats(StatsConfig{})
	}
	return s
}

// endpoints returns the state of each address, in order, making what is
// missing and forgetting the addresses not listed. In-flight requests on a
// forgotten address still report to its old state, which no balancer reads.
func (s *Stats) endpoints(addrs []string) []*endpoint {
	s.mu.Lock()
	defer s.mu.Unlock()
	eps := make([]*endpoint, len(addrs))
	keep := make(map[string]*endpoint, len(addrs))
	for i, a := range addrs {
		e := s.byAddr[a]
		if e == nil {
			e = keep[a]
		}
		if e == nil {
			e = &endpoint{}
		}
		keep[a] = e
		eps[i] = e
	}
	s.byAddr = keep
	return eps
}

// millis is the time since the Stats was made, in milliseconds.
func (s *Stats) millis() uint64 {
	var d time.Duration
	if s.now == nil {
		d = time.Since(s.base) // reads only the monotonic clock
	} else {
		d = s.now().Sub(s.base)
	}
	return uint64(max(d, 0) / time.Millisecond)
}

// endpoint is one address's state. It fills a cache line so that endpoints
// picked from different cores do not contend.
type endpoint struct {
	inflight atomic.Int64
	// rtt packs the latency estimate as of its last sample and the time of
	// that sample, so both change in one atomic step: the high 24 bits are the
	// estimate in nanoseconds as a float32 without its sign bit and its 7 low
	// mantissa bits (16 bits of precision; 0 means no estimate), the low 40
	// bits the time in Stats.millis (34 years).
	rtt atomic.Uint64
	_   [48]byte
}

const stampBits = 40

func packRTT(ns float64, at uint64) uint64 {
	return uint64(math.Float32bits(float32(ns))>>7)<<stampBits | at&(1<<stampBits-1)
}

func unpackRTT(v uint64) (ns float64, at uint64) {
	return float64(math.Float32frombits(uint32(v>>stampBits) << 7)), v & (1<<stampBits - 1)
}

// staleAfter is the age, in time constants, past which an estimate is
// forgotten: its weight would be under 1%, and an estimate decayed that far
// would draw a burst of requests to an endpoint nothing is known about.
const staleAfter = 5

// decay is the weight left to a value stamped at, at time now: 1 for a sample
// stamped after now (a concurrent update), 0 once stale.
func decay(now, at uint64, tau float64) float64 {
	if now <= at {
		return 1
	}
	age := float64(now-at) / tau
	if age >= staleAfter {
		return 0
	}
	return math.Exp(-age)
}

// estimate is the latency estimate at time now: the last estimate decayed
// towards zero for the time since, so that an endpoint that gets no requests
// is tried again in time; zero, no estimate, once stale. tau is the decay
// time constant in milliseconds.
func (e *endpoint) estimate(now uint64, tau float64) float64 {
	ns, at := unpackRTT(e.rtt.Load())
	return ns * decay(now, at, tau)
}

// maxRTT bounds the estimate so that doubling for failures stays finite.
const maxRTT = float64(time.Hour)

// observe folds one sample (nanoseconds) into the estimate: a sample above the
// current estimate replaces it at once (peak sensitivity); one below moves the
// estimate towards it by the weight its age since the last sample gives.
func (e *endpoint) observe(sample float64, failed bool, now uint64, tau float64) {
	for {
		old := e.rtt.Load()
		ns, at := unpackRTT(old)
		w := decay(now, at, tau)
		current := ns * w
		s := sample
		if failed {
			// A failure counts as twice the latency seen or estimated,
			// whichever is more, so an endpoint that fails fast does not
			// attract traffic and one that keeps failing is soon avoided.
			s = 2 * max(s, current)
		}
		next := current + s*(1-w)
		if s > current {
			next = s
		}
		next = min(max(next, 1), maxRTT) // at least 1ns: a sample was seen
		if e.rtt.CompareAndSwap(old, packRTT(next, max(now, at))) {
			return
		}
	}
}
