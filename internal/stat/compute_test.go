package stat

import (
	"bytes"
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/trellis-mesh/trellis/internal/proxy/telemetry"
)

func TestQuantile(t *testing.T) {
	inf := math.Inf(1)
	tests := []struct {
		name    string
		q       float64
		buckets []Bucket
		want    float64 // NaN for none
	}{
		{
			// rank 20 lies in (0.1, 0.2], which holds 20 observations from
			// 10 on: 0.1 + 0.1×(20-10)/20.
			name:    "median inside a middle bucket",
			q:       0.5,
			buckets: []Bucket{{0.1, 10}, {0.2, 30}, {0.5, 40}, {inf, 40}},
			want:    0.15,
		},
		{
			// rank 39.6 lies in (0.2, 0.5], 10 observations from 30 on:
			// 0.2 + 0.3×9.6/10.
			name:    "p99 inside the last finite bucket",
			q:       0.99,
			buckets: []Bucket{{0.1, 10}, {0.2, 30}, {0.5, 40}, {inf, 40}},
			want:    0.488,
		},
		{
			// rank 4 lies in the first bucket, which starts at zero:
			// 0 + 0.1×4/10.
			name:    "first bucket starts at zero",
			q:       0.1,
			buckets: []Bucket{{0.1, 10}, {0.2, 30}, {0.5, 40}, {inf, 40}},
			want:    0.04,
		},
		{
			name:    "rank in the +Inf bucket yields the highest finite bound",
			q:       0.99,
			buckets: []Bucket{{0.1, 5}, {0.25, 6}, {inf, 10}},
			want:    0.25,
		},
		{
			// Counts that go down are raised to the running maximum first:
			// {0.1,10},{0.2,10},{0.5,20}; rank 10 falls in the first bucket.
			name:    "non-monotonic counts are made monotonic",
			q:       0.5,
			buckets: []Bucket{{0.1, 10}, {0.2, 8}, {0.5, 20}, {inf, 20}},
			want:    0.1,
		},
		{
			name:    "sidecar buckets, p50 of 4 observations",
			q:       0.5,
			buckets: []Bucket{{0.0005, 0}, {0.001, 1}, {0.0025, 3}, {0.005, 4}, {inf, 4}},
			// rank 2 in (0.001, 0.0025], 2 observations from 1 on:
			// 0.001 + 0.0015×1/2.
			want: 0.00175,
		},
		{"no observations", 0.5, []Bucket{{0.1, 0}, {inf, 0}}, math.NaN()},
		{"no +Inf bucket", 0.5, []Bucket{{0.1, 3}, {0.2, 5}}, math.NaN()},
		{"only the +Inf bucket", 0.5, []Bucket{{inf, 5}}, math.NaN()},
		{"no buckets", 0.5, nil, math.NaN()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := quantile(tt.q, tt.buckets)
			if math.IsNaN(tt.want) {
				if !math.IsNaN(got) {
					t.Errorf("quantile(%v) = %v, want NaN", tt.q, got)
				}
				return
			}
			if math.Abs(got-tt.want) > 1e-12 {
				t.Errorf("quantile(%v) = %v, want %v", tt.q, got, tt.want)
			}
		})
	}
}

func TestSucceeded(t *testing.T) {
	tests := []struct {
		name   string
		labels map[string]string
		want   bool
	}{
		{"200", map[string]string{"response_code": "200"}, true},
		{"302", map[string]string{"response_code": "302"}, true},
		{"404 is the client's fault", map[string]string{"response_code": "404"}, true},
		{"500", map[string]string{"response_code": "500"}, false},
		{"503", map[string]string{"response_code": "503"}, false},
		{"proxy failure with a 4xx code", map[string]string{"response_code": "403", "reason": "denied"}, false},
		{"proxy failure before any response", map[string]string{"reason": "timeout"}, false},
		{"gRPC OK", map[string]string{"response_code": "200", "grpc_status": "0"}, true},
		{"gRPC NOT_FOUND", map[string]string{"response_code": "200", "grpc_status": "5"}, true},
		{"gRPC UNAVAILABLE by number", map[string]string{"response_code": "200", "grpc_status": "14"}, false},
		{"gRPC INTERNAL by name", map[string]string{"response_code": "200", "grpc_status": "internal"}, false},
		{"empty labels", map[string]string{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := succeeded(tt.labels); got != tt.want {
				t.Errorf("succeeded(%v) = %v, want %v", tt.labels, got, tt.want)
			}
		})
	}
}

