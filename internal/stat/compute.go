package stat

import (
	"cmp"
	"encoding/json"
	"math"
	"slices"
	"sort"
	"strings"
	"time"
)

// WorkloadRef names the workload that a sidecar serves. Sidecars that share
// a WorkloadRef (the replicas of one workload) are reported as one row.
type WorkloadRef struct {
	Namespace string
	Name      string
}

// Row holds the golden metrics of one workload over a window: the requests
// its sidecars served (inbound), as `linkerd viz stat` reports them.
//
// A request succeeded unless the proxy failed it itself (its reason label is
// set), its response code is 5xx, or its gRPC status is one whose HTTP
// equivalent is a server error (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED,
// INTERNAL, UNAVAILABLE, DATA_LOSS). 4xx responses are successes: the server
// worked, the client asked for something it could not have.
type Row struct {
	Namespace string
	Workload  string
	// Requests is the number of requests served in the window.
	Requests float64
	// RPS is Requests divided by the window; 0 when the window is not
	// positive.
	RPS float64
	// SuccessRate is the share of successful requests in the window, 0..1,
	// or -1 when the window has no requests.
	SuccessRate float64
	// P50 and P99 are latency quantiles over the window, interpolated
	// linearly inside histogram buckets as Prometheus' histogram_quantile
	// does; negative (-1 ms) when the window has no requests.
	P50, P99 time.Duration
	// TotalRequests and TotalSuccess are the cumulative counters at the end
	// of the window, summed over the workload's sidecars.
	TotalRequests float64
	TotalSuccess  float64
}

// rowJSON is Row as written in JSON, latencies in milliseconds.
type rowJSON struct {
	Namespace     string  `json:"namespace"`
	Workload      string  `json:"workload"`
	Requests      float64 `json:"requests"`
	RPS           float64 `json:"rps"`
	SuccessRate   float64 `json:"success_rate"`
	P50           float64 `json:"p50_ms"`
	P99           float64 `json:"p99_ms"`
	TotalRequests float64 `json:"total_requests"`
	TotalSuccess  float64 `json:"total_success"`
}

// MarshalJSON writes r with snake_case names and latencies as p50_ms and
// p99_ms, in milliseconds (-1 when unknown).
func (r Row) MarshalJSON() ([]byte, error) {
	return json.Marshal(rowJSON{
		Namespace: r.Namespace, Workload: r.Workload, Requests: r.Requests, RPS: r.RPS,
		SuccessRate: r.SuccessRate, P50: millis(r.P50), P99: millis(r.P99),
		TotalRequests: r.TotalRequests, TotalSuccess: r.TotalSuccess,
	})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (r *Row) UnmarshalJSON(b []byte) error {
	var j rowJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*r = Row{
		Namespace: j.Namespace, Workload: j.Workload, Requests: j.Requests, RPS: j.RPS,
		SuccessRate: j.SuccessRate, P50: fromMillis(j.P50), P99: fromMillis(j.P99),
		TotalRequests: j.TotalRequests, TotalSuccess: j.TotalSuccess,
	}
	return nil
}

func millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func fromMillis(ms float64) time.Duration {
	return time.Duration(math.Round(ms * float64(time.Millisecond)))
}

// unknownLatency marks a quantile of a window with no requests.
const unknownLatency = -time.Millisecond

// Compute returns one row per workload that has a sample in after, sorted by
// namespace and name. before and after are scrapes of each sidecar, keyed by
// workload id, taken window apart; who names the workload of each id (an id
// missing from who is reported under its id, with no namespace).
//
// Only inbound series count. Each series is compared with the same series in
// before: one missing there (a new sidecar or label set) starts from zero,
// and one that went down (the sidecar restarted) counts its after value
// whole.
func Compute(before, after map[string]*Sample, window time.Duration, who map[string]WorkloadRef) []Row {
	type acc struct {
		ref                         WorkloadRef
		requests, success           float64
		totalRequests, totalSuccess float64
		buckets                     map[float64]float64 // upper bound → cumulative delta
	}
	byRef := make(map[WorkloadRef]*acc)
	for id, a := range after {
		if a == nil {
			continue
		}
		ref, ok := who[id]
		if !ok {
			ref = WorkloadRef{Name: id}
		}
		w := byRef[ref]
		if w == nil {
			w = &acc{ref: ref, buckets: make(map[float64]float64)}
			byRef[ref] = w
		}
		b := before[id]

		baseline := make(map[string]float64)
		if b != nil {
			for _, c := range b.Requests {
				if inbound(c.Labels) {
					baseline[seriesKey(c.Labels)] = c.Value
				}
			}
		}
		for _, c := range a.Requests {
			if !inbound(c.Labels) {
				continue
			}
			d := c.Value
			if prev, ok := baseline[seriesKey(c.Labels)]; ok && prev <= c.Value {
				d = c.Value - prev
			}
			w.requests += d
			w.totalRequests += c.Value
			if succeeded(c.Labels) {
				w.success += d
				w.totalSuccess += c.Value
			}
		}

		prevHist := make(map[string]*Histogram)
		if b != nil {
			for i := range b.Durations {
				if inbound(b.Durations[i].Labels) {
					prevHist[seriesKey(b.Durations[i].Labels)] = &b.Durations[i]
				}
			}
		}
		for i := range a.Durations {
			h := &a.Durations[i]
			if !inbound(h.Labels) {
				continue
			}
			for ub, n := range histogramDelta(prevHist[seriesKey(h.Labels)], h) {
				w.buckets[ub] += n
			}
		}
	}

	rows := make([]Row, 0, len(byRef))
	for _, w := range byRef {
		r := Row{
			Namespace:     w.ref.Namespace,
			Workload:      w.ref.Name,
			Requests:      w.requests,
			SuccessRate:   -1,
			P50:           unknownLatency,
			P99:           unknownLatency,
			TotalRequests: w.totalRequests,
			TotalSuccess:  w.totalSuccess,
		}
		if window > 0 {
			r.RPS = w.requests / window.Seconds()
		}
		if w.requests > 0 {
			r.SuccessRate = w.success / w.requests
		}
		buckets := make([]Bucket, 0, len(w.buckets))
		for ub, n := range w.buckets {
			buckets = append(buckets, Bucket{UpperBound: ub, Count: n})
		}
		slices.SortFunc(buckets, func(a, b Bucket) int { return cmp.Compare(a.UpperBound, b.UpperBound) })
		r.P50 = latency(quantile(0.5, buckets))
		r.P99 = latency(quantile(0.99, buckets))
		rows = append(rows, r)
	}
	slices.SortFunc(rows, func(a, b Row) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Workload, b.Workload))
	})
	return rows
}

