package stat

import (
	"cmp"
	"fmt"
	"io"
	"math"
	"slices"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// The metric families a sidecar serves that stat reads.
const (
	requestsMetric = "trellis_requests_total"
	durationMetric = "trellis_request_duration_seconds"
)

// Sample is what one sidecar's /metrics said at one moment: its request
// counters and its request duration histograms, one entry per label set.
type Sample struct {
	Requests  []Counter
	Durations []Histogram
}

// Counter is one series of trellis_requests_total.
type Counter struct {
	Labels map[string]string
	Value  float64
}

// Histogram is one series of trellis_request_duration_seconds.
type Histogram struct {
	Labels map[string]string
	Count  float64
	Sum    float64 // seconds
	// Buckets are cumulative, sorted by upper bound, and end with the +Inf
	// bucket.
	Buckets []Bucket
}

// Bucket is one cumulative histogram bucket.
type Bucket struct {
	UpperBound float64 // seconds
	Count      float64 // observations at or below UpperBound
}

// Parse reads the Prometheus text exposition of one sidecar's /metrics and
// keeps its request counters and duration histograms. Other families are
// ignored; so are samples whose value is negative, NaN or infinite, which no
// sidecar writes.
func Parse(r io.Reader) (*Sample, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		return nil, fmt.Errorf("parse sidecar metrics: %w", err)
	}
	s := &Sample{}
	if f := fams[requestsMetric]; f != nil {
		if t := f.GetType(); t != dto.MetricType_COUNTER && t != dto.MetricType_UNTYPED {
			return nil, fmt.Errorf("parse sidecar metrics: %s is a %s, want a counter; check that the address serves a Trellis sidecar's /metrics", requestsMetric, t)
		}
		for _, m := range f.GetMetric() {
			v := m.GetCounter().GetValue()
			if f.GetType() == dto.MetricType_UNTYPED {
				v = m.GetUntyped().GetValue()
			}
			if !valid(v) {
				continue
			}
			s.Requests = append(s.Requests, Counter{Labels: labels(m), Value: v})
		}
	}
	if f := fams[durationMetric]; f != nil {
		if t := f.GetType(); t != dto.MetricType_HISTOGRAM {
			return nil, fmt.Errorf("parse sidecar metrics: %s is a %s, want a histogram; check that the address serves a Trellis sidecar's /metrics", durationMetric, t)
		}
		for _, m := range f.GetMetric() {
			if h, ok := histogram(m); ok {
				s.Durations = append(s.Durations, h)
			}
		}
	}
	return s, nil
}

func valid(v float64) bool { return v >= 0 && !math.IsInf(v, 1) }

func labels(m *dto.Metric) map[string]string {
	out := make(map[string]string, len(m.GetLabel()))
	for _, lp := range m.GetLabel() {
		out[lp.GetName()] = lp.GetValue()
	}
	return out
}

func histogram(m *dto.Metric) (Histogram, bool) {
	h := m.GetHistogram()
	out := Histogram{Labels: labels(m), Count: float64(h.GetSampleCount()), Sum: h.GetSampleSum()}
	if !valid(out.Sum) {
		out.Sum = 0
	}
	for _, b := range h.GetBucket() {
		ub := b.GetUpperBound()
		if math.IsNaN(ub) {
			return Histogram{}, false
		}
		out.Buckets = append(out.Buckets, Bucket{UpperBound: ub, Count: float64(b.GetCumulativeCount())})
	}
	slices.SortFunc(out.Buckets, func(a, b Bucket) int { return cmp.Compare(a.UpperBound, b.UpperBound) })
	if n := len(out.Buckets); n == 0 || !math.IsInf(out.Buckets[n-1].UpperBound, 1) {
		out.Buckets = append(out.Buckets, Bucket{UpperBound: math.Inf(1), Count: out.Count})
	}
	return out, true
}