// in and out build label sets of inbound and outbound series.
func in(code string, extra ...string) map[string]string {
	l := map[string]string{"direction": "inbound", "response_code": code}
	for i := 0; i+1 < len(extra); i += 2 {
		l[extra[i]] = extra[i+1]
	}
	return l
}

func out(code string) map[string]string {
	return map[string]string{"direction": "outbound", "response_code": code}
}

// hist builds a histogram over the bounds 0.01, 0.1, 1 and +Inf from
// non-cumulative counts per bucket.
func hist(labels map[string]string, perBucket ...float64) Histogram {
	bounds := []float64{0.01, 0.1, 1, math.Inf(1)}
	h := Histogram{Labels: labels}
	var cum float64
	for i, ub := range bounds {
		if i < len(perBucket) {
			cum += perBucket[i]
		}
		h.Buckets = append(h.Buckets, Bucket{ub, cum})
	}
	h.Count = cum
	return h
}

const unknown = unknownLatency

// approx compares floats to within 1e-9 and durations to within 1ns, the
// rounding of the hand-written expressions in the tests.
var approx = cmp.Options{
	cmpopts.EquateApprox(0, 1e-9),
	cmp.Comparer(func(a, b time.Duration) bool { return a-b <= 1 && b-a <= 1 }),
}