func inbound(labels map[string]string) bool { return labels["direction"] == "inbound" }

// grpcServerError reports whether a gRPC status, by number or by name, is
// one whose HTTP equivalent is a 5xx.
func grpcServerError(status string) bool {
	switch strings.ToUpper(status) {
	case "2", "UNKNOWN", "4", "DEADLINE_EXCEEDED", "12", "UNIMPLEMENTED",
		"13", "INTERNAL", "14", "UNAVAILABLE", "15", "DATA_LOSS":
		return true
	}
	return false
}

// succeeded applies the success rule documented on Row.
func succeeded(labels map[string]string) bool {
	if labels["reason"] != "" {
		return false
	}
	if code := labels["response_code"]; len(code) == 3 && code[0] == '5' {
		return false
	}
	return !grpcServerError(labels["grpc_status"])
}

// seriesKey identifies a series by its full label set.
func seriesKey(labels map[string]string) string {
	names := make([]string, 0, len(labels))
	for n := range labels {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, n := range names {
		b.WriteString(n)
		b.WriteByte(0)
		b.WriteString(labels[n])
		b.WriteByte(0)
	}
	return b.String()
}

// histogramDelta returns the cumulative bucket counts of after minus those of
// before, by upper bound. With no before, or when any count went down (the
// sidecar restarted), it returns after's counts whole.
func histogramDelta(before, after *Histogram) map[float64]float64 {
	out := make(map[float64]float64, len(after.Buckets))
	for _, b := range after.Buckets {
		out[b.UpperBound] = b.Count
	}
	if before == nil || before.Count > after.Count {
		return out
	}
	prev := make(map[float64]float64, len(before.Buckets))
	for _, b := range before.Buckets {
		prev[b.UpperBound] = b.Count
	}
	for ub, n := range out {
		if prev[ub] > n {
			return out // reset: keep after whole
		}
	}
	for ub := range out {
		out[ub] -= prev[ub]
	}
	return out
}

// latency turns a quantile in seconds into a duration, unknownLatency when
// there is none.
func latency(seconds float64) time.Duration {
	if math.IsNaN(seconds) || math.IsInf(seconds, 0) {
		return unknownLatency
	}
	return time.Duration(math.Round(seconds * float64(time.Second)))
}

// quantile estimates the q-quantile of observations in cumulative buckets
// sorted by upper bound, as Prometheus' histogram_quantile does: it finds
// the bucket holding the rank q×count and interpolates linearly between the
// bucket's bounds, the lowest bucket starting at zero. A rank that falls in
// the +Inf bucket yields the highest finite bound. It returns NaN when there
// are no observations, fewer than two buckets or no +Inf bucket.
func quantile(q float64, buckets []Bucket) float64 {
	if len(buckets) < 2 || !math.IsInf(buckets[len(buckets)-1].UpperBound, 1) {
		return math.NaN()
	}
	// Counts from different series may disagree slightly; make them
	// monotonic as Prometheus does.
	counts := make([]float64, len(buckets))
	maxSoFar := 0.0
	for i, b := range buckets {
		maxSoFar = max(maxSoFar, b.Count)
		counts[i] = maxSoFar
	}
	total := counts[len(counts)-1]
	if total == 0 {
		return math.NaN()
	}
	rank := q * total
	i := sort.Search(len(counts)-1, func(i int) bool { return counts[i] >= rank })
	if i == len(counts)-1 {
		return buckets[len(buckets)-2].UpperBound
	}
	if i == 0 && buckets[0].UpperBound <= 0 {
		return buckets[0].UpperBound
	}
	start, end, count := 0.0, buckets[i].UpperBound, counts[i]
	if i > 0 {
		start = buckets[i-1].UpperBound
		count -= counts[i-1]
		rank -= counts[i-1]
	}
	return start + (end-start)*(rank/count)
}
