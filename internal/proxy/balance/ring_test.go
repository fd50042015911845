package balance

import (
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"testing"
)

func ringOf(as []string) *RingHash {
	return NewRingHash(RingHashConfig{Config: Config{Addresses: as}})
}

// owners maps each key to the address that owns it.
func owners(as []string, keys []uint64) []string {
	r := ringOf(as)
	out := make([]string, len(keys))
	for j, k := range keys {
		i, _ := r.Pick(k)
		out[j] = as[i]
	}
	return out
}

func randomKeys(n int) []uint64 {
	rng := rand.New(rand.NewPCG(1, 2))
	keys := make([]uint64, n)
	for i := range keys {
		keys[i] = rng.Uint64()
	}
	return keys
}

func TestRingHashSameKeySameEndpoint(t *testing.T) {
	r := ringOf(addrs(10))
	for _, k := range randomKeys(1000) {
		first, _ := r.Pick(k)
		for range 3 {
			if i, _ := r.Pick(k); i != first {
				t.Fatalf("key %d went to %d, then to %d", k, first, i)
			}
		}
	}
}

// TestRingHashOrderIndependent checks that a key goes to the same address
// whatever the order of the addresses, as every sidecar must agree.
func TestRingHashOrderIndependent(t *testing.T) {
	as := addrs(10)
	rev := slices.Clone(as)
	slices.Reverse(rev)
	keys := randomKeys(10000)
	a, b := owners(as, keys), owners(rev, keys)
	for j := range keys {
		if a[j] != b[j] {
			t.Fatalf("key %d goes to %s, or to %s when the addresses are reversed", keys[j], a[j], b[j])
		}
	}
}

// TestRingHashDisruption checks that adding an endpoint to ten moves about
// 1/11 of the keys, all to the new one, and removing one moves only its keys.
func TestRingHashDisruption(t *testing.T) {
	keys := randomKeys(100000)
	ten := addrs(10)
	before := owners(ten, keys)

	t.Run("add one to ten", func(t *testing.T) {
		eleven := append(slices.Clone(ten), "10.0.1.1:8080")
		after := owners(eleven, keys)
		moved := 0
		for j := range keys {
			if before[j] == after[j] {
				continue
			}
			moved++
			if after[j] != "10.0.1.1:8080" {
				t.Fatalf("key %d moved from %s to %s, not to the new endpoint", keys[j], before[j], after[j])
			}
		}
		got := float64(moved) / float64(len(keys))
		t.Logf("moved %.4f of keys, 1/11 is %.4f", got, 1.0/11)
		if got < 0.06 || got > 0.125 {
			t.Errorf("adding one endpoint to ten moved %.3f of keys, want about 1/11 (0.091)", got)
		}
	})
	t.Run("remove one of ten", func(t *testing.T) {
		removed := ten[3]
		nine := slices.Delete(slices.Clone(ten), 3, 4)
		after := owners(nine, keys)
		moved := 0
		for j := range keys {
			if before[j] == after[j] {
				continue
			}
			moved++
			if before[j] != removed {
				t.Fatalf("key %d moved from %s, which is still there, to %s", keys[j], before[j], after[j])
			}
		}
		got := float64(moved) / float64(len(keys))
		if got < 0.05 || got > 0.15 {
			t.Errorf("removing one endpoint of ten moved %.3f of keys, want about 1/10", got)
		}
	})
}

// TestRingHashSpread checks that keys spread over the endpoints, also when
// the keys themselves are small consecutive numbers.
func TestRingHashSpread(t *testing.T) {
	consecutive := make([]uint64, 100000)
	for i := range consecutive {
		consecutive[i] = uint64(i)
	}
	for _, tc := range []struct {
		name string
		keys []uint64
	}{
		{"random keys", randomKeys(100000)},
		{"consecutive keys", consecutive},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := ringOf(addrs(10))
			counts := make([]int, 10)
			for _, k := range tc.keys {
				i, _ := r.Pick(k)
				counts[i]++
			}
			t.Logf("keys per endpoint: %v", counts)
			mean := len(tc.keys) / 10
			for i, c := range counts {
				if c < mean*3/4 || c > mean*5/4 {
					t.Errorf("endpoint %d got %d keys, want within 25%% of %d", i, c, mean)
				}
			}
		})
	}
}

func TestRingHashVirtualNodes(t *testing.T) {
	for _, tc := range []struct{ v, want int }{{0, 10 * 128}, {-1, 10 * 128}, {16, 160}} {
		r := NewRingHash(RingHashConfig{Config: Config{Addresses: addrs(10)}, VirtualNodes: tc.v})
		if got := len(r.points); got != tc.want {
			t.Errorf("VirtualNodes %d: ring has %d points, want %d", tc.v, got, tc.want)
		}
	}
}

// TestRingHashSearch checks the ring search against sort.Search, on and
// around every point and at both ends.
func TestRingHashSearch(t *testing.T) {
	for _, n := range []int{1, 2, 3, 10, 33} {
		r := NewRingHash(RingHashConfig{Config: Config{Addresses: addrs(n)}, VirtualNodes: 7})
		want := func(h uint64) int {
			i := sort.Search(len(r.points), func(i int) bool { return r.points[i] >= h })
			if i == len(r.points) {
				i = 0
			}
			return int(r.owners[i])
		}
		hs := []uint64{0, 1, math.MaxUint64}
		for _, p := range r.points {
			hs = append(hs, p-1, p, p+1)
		}
		for _, h := range hs {
			if got, want := r.at(h), want(h); got != want {
				t.Fatalf("%d endpoints: owner of %#x = %d, want %d", n, h, got, want)
			}
		}
	}
}
