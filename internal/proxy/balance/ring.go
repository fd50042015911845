package balance

import (
	"cmp"
	"math/bits"
	"slices"
)

// RingHashConfig configures a RingHash balancer.
type RingHashConfig struct {
	Config
	// VirtualNodes is the number of points each endpoint has on the ring;
	// more spread keys more evenly (about 1/sqrt(VirtualNodes) deviation per
	// endpoint) at 12 bytes a point. Default 128.
	VirtualNodes int
}

// RingHash maps keys to endpoints by consistent hashing: each endpoint's
// address places VirtualNodes points on a ring, and a key goes to the first
// point at or after it. A key goes to the same address whatever the order of
// the addresses, in every sidecar; adding or removing one of n endpoints moves
// only about 1/n of the keys, all to or from that endpoint.
type RingHash struct {
	points []uint64 // sorted
	owners []int32  // owners[i] is the index of the endpoint at points[i]
}

// NewRingHash returns a ring over c.Addresses.
func NewRingHash(c RingHashConfig) *RingHash {
	v := c.VirtualNodes
	if v <= 0 {
		v = 128
	}
	type point struct {
		hash  uint64
		owner int32
	}
	ps := make([]point, 0, v*len(c.Addresses))
	for i, a := range c.Addresses {
		h := fnv1a(a)
		for j := range v {
			ps = append(ps, point{mix(h + uint64(j+1)*0x9e3779b97f4a7c15), int32(i)})
		}
	}
	// Ties (equal hashes, or a listed address twice) are broken by address,
	// then index, so the ring does not depend on the order of the addresses.
	slices.SortFunc(ps, func(x, y point) int {
		if d := cmp.Compare(x.hash, y.hash); d != 0 {
			return d
		}
		if d := cmp.Compare(c.Addresses[x.owner], c.Addresses[y.owner]); d != 0 {
			return d
		}
		return cmp.Compare(x.owner, y.owner)
	})
	r := &RingHash{points: make([]uint64, len(ps)), owners: make([]int32, len(ps))}
	for i, p := range ps {
		r.points[i], r.owners[i] = p.hash, p.owner
	}
	return r
}

// Pick returns the endpoint that owns key. Keys need not be well spread (a
// user number will do): Pick mixes them first.
func (r *RingHash) Pick(key uint64) (int, Done) {
	if len(r.points) == 0 {
		return -1, noop
	}
	return r.at(mix(key)), noop
}

// at returns the owner of the first point at or after h, around the ring.
func (r *RingHash) at(h uint64) int {
	// Searched without branches to mispredict: twice as fast as sort.Search.
	ps := r.points
	i, n := 0, len(ps)
	for n > 1 {
		half := n / 2
		_, less := bits.Sub64(ps[i+half-1], h, 0) // 1 when the point is below h
		i += half * int(less)
		n -= half
	}
	if ps[i] < h {
		i++
	}
	if i == len(ps) {
		i = 0 // past the last point: around the ring to the first
	}
	return int(r.owners[i])
}

// fnv1a is the 64-bit FNV-1a hash: stable across processes and versions, so
// every sidecar builds the same ring.
func fnv1a(s string) uint64 {
	h := uint64(0xcbf29ce484222325)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 0x100000001b3
	}
	return h
}

// mix is the SplitMix64 finalizer: every input bit affects every output bit.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