func TestCompute(t *testing.T) {
	who := map[string]WorkloadRef{
		"store-1": {"bookstore", "bookstore-v1"},
		"store-2": {"bookstore", "bookstore-v1"},
		"buyer":   {"bookbuyer", "bookbuyer"},
		"wh":      {"bookwarehouse", "bookwarehouse"},
	}
	tests := []struct {
		name          string
		before, after map[string]*Sample
		window        time.Duration
		want          []Row
	}{
		{
			name: "deltas over the window, inbound only",
			before: map[string]*Sample{"store-1": {
				Requests:  []Counter{{in("200"), 100}, {in("503"), 10}, {out("200"), 1000}},
				Durations: []Histogram{hist(in("200"), 100), hist(in("503"), 10), hist(out("200"), 0, 0, 1000)},
			}},
			after: map[string]*Sample{"store-1": {
				Requests: []Counter{{in("200"), 130}, {in("503"), 20}, {out("200"), 5000}},
				// 30 new fast successes, 10 new failures in (0.01, 0.1].
				Durations: []Histogram{hist(in("200"), 130), hist(in("503"), 10, 10), hist(out("200"), 0, 0, 5000)},
			}},
			window: 10 * time.Second,
			want: []Row{{
				Namespace: "bookstore", Workload: "bookstore-v1",
				Requests: 40, RPS: 4, SuccessRate: 0.75,
				// p50: rank 20 of 40 in [0, 0.01] holding 30: 0.01×20/30.
				P50: time.Duration(math.Round(0.01 * 20 / 30 * 1e9)),
				// p99: rank 39.6 in (0.01, 0.1] holding 10 from 30 on:
				// 0.01 + 0.09×9.6/10.
				P99:           time.Duration(math.Round((0.01 + 0.09*0.96) * 1e9)),
				TotalRequests: 150, TotalSuccess: 130,
			}},
		},
		{
			name:   "a workload absent from before starts from zero",
			before: map[string]*Sample{},
			after: map[string]*Sample{"buyer": {
				Requests:  []Counter{{in("200"), 8}, {in("500"), 2}},
				Durations: []Histogram{hist(in("200"), 0, 8), hist(in("500"), 0, 0, 2)},
			}},
			window: 5 * time.Second,
			want: []Row{{
				Namespace: "bookbuyer", Workload: "bookbuyer",
				Requests: 10, RPS: 2, SuccessRate: 0.8,
				// rank 5 in (0.01, 0.1] holding 8: 0.01 + 0.09×5/8.
				P50: time.Duration(math.Round((0.01 + 0.09*5/8) * 1e9)),
				// rank 9.9 in (0.1, 1] holding 2 from 8 on: 0.1 + 0.9×1.9/2.
				P99:           time.Duration(math.Round((0.1 + 0.9*1.9/2) * 1e9)),
				TotalRequests: 10, TotalSuccess: 8,
			}},
		},
		{
			name: "a counter that went down means a restart: after counts whole",
			before: map[string]*Sample{"wh": {
				Requests:  []Counter{{in("200"), 500}},
				Durations: []Histogram{hist(in("200"), 500)},
			}},
			after: map[string]*Sample{"wh": {
				Requests:  []Counter{{in("200"), 20}},
				Durations: []Histogram{hist(in("200"), 0, 20)},
			}},
			window: 10 * time.Second,
			want: []Row{{
				Namespace: "bookwarehouse", Workload: "bookwarehouse",
				Requests: 20, RPS: 2, SuccessRate: 1,
				P50:           time.Duration(math.Round((0.01 + 0.09*0.5) * 1e9)),
				P99:           time.Duration(math.Round((0.01 + 0.09*0.99) * 1e9)),
				TotalRequests: 20, TotalSuccess: 20,
			}},
		},
		{
			name: "a new label set within a known sidecar starts from zero",
			before: map[string]*Sample{"wh": {
				Requests:  []Counter{{in("200"), 50}},
				Durations: []Histogram{hist(in("200"), 50)},
			}},
			after: map[string]*Sample{"wh": {
				Requests:  []Counter{{in("200"), 50}, {in("504", "reason", "timeout"), 5}},
				Durations: []Histogram{hist(in("200"), 50), hist(in("504", "reason", "timeout"), 0, 0, 0, 5)},
			}},
			window: 10 * time.Second,
			want: []Row{{
				Namespace: "bookwarehouse", Workload: "bookwarehouse",
				Requests: 5, RPS: 0.5, SuccessRate: 0,
				// Every observation is above the last finite bound.
				P50: time.Second, P99: time.Second,
				TotalRequests: 55, TotalSuccess: 50,
			}},
		},
		{
			name: "replicas of one workload are one row",
			before: map[string]*Sample{
				"store-1": {Requests: []Counter{{in("200"), 10}}, Durations: []Histogram{hist(in("200"), 10)}},
				"store-2": {Requests: []Counter{{in("200"), 0}}, Durations: []Histogram{hist(in("200"))}},
			},
			after: map[string]*Sample{
				"store-1": {Requests: []Counter{{in("200"), 20}}, Durations: []Histogram{hist(in("200"), 20)}},
				"store-2": {Requests: []Counter{{in("200"), 10}}, Durations: []Histogram{hist(in("200"), 0, 10)}},
			},
			window: 20 * time.Second,
			want: []Row{{
				Namespace: "bookstore", Workload: "bookstore-v1",
				Requests: 20, RPS: 1, SuccessRate: 1,
				// 10 in [0, 0.01], 10 in (0.01, 0.1]: the median is the
				// first bucket's top.
				P50:           10 * time.Millisecond,
				P99:           time.Duration(math.Round((0.01 + 0.09*9.8/10) * 1e9)),
				TotalRequests: 30, TotalSuccess: 30,
			}},
		},
		{
			name: "no requests in the window",
			before: map[string]*Sample{"buyer": {
				Requests: []Counter{{in("200"), 7}}, Durations: []Histogram{hist(in("200"), 7)},
			}},
			after: map[string]*Sample{
				"buyer": {Requests: []Counter{{in("200"), 7}}, Durations: []Histogram{hist(in("200"), 7)}},
				// A sidecar that only calls out serves nothing.
				"wh": {Requests: []Counter{{out("200"), 3}}, Durations: []Histogram{hist(out("200"), 3)}},
			},
			window: 10 * time.Second,
			want: []Row{
				{Namespace: "bookbuyer", Workload: "bookbuyer", SuccessRate: -1, P50: unknown, P99: unknown, TotalRequests: 7, TotalSuccess: 7},
				{Namespace: "bookwarehouse", Workload: "bookwarehouse", SuccessRate: -1, P50: unknown, P99: unknown},
			},
		},
		{
			name:   "an id missing from who is reported under its id; a zero window has no rate",
			after:  map[string]*Sample{"mystery": {Requests: []Counter{{in("200"), 4}}, Durations: []Histogram{hist(in("200"), 4)}}},
			window: 0,
			want: []Row{{
				Workload: "mystery", Requests: 4, RPS: 0, SuccessRate: 1,
				P50: 5 * time.Millisecond, P99: time.Duration(math.Round(0.0099 * 1e9)),
				TotalRequests: 4, TotalSuccess: 4,
			}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Compute(tt.before, tt.after, tt.window, who)
			if diff := cmp.Diff(tt.want, got, approx); diff != "" {
				t.Errorf("Compute (-want +got):\n%s", diff)
			}
		})
	}
}

