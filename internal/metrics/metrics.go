// Package metrics holds the control plane's own Prometheus series: counters,
// gauges and fixed-bucket latency histograms updated with atomics, and a writer
// of the text exposition format. It is hand-written like the sidecar's telemetry
// (docs/adr/0002) so that the control plane needs no client_golang; there is no
// registry: each owner keeps its series in its own struct and writes them when
// scraped. Control-plane packages import it; the sidecar has its own.
package metrics

import (
	"fmt"
	"io"
	"math"
	"strconv"
	"sync/atomic"
	"time"
)

// LatencyBounds are the default upper bounds of a Histogram's buckets, from
// 100 µs to 10 s.
var LatencyBounds = []time.Duration{
	100 * time.Microsecond, 250 * time.Microsecond, 500 * time.Microsecond,
	time.Millisecond, 2500 * time.Microsecond, 5 * time.Millisecond,
	10 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond,
	100 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond,
	time.Second, 2500 * time.Millisecond, 5 * time.Second, 10 * time.Second,
}

// Histogram counts durations in fixed buckets. The zero value is not usable;
// call NewHistogram. Observe is safe for concurrent use and does not allocate.
type Histogram struct {
	bounds []time.Duration
	// counts per bucket, not cumulative; the last counts those above every bound.
	counts   []atomic.Uint64
	sumNanos atomic.Int64
}

// NewHistogram returns an empty histogram with the given ascending bucket
// bounds; nil means LatencyBounds.
func NewHistogram(bounds []time.Duration) *Histogram {
	if bounds == nil {
		bounds = LatencyBounds
	}
	return &Histogram{bounds: bounds, counts: make([]atomic.Uint64, len(bounds)+1)}
}

// Observe records one duration; a negative one is recorded as zero.
func (h *Histogram) Observe(d time.Duration) {
	if d < 0 {
		d = 0
	}
	i := 0
	for i < len(h.bounds) && d > h.bounds[i] {
		i++
	}
	h.counts[i].Add(1)
	h.sumNanos.Add(int64(d))
}

// Count returns the number of observations.
func (h *Histogram) Count() uint64 {
	var n uint64
	for i := range h.counts {
		n += h.counts[i].Load()
	}
	return n
}

// Writer writes families in the Prometheus text format (version 0.0.4). It
// remembers the first write error and writes nothing after it.
type Writer struct {
	w   io.Writer
	err error
}

// NewWriter returns a Writer to w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// Err returns the first write error.
func (w *Writer) Err() error { return w.err }

func (w *Writer) printf(format string, args ...any) {
	if w.err == nil {
		_, w.err = fmt.Fprintf(w.w, format, args...)
	}
}

func (w *Writer) header(name, help, typ string) {
	w.printf("# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
}

// Counter writes a counter family of one series without labels.
func (w *Writer) Counter(name, help string, v uint64) {
	w.header(name, help, "counter")
	w.printf("%s %d\n", name, v)
}

// Gauge writes a gauge family of one series without labels.
func (w *Writer) Gauge(name, help string, v float64) {
	w.header(name, help, "gauge")
	w.printf("%s %s\n", name, formatFloat(v))
}

// Histogram writes a histogram family of one series without labels, in seconds.
func (w *Writer) Histogram(name, help string, h *Histogram) {
	w.header(name, help, "histogram")
	var cum uint64
	for i, b := range h.bounds {
		cum += h.counts[i].Load()
		w.printf("%s_bucket{le=%q} %d\n", name, formatFloat(b.Seconds()), cum)
	}
	cum += h.counts[len(h.bounds)].Load()
	w.printf("%s_bucket{le=\"+Inf\"} %d\n", name, cum)
	w.printf("%s_sum %s\n", name, formatFloat(time.Duration(h.sumNanos.Load()).Seconds()))
	w.printf("%s_count %d\n", name, cum)
}

func formatFloat(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}
