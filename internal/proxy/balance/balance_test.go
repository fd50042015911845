package balance

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func addrs(n int) []string {
	as := make([]string, n)
	for i := range as {
		as[i] = fmt.Sprintf("10.0.0.%d:8080", i+1)
	}
	return as
}

// all builds each balancer over the addresses, sharing stats where they keep any.
func all(as []string, stats *Stats) map[string]Balancer {
	c := Config{Addresses: as, Stats: stats}
	return map[string]Balancer{
		"round robin":   NewRoundRobin(c),
		"least request": NewLeastRequest(c),
		"peak EWMA":     NewPeakEWMA(PeakEWMAConfig{Config: c}),
		"ring hash":     NewRingHash(RingHashConfig{Config: c}),
	}
}

func TestNoEndpoints(t *testing.T) {
	for name, b := range all(nil, nil) {
		t.Run(name, func(t *testing.T) {
			i, done := b.Pick(42)
			if i != -1 {
				t.Errorf("Pick with no endpoints = %d, want -1", i)
			}
			if done == nil {
				t.Fatal("Pick returned a nil Done")
			}
			done(time.Millisecond, false)
		})
	}
}

func TestOneEndpoint(t *testing.T) {
	for name, b := range all(addrs(1), nil) {
		t.Run(name, func(t *testing.T) {
			for k := range uint64(100) {
				i, done := b.Pick(k)
				if i != 0 {
					t.Fatalf("Pick(%d) with one endpoint = %d, want 0", k, i)
				}
				done(time.Millisecond, k%7 == 0)
			}
		})
	}
}

func TestRoundRobin(t *testing.T) {
	b := NewRoundRobin(Config{Addresses: addrs(5)})
	got := make([]int, 5)
	first, _ := b.Pick(0)
	got[first]++
	for k := 1; k < 5*100; k++ {
		i, done := b.Pick(0)
		if want := (first + k) % 5; i != want {
			t.Fatalf("pick %d = %d, want %d (in turn after %d)", k, i, want, first)
		}
		done(0, false)
		got[i]++
	}
	if diff := cmp.Diff([]int{100, 100, 100, 100, 100}, got); diff != "" {
		t.Errorf("picks per endpoint (-want +got):\n%s", diff)
	}
}

// TestRoundRobinStart checks that balancers for the same config do not all
// start on the same endpoint.
func TestRoundRobinStart(t *testing.T) {
	starts := map[int]bool{}
	for range 200 {
		i, _ := NewRoundRobin(Config{Addresses: addrs(4)}).Pick(0)
		starts[i] = true
	}
	if len(starts) != 4 {
		t.Errorf("200 new balancers started on endpoints %v, want all 4", starts)
	}
}

func TestLeastRequestAvoidsBusy(t *testing.T) {
	t.Run("two endpoints", func(t *testing.T) {
		b := NewLeastRequest(Config{Addresses: addrs(2)})
		first, done := b.Pick(0)
		for range 10 {
			i, d := b.Pick(0)
			if i == first {
				t.Fatalf("picked endpoint %d with a request in flight over the idle one", i)
			}
			d(0, false)
		}
		done(0, false)
	})
	t.Run("one endpoint never answers", func(t *testing.T) {
		// Endpoint picks whose Done is never called keep it busy: P2C picks
		// it only while it has no more in flight than the one it is
		// compared with, which answers at once.
		b := NewLeastRequest(Config{Addresses: addrs(5)})
		stuck := 0
		for range 10000 {
			i, done := b.Pick(0)
			if i == 2 {
				stuck++
				continue
			}
			done(0, false)
		}
		if stuck != 1 {
			t.Errorf("the endpoint that never answers got %d of 10000 picks, want 1", stuck)
		}
	})
}

// TestStatsCarryOver checks that in-flight counts survive a new config,
// whatever the order of its addresses, and that addresses a config drops are
// forgotten.
func TestStatsCarryOver(t *testing.T) {
	stats := NewStats(StatsConfig{})
	old := NewLeastRequest(Config{Addresses: []string{"a:1", "b:1"}, Stats: stats})
	i, done := old.Pick(0)
	busy := []string{"a:1", "b:1"}[i]
	idle := []string{"b:1", "a:1"}[i]

	next := NewLeastRequest(Config{Addresses: []string{idle, busy, "c:1"}, Stats: stats})
	if got := stats.byAddr[busy].inflight.Load(); got != 1 {
		t.Fatalf("in flight on %s after the new config = %d, want 1", busy, got)
	}
	for range 100 {
		j, d := next.Pick(0)
		if j == 1 {
			t.Fatalf("the new balancer picked %s, which has a request in flight from the old one", busy)
		}
		d(0, false)
	}
	done(0, false) // the old balancer's request ends
	if got := stats.byAddr[busy].inflight.Load(); got != 0 {
		t.Errorf("in flight on %s after its request ended = %d, want 0", busy, got)
	}

	NewPeakEWMA(PeakEWMAConfig{Config: Config{Addresses: []string{"c:1"}, Stats: stats}})
	var kept []string
	for a := range stats.byAddr {
		kept = append(kept, a)
	}
	if diff := cmp.Diff([]string{"c:1"}, kept); diff != "" {
		t.Errorf("addresses kept after a config with only c:1 (-want +got):\n%s", diff)
	}
}

func TestDuplicateAddresses(t *testing.T) {
	stats := NewStats(StatsConfig{})
	eps := stats.endpoints([]string{"a:1", "a:1", "b:1"})
	if eps[0] != eps[1] || eps[0] == eps[2] {
		t.Errorf("a listed twice should share its state, and not with b")
	}
}

// TestConcurrent hammers every balancer from many goroutines (run with -race)
// and checks that in-flight counts return to zero.
func TestConcurrent(t *testing.T) {
	stats := NewStats(StatsConfig{})
	for name, b := range all(addrs(10), stats) {
		t.Run(name, func(t *testing.T) {
			var wg sync.WaitGroup
			for g := range 8 {
				wg.Go(func() {
					for k := range 2000 {
						i, done := b.Pick(uint64(g*10000 + k))
						if i < 0 || i >= 10 {
							t.Errorf("Pick = %d, want an index below 10", i)
							return
						}
						done(time.Duration(k%50)*time.Millisecond, k%13 == 0)
					}
				})
			}
			wg.Wait()
			for a, e := range stats.byAddr {
				if n := e.inflight.Load(); n != 0 {
					t.Errorf("%s has %d in flight after every request ended, want 0", a, n)
				}
			}
		})
	}
}

// TestPickAllocs checks that picking and reporting allocate nothing.
func TestPickAllocs(t *testing.T) {
	for name, b := range all(addrs(10), nil) {
		t.Run(name, func(t *testing.T) {
			k := uint64(0)
			allocs := testing.AllocsPerRun(1000, func() {
				k++
				_, done := b.Pick(k)
				done(3*time.Millisecond, k%5 == 0)
			})
			if allocs != 0 {
				t.Errorf("Pick and Done allocate %v times, want 0", allocs)
			}
		})
	}
}
