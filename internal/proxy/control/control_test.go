package control

import (
	"context"
	"testing"
	"time"
)

func TestBackoffGrowsCappedJittered(t *testing.T) {
	const minD, maxD = 100 * time.Millisecond, 2 * time.Second
	c := New(Config{MinBackoff: minD, MaxBackoff: maxD})
	// The base delay doubles from the minimum up to the maximum; each wait is
	// the base with ±50% jitter.
	bases := []time.Duration{100, 200, 400, 800, 1600, 2000, 2000, 2000}
	for run := range 200 {
		b := c.backoff()
		for i, base := range bases {
			base *= time.Millisecond
			d := b.next()
			if d < base/2 || d >= base*3/2 {
				t.Fatalf("run %d, attempt %d: delay %v, want in [%v, %v)", run, i, d, base/2, base*3/2)
			}
		}
	}
}

func TestBackoffJitterSpreads(t *testing.T) {
	c := New(Config{MinBackoff: time.Second, MaxBackoff: time.Second})
	b := c.backoff()
	var lo, hi int
	seen := map[time.Duration]bool{}
	for range 1000 {
		d := b.next()
		seen[d] = true
		if d < time.Second {
			lo++
		} else {
			hi++
		}
	}
	// 1000 draws from [0.5s, 1.5s): all alike, or all on one side of the
	// base, would mean no jitter, and reconnecting sidecars would stampede.
	if len(seen) < 900 || lo < 400 || hi < 400 {
		t.Errorf("1000 delays: %d distinct, %d below the base, %d above; want them spread over [0.5s, 1.5s)", len(seen), lo, hi)
	}
}

func TestBackoffReset(t *testing.T) {
	c := New(Config{MinBackoff: 10 * time.Millisecond, MaxBackoff: time.Second})
	b := c.backoff()
	for range 10 {
		b.next()
	}
	b.reset()
	if d := b.next(); d < 5*time.Millisecond || d >= 15*time.Millisecond {
		t.Errorf("delay after reset = %v, want in [5ms, 15ms)", d)
	}
}

func TestBackoffDefaults(t *testing.T) {
	c := New(Config{})
	b := c.backoff()
	if b.min != 100*time.Millisecond || b.max != 10*time.Second {
		t.Errorf("default backoff %v..%v, want 100ms..10s", b.min, b.max)
	}
	for range 20 {
		b.next()
	}
	if d := b.next(); d < 5*time.Second || d >= 15*time.Second {
		t.Errorf("delay at the cap = %v, want in [5s, 15s)", d)
	}
}

func TestBackoffWaitEndsWithContext(t *testing.T) {
	c := New(Config{MinBackoff: time.Hour, MaxBackoff: time.Hour})
	b := c.backoff()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	if b.wait(ctx) {
		t.Error("wait with an ended context = true, want false")
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("wait with an ended context took %v", d)
	}

	c = New(Config{MinBackoff: time.Millisecond, MaxBackoff: time.Millisecond})
	if !c.backoff().wait(context.Background()) {
		t.Error("wait of about 1ms = false, want true")
	}
}
