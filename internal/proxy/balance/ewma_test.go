package balance

import (
	"container/heap"
	"math"
	"testing"
	"time"
)

// fakeClock is a clock the test moves by hand.
type fakeClock struct{ t time.Time }

func newFakeClock() *fakeClock                           { return &fakeClock{t: time.Unix(1_000_000, 0)} }
func (c *fakeClock) now() time.Time                      { return c.t }
func (c *fakeClock) advance(d time.Duration)             { c.t = c.t.Add(d) }
func (c *fakeClock) stats() *Stats                       { return NewStats(StatsConfig{Now: c.now}) }
func (c *fakeClock) set(base time.Time, d time.Duration) { c.t = base.Add(d) }

// completion is a request in flight in the simulation.
type completion struct {
	at      time.Duration
	latency time.Duration
	done    Done
}

type completions []completion

func (q completions) Len() int           { return len(q) }
func (q completions) Less(i, j int) bool { return q[i].at < q[j].at }
func (q completions) Swap(i, j int)      { q[i], q[j] = q[j], q[i] }
func (q *completions) Push(x any)        { *q = append(*q, x.(completion)) }
func (q *completions) Pop() any {
	old := *q
	c := old[len(old)-1]
	*q = old[:len(old)-1]
	return c
}

// simulation sends one request every interval to a balancer and completes
// each after its endpoint's latency, on a fake clock: a discrete-event model
// of a sidecar under fixed load. No real time passes.
type simulation struct {
	clock    *fakeClock
	base     time.Time
	now      time.Duration
	interval time.Duration
	queue    completions
}

func newSimulation(clock *fakeClock, interval time.Duration) *simulation {
	return &simulation{clock: clock, base: clock.t, interval: interval}
}

// run sends requests until the simulated time until and returns how many
// each of n endpoints got from the simulated time from on.
func (s *simulation) run(b Balancer, n int, latency func(i int, at time.Duration) time.Duration, from, until time.Duration) []int {
	counts := make([]int, n)
	for ; s.now < until; s.now += s.interval {
		for len(s.queue) > 0 && s.queue[0].at <= s.now {
			c := heap.Pop(&s.queue).(completion)
			s.clock.set(s.base, c.at)
			c.done(c.latency, false)
		}
		s.clock.set(s.base, s.now)
		i, done := b.Pick(uint64(s.now))
		if s.now >= from {
			counts[i]++
		}
		lat := latency(i, s.now)
		heap.Push(&s.queue, completion{at: s.now + lat, latency: lat, done: done})
	}
	return counts
}

func share(counts []int, i int) float64 {
	total := 0
	for _, c := range counts {
		total += c
	}
	return float64(counts[i]) / float64(total)
}

// TestPeakEWMAShunsSlowEndpoint sends requests at a fixed rate to three
// endpoints, one ten times slower than the others. Round robin sends it a
// third of the requests; peak EWMA, after warming up, under a tenth, also at a
// load so low that requests never overlap and least request cannot tell the
// endpoints apart. When the slow endpoint recovers, peak EWMA sends it its
// share again.
func TestPeakEWMAShunsSlowEndpoint(t *testing.T) {
	const slow = 1
	as := addrs(3)
	for _, tc := range []struct {
		name     string
		interval time.Duration // between requests
		duration time.Duration // of each phase
	}{
		{"1000 requests a second", time.Millisecond, 60 * time.Second},
		{"5 requests a second, one at a time", 200 * time.Millisecond, 600 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			recoverAt := tc.duration
			latency := func(i int, at time.Duration) time.Duration {
				if i == slow && at < recoverAt {
					return 100 * time.Millisecond
				}
				return 10 * time.Millisecond
			}
			warm := 10 * time.Second
			run := func(b func(*Stats) Balancer) ([]int, func(from, until time.Duration) []int) {
				clock := newFakeClock()
				sim := newSimulation(clock, tc.interval)
				bal := b(clock.stats())
				more := func(from, until time.Duration) []int { return sim.run(bal, 3, latency, from, until) }
				return more(warm, recoverAt), more
			}
			rr, _ := run(func(*Stats) Balancer { return NewRoundRobin(Config{Addresses: as}) })
			lr, _ := run(func(s *Stats) Balancer { return NewLeastRequest(Config{Addresses: as, Stats: s}) })
			ewma, more := run(func(s *Stats) Balancer {
				return NewPeakEWMA(PeakEWMAConfig{Config: Config{Addresses: as, Stats: s}})
			})
			got := share(ewma, slow)
			t.Logf("slow endpoint's share: round robin %.3f, least request %.3f, peak EWMA %.4f %v",
				share(rr, slow), share(lr, slow), got, ewma)
			if rr := share(rr, slow); rr < 0.32 || rr > 0.34 {
				t.Errorf("round robin gave the slow endpoint %.3f of requests, want a third", rr)
			}
			if got >= 0.10 {
				t.Errorf("peak EWMA gave the slow endpoint %.3f of requests after warm-up, want under 0.10", got)
			}
			if ewma[slow] == 0 {
				t.Errorf("peak EWMA never tried the slow endpoint again; it should probe it as its estimate decays")
			}
			after := more(recoverAt+30*time.Second, recoverAt+tc.duration)
			t.Logf("from 30s after recovery: peak EWMA %v", after)
			if got := share(after, slow); got < 0.25 {
				t.Errorf("peak EWMA gave the recovered endpoint %.3f of requests from 30s after it recovered, want at least 0.25", got)
			}
		})
	}
}

