package metrics_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/trellis-mesh/trellis/internal/metrics"
)

// TestExposition writes one family of each kind and reads it back with the
// reference parser.
func TestExposition(t *testing.T) {
	h := metrics.NewHistogram([]time.Duration{time.Millisecond, 10 * time.Millisecond})
	for _, d := range []time.Duration{-time.Second, 500 * time.Microsecond, time.Millisecond, 5 * time.Millisecond, time.Second} {
		h.Observe(d)
	}
	if got := h.Count(); got != 5 {
		t.Errorf("Count() = %d, want 5", got)
	}
	var b bytes.Buffer
	w := metrics.NewWriter(&b)
	w.Counter("x_total", "Things.", 7)
	w.Gauge("x_open", "Open things.", 3)
	w.Histogram("x_seconds", "Time of things.", h)
	if err := w.Err(); err != nil {
		t.Fatal(err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(b.String()))
	if err != nil {
		t.Fatalf("the reference parser refuses the output: %v\n%s", err, b.String())
	}
	if got := fams["x_total"].GetMetric()[0].GetCounter().GetValue(); got != 7 {
		t.Errorf("x_total = %v, want 7", got)
	}
	if got := fams["x_open"].GetMetric()[0].GetGauge().GetValue(); got != 3 {
		t.Errorf("x_open = %v, want 3", got)
	}
	hist := fams["x_seconds"].GetMetric()[0].GetHistogram()
	if got := hist.GetSampleCount(); got != 5 {
		t.Errorf("x_seconds count = %d, want 5", got)
	}
	// Cumulative: ≤1ms holds -1s (as 0), 0.5ms and 1ms; ≤10ms adds 5ms;
	// +Inf adds 1s.
	wantCum := []uint64{3, 4, 5}
	if got := len(hist.GetBucket()); got != len(wantCum) {
		t.Fatalf("%d buckets, want %d", got, len(wantCum))
	}
	for i, bk := range hist.GetBucket() {
		if bk.GetCumulativeCount() != wantCum[i] {
			t.Errorf("bucket le=%v: %d, want %d", bk.GetUpperBound(), bk.GetCumulativeCount(), wantCum[i])
		}
	}
	if got, want := hist.GetSampleSum(), 1.0065; got < want-1e-9 || got > want+1e-9 {
		t.Errorf("x_seconds sum = %v, want %v", got, want)
	}
}

type failing struct{ n int }

func (f *failing) Write(p []byte) (int, error) {
	f.n++
	return 0, errors.New("closed")
}

func TestWriterStopsAtFirstError(t *testing.T) {
	f := &failing{}
	w := metrics.NewWriter(f)
	w.Counter("a_total", "A.", 1)
	w.Gauge("b", "B.", 1)
	if w.Err() == nil {
		t.Fatal("Err() = nil after a failed write")
	}
	if f.n != 1 {
		t.Errorf("%d writes attempted, want 1 (none after the first error)", f.n)
	}
}

func BenchmarkObserve(b *testing.B) {
	h := metrics.NewHistogram(nil)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		h.Observe(time.Duration(i) * time.Microsecond)
	}
}
