package balance

import (
	"testing"
	"time"
)

// BenchmarkPick measures one Pick and its Done over ten endpoints, from one
// goroutine and from GOMAXPROCS goroutines.
func BenchmarkPick(b *testing.B) {
	for name, bal := range all(addrs(10), nil) {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			k := uint64(0)
			for b.Loop() {
				k++
				_, done := bal.Pick(k)
				done(time.Millisecond, false)
			}
		})
		b.Run(name+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				k := uint64(0)
				for pb.Next() {
					k++
					_, done := bal.Pick(k)
					done(time.Millisecond, false)
				}
			})
		})
	}
}

func BenchmarkRingHashPick1000(b *testing.B) {
	r := ringOf(addrs(1000))
	b.ReportAllocs()
	k := uint64(0)
	for b.Loop() {
		k++
		r.Pick(k)
	}
}