// TestPeakEWMANewEndpoint checks that an endpoint with no estimate is tried at
// once but gets no second request before its first answers.
func TestPeakEWMANewEndpoint(t *testing.T) {
	clock := newFakeClock()
	stats := clock.stats()
	as := addrs(3)
	old := NewPeakEWMA(PeakEWMAConfig{Config: Config{Addresses: as, Stats: stats}})
	for range 1000 {
		clock.advance(time.Millisecond)
		_, done := old.Pick(0)
		done(10*time.Millisecond, false)
	}
	b := NewPeakEWMA(PeakEWMAConfig{Config: Config{Addresses: append(as, "10.0.0.99:8080"), Stats: stats}})
	var held []Done
	var newDone Done
	newPicks := 0
	for range 200 {
		i, done := b.Pick(0)
		if i == 3 {
			newPicks++
			newDone = done
			continue
		}
		held = append(held, done)
	}
	if newPicks != 1 {
		t.Fatalf("the new endpoint got %d of 200 picks while its first request was in flight, want exactly 1", newPicks)
	}
	newDone(10*time.Millisecond, false)
	for _, d := range held {
		d(10*time.Millisecond, false)
	}
	for range 400 {
		i, done := b.Pick(0)
		if i == 3 {
			newPicks++
		}
		done(10*time.Millisecond, false)
	}
	if newPicks < 50 {
		t.Errorf("the new endpoint got %d of 400 picks once it answered as fast as the others, want its share", newPicks)
	}
}

// TestEstimate checks the estimate's arithmetic: peak sensitivity, decay,
// blending, failures and staleness.
func TestEstimate(t *testing.T) {
	const tau = 10_000.0 // 10s in milliseconds
	ms := float64(time.Millisecond)
	tests := []struct {
		name  string
		steps func(e *endpoint) float64 // returns the estimate at the end
		want  float64
	}{
		{"no sample", func(e *endpoint) float64 { return e.estimate(0, tau) }, 0},
		{"first sample", func(e *endpoint) float64 {
			e.observe(10*ms, false, 0, tau)
			return e.estimate(0, tau)
		}, 10 * ms},
		{"higher sample replaces at once", func(e *endpoint) float64 {
			e.observe(10*ms, false, 0, tau)
			e.observe(100*ms, false, 1, tau)
			return e.estimate(1, tau)
		}, 100 * ms},
		{"decays to 1/e in one time constant", func(e *endpoint) float64 {
			e.observe(100*ms, false, 0, tau)
			return e.estimate(10_000, tau)
		}, 100 * ms / math.E},
		{"lower sample blends by its age", func(e *endpoint) float64 {
			e.observe(100*ms, false, 0, tau)
			e.observe(10*ms, false, 10_000, tau)
			return e.estimate(10_000, tau)
		}, 100*ms/math.E + 10*ms*(1-1/math.E)},
		{"failure counts double the estimate", func(e *endpoint) float64 {
			e.observe(10*ms, false, 0, tau)
			e.observe(1*ms, true, 0, tau)
			return e.estimate(0, tau)
		}, 20 * ms},
		{"failure counts double a slow latency", func(e *endpoint) float64 {
			e.observe(10*ms, false, 0, tau)
			e.observe(30*ms, true, 0, tau)
			return e.estimate(0, tau)
		}, 60 * ms},
		{"stale after five time constants", func(e *endpoint) float64 {
			e.observe(10*ms, false, 0, tau)
			return e.estimate(50_000, tau)
		}, 0},
		{"zero latency still counts as a sample", func(e *endpoint) float64 {
			e.observe(0, false, 0, tau)
			return e.estimate(0, tau)
		}, 1},
		{"a sample stamped later than now counts as new", func(e *endpoint) float64 {
			e.observe(10*ms, false, 500, tau)
			e.observe(20*ms, false, 400, tau)
			return e.estimate(500, tau)
		}, 20 * ms},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.steps(&endpoint{})
			if math.Abs(got-tc.want) > tc.want*1e-4+1e-9 {
				t.Errorf("estimate = %.0fns, want %.0fns", got, tc.want)
			}
		})
	}
}

// TestPeakEWMAPrefersLessLoaded checks the cost: at equal latency, the
// endpoint with fewer requests in flight wins.
func TestPeakEWMAPrefersLessLoaded(t *testing.T) {
	clock := newFakeClock()
	b := NewPeakEWMA(PeakEWMAConfig{Config: Config{Addresses: addrs(2), Stats: clock.stats()}})
	for range 10 {
		_, done := b.Pick(0)
		done(10*time.Millisecond, false)
	}
	busy, _ := b.Pick(0)
	for range 20 {
		i, done := b.Pick(0)
		if i == busy {
			t.Fatalf("picked endpoint %d with a request in flight over an equally fast idle one", i)
		}
		done(10*time.Millisecond, false)
	}
}