// TestComputeFromSidecarExposition reads what the sidecar's telemetry writes,
// so that a change of names or labels on either side breaks here.
func TestComputeFromSidecarExposition(t *testing.T) {
	m := telemetry.NewMetrics()
	ok := telemetry.Labels{Direction: "inbound", SourceWorkload: "bookbuyer", DestinationService: "bookstore", ResponseCode: "200", TLS: "true"}
	fail := ok
	fail.ResponseCode = "503"
	fail.Reason = "no_endpoints"
	outbound := telemetry.Labels{Direction: "outbound", DestinationService: "bookwarehouse", ResponseCode: "500"}
	scrape := func() *Sample {
		var b bytes.Buffer
		if err := m.WritePrometheus(&b); err != nil {
			t.Fatal(err)
		}
		s, err := Parse(&b)
		if err != nil {
			t.Fatalf("Parse: %v", err)
		}
		return s
	}
	for range 5 {
		m.Request(ok, time.Millisecond)
	}
	before := scrape()
	for range 3 {
		m.Request(ok, 2*time.Millisecond) // in (0.001, 0.0025]
	}
	m.Request(fail, 20*time.Millisecond) // in (0.01, 0.025]
	m.Request(outbound, time.Second)
	after := scrape()

	got := Compute(map[string]*Sample{"s": before}, map[string]*Sample{"s": after}, 2*time.Second,
		map[string]WorkloadRef{"s": {"bookstore", "bookstore-v1"}})
	want := []Row{{
		Namespace: "bookstore", Workload: "bookstore-v1",
		Requests: 4, RPS: 2, SuccessRate: 0.75,
		// rank 2 of 4 in (0.001, 0.0025] holding 3: 0.001 + 0.0015×2/3.
		P50: 2 * time.Millisecond,
		// rank 3.96 in (0.01, 0.025] holding 1 from 3 on: 0.01 + 0.015×0.96.
		P99:           time.Duration(math.Round((0.01 + 0.015*0.96) * 1e9)),
		TotalRequests: 9, TotalSuccess: 8,
	}}
	if diff := cmp.Diff(want, got, approx); diff != "" {
		t.Errorf("Compute (-want +got):\n%s", diff)
	}
}

func TestRowJSON(t *testing.T) {
	r := Row{Namespace: "bookstore", Workload: "bookstore-v1", Requests: 40, RPS: 4, SuccessRate: 0.75,
		P50: 1500 * time.Microsecond, P99: 250 * time.Millisecond, TotalRequests: 150, TotalSuccess: 130}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"namespace":"bookstore","workload":"bookstore-v1","requests":40,"rps":4,"success_rate":0.75,"p50_ms":1.5,"p99_ms":250,"total_requests":150,"total_success":130}`
	if string(b) != want {
		t.Errorf("JSON = %s\nwant   %s", b, want)
	}
	var back Row
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(r, back); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}

	idle := Row{Workload: "idle", SuccessRate: -1, P50: unknown, P99: unknown}
	b, err = json.Marshal([]Row{idle})
	if err != nil {
		t.Fatalf("a row with no requests does not marshal: %v", err)
	}
	if !strings.Contains(string(b), `"success_rate":-1,"p50_ms":-1,"p99_ms":-1`) {
		t.Errorf("idle row JSON = %s, want -1 for success rate and latencies", b)
	}
}
