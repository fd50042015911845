package bench

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/trellis-mesh/trellis/bench/fortio"
	"github.com/trellis-mesh/trellis/bench/procfs"
)

func TestPercentile(t *testing.T) {
	tests := []struct {
		name   string
		values []float64
		p      float64
		want   float64
	}{
		{"median of an odd count is the middle value", []float64{3, 1, 2}, 50, 2},
		{"median of an even count is the mean of the middle two", []float64{4, 1, 3, 2}, 50, 2.5},
		{"one value", []float64{7}, 50, 7},
		{"p0 is the minimum", []float64{5, 9, 1}, 0, 1},
		{"p100 is the maximum", []float64{5, 9, 1}, 100, 9},
		{"interpolates between ranks", []float64{10, 20, 30, 40, 50}, 90, 46},
		{"p25 of five", []float64{50, 40, 30, 20, 10}, 25, 20},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := append([]float64(nil), tc.values...)
			got := percentile(tc.values, tc.p)
			if math.Abs(got-tc.want) > 1e-9 {
				t.Errorf("percentile(%v, %v) = %v, want %v", tc.values, tc.p, got, tc.want)
			}
			if diff := cmp.Diff(in, tc.values); diff != "" {
				t.Errorf("percentile reordered its argument (-before +after):\n%s", diff)
			}
		})
	}
	if got := median(nil); !math.IsNaN(got) {
		t.Errorf("median(nil) = %v, want NaN", got)
	}
}

func TestMedianFigures(t *testing.T) {
	rounds := []Figures{
		{P50Ms: 1.0, P90Ms: 2, P99Ms: 9, P999Ms: 20, RateRPS: 999, Requests: 10000, Errors: 0,
			Hops: []HopFigures{{Name: "hop1", Processes: 2, CPUSeconds: 1.0, Cores: 0.10, CoresPer1kRPS: 0.10, RSSMaxBytes: 10, PSSMaxBytes: 7, HWMBytes: 12}}},
		{P50Ms: 3.0, P90Ms: 4, P99Ms: 5, P999Ms: 60, RateRPS: 998, Requests: 9990, Errors: 4,
			Hops: []HopFigures{{Name: "hop1", Processes: 2, CPUSeconds: 3.0, Cores: 0.30, CoresPer1kRPS: 0.30, RSSMaxBytes: 30, PSSMaxBytes: 5, HWMBytes: 32, HWMLifetime: true}}},
		{P50Ms: 2.0, P90Ms: 3, P99Ms: 7, P999Ms: 40, RateRPS: 1000, Requests: 10010, Errors: 1,
			Hops: []HopFigures{{Name: "hop1", Processes: 2, CPUSeconds: 2.0, Cores: 0.20, CoresPer1kRPS: 0.20, RSSMaxBytes: 20, PSSMaxBytes: 9, HWMBytes: 22}}},
	}
	want := Figures{P50Ms: 2, P90Ms: 3, P99Ms: 7, P999Ms: 40, RateRPS: 999, Requests: 10000, Errors: 1,
		// One lifetime VmHWM among the rounds marks the median as one too.
		Hops: []HopFigures{{Name: "hop1", Processes: 2, CPUSeconds: 2, Cores: 0.2, CoresPer1kRPS: 0.2, RSSMaxBytes: 20, PSSMaxBytes: 7, HWMBytes: 22, HWMLifetime: true}}}
	if diff := cmp.Diff(want, medianFigures(rounds), cmpopts.EquateApprox(0, 1e-12)); diff != "" {
		t.Errorf("medianFigures (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(Figures{}, medianFigures(nil)); diff != "" {
		t.Errorf("medianFigures(nil) (-want +got):\n%s", diff)
	}
}

func TestRatios(t *testing.T) {
	nginx := Figures{P50Ms: 0.5, P90Ms: 1, P99Ms: 2, P999Ms: 4,
		Hops: []HopFigures{{Name: "hop1", CPUSeconds: 1, CoresPer1kRPS: 0.1, RSSMaxBytes: 10 << 20, PSSMaxBytes: 5 << 20}, {Name: "hop2", CPUSeconds: 1, CoresPer1kRPS: 0.1, RSSMaxBytes: 8 << 20, PSSMaxBytes: 4 << 20}}}
	trellis := Figures{P50Ms: 1, P90Ms: 1.5, P99Ms: 1, P999Ms: 0,
		Hops: []HopFigures{{Name: "hop1", CPUSeconds: 3, CoresPer1kRPS: 0.3, RSSMaxBytes: 15 << 20, PSSMaxBytes: 10 << 20}, {Name: "hop2", CPUSeconds: 1, CoresPer1kRPS: 0.05, RSSMaxBytes: 8 << 20}}}
	tests := []struct {
		name        string
		x, ref      Figures
		latencyOnly bool
		want        Ratios
	}{
		{
			name: "trellis to nginx", x: trellis, ref: nginx,
			// hop2 of trellis has no PSS (an old kernel): no pss_hop2.
			want: Ratios{"p50": 2, "p90": 1.5, "p99": 0.5, "p99.9": 0, "cpu": 2, "cpu_hop1": 3, "cpu_hop2": 0.5, "rss_hop1": 1.5, "rss_hop2": 1, "pss_hop1": 2},
		},
		{
			name: "latency only", x: trellis, ref: nginx, latencyOnly: true,
			want: Ratios{"p50": 2, "p90": 1.5, "p99": 0.5, "p99.9": 0},
		},
		{
			name: "a zero reference is left out", x: nginx, ref: trellis, latencyOnly: true,
			want: Ratios{"p50": 0.5, "p90": 1 / 1.5, "p99": 2},
		},
		{
			name: "direct has no hops to compare", x: Figures{P50Ms: 0.25, P90Ms: 0.5, P99Ms: 1, P999Ms: 2}, ref: nginx,
			want: Ratios{"p50": 0.5, "p90": 0.5, "p99": 0.5, "p99.9": 0.5},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := ratios(tc.x, tc.ref, tc.latencyOnly)
			if diff := cmp.Diff(tc.want, got, cmpopts.EquateApprox(0, 1e-12)); diff != "" {
				t.Errorf("ratios (-want +got):\n%s", diff)
			}
		})
	}
}

func TestFigures(t *testing.T) {
	res := fortio.Result{ActualQPS: 500, ActualDuration: 10 * time.Second, Requests: 5000, OK: 4998, Errors: 2,
		Percentiles: map[float64]time.Duration{50: 1500 * time.Microsecond, 90: 2 * time.Millisecond, 99: 4 * time.Millisecond, 99.9: 8 * time.Millisecond}}
	usage := []procfs.Usage{{CPUSeconds: 2, RSSMaxBytes: 100, PSSMaxBytes: 80, HWMBytes: 120, PeakReset: true}, {CPUSeconds: 0.5, RSSMaxBytes: 50, HWMBytes: 60}}
	got, err := figures(res, []hop{{name: "hop1", pids: []int{10, 11}}, {name: "hop2", pids: []int{12}}}, usage)
	if err != nil {
		t.Fatal(err)
	}
	want := Figures{P50Ms: 1.5, P90Ms: 2, P99Ms: 4, P999Ms: 8, RateRPS: 500, Requests: 5000, Errors: 2, Hops: []HopFigures{
		// 2 CPU seconds over 10 s is 0.2 cores; at 500 rps that is 0.4 cores per 1,000 rps.
		{Name: "hop1", Processes: 2, CPUSeconds: 2, Cores: 0.2, CoresPer1kRPS: 0.4, RSSMaxBytes: 100, PSSMaxBytes: 80, HWMBytes: 120},
		// hop2's VmHWM could not be reset: it is a lifetime peak.
		{Name: "hop2", Processes: 1, CPUSeconds: 0.5, Cores: 0.05, CoresPer1kRPS: 0.1, RSSMaxBytes: 50, HWMBytes: 60, HWMLifetime: true},
	}}
	if diff := cmp.Diff(want, got, cmpopts.EquateApprox(0, 1e-12)); diff != "" {
		t.Errorf("figures (-want +got):\n%s", diff)
	}

	delete(res.Percentiles, 99.9)
	if _, err := figures(res, nil, nil); err == nil || !strings.Contains(err.Error(), "p99.9") {
		t.Errorf("figures without p99.9: error = %v, want one naming p99.9", err)
	}
}

func TestBudgets(t *testing.T) {
	nginx := &Figures{P50Ms: 1, P99Ms: 4, Hops: []HopFigures{{Name: "hop1", CoresPer1kRPS: 0.10}, {Name: "hop2", CoresPer1kRPS: 0.08}}}
	trellis := &Figures{P50Ms: 0.9, P99Ms: 6, Hops: []HopFigures{
		{Name: "hop1", CoresPer1kRPS: 0.09, RSSMaxBytes: 15 * mib},
		{Name: "hop2", CoresPer1kRPS: 0.085, RSSMaxBytes: 21 * mib},
	}}
	facts := &sidecarFacts{
		IdleRSS:      map[string]uint64{"hop1": 11 * mib, "hop2": 13 * mib},
		StartToReady: []time.Duration{20 * time.Millisecond, 150 * time.Millisecond, 30 * time.Millisecond},
	}
	type line struct {
		Status string
		Value  float64
	}
	summarize := func(bs []Budget) map[string]line {
		out := map[string]line{}
		for _, b := range bs {
			l := line{Status: b.Status}
			if b.Value != nil {
				l.Value = *b.Value
			}
			out[b.Figure] = l
		}
		return out
	}
	got := summarize(budgets(trellis, nginx, 3, facts))
	want := map[string]line{
		"latency p50 through two sidecars ÷ nginx-2hop": {Met, 0.9},
		"latency p99 through two sidecars ÷ nginx-2hop": {NotMet, 1.5},
		// hop2 is the worse against its nginx hop: 0.085/0.08.
		"CPU per sidecar per 1,000 rps ÷ one nginx hop": {NotMet, 0.085 / 0.08},
		"CPU per sidecar per 1,000 rps":                 {Met, 0.09},
		// The client sidecar's, which holds the destination.
		"sidecar RSS idle, certificate and one destination loaded": {Met, 11},
		"sidecar RSS at 1,000 rps":                                 {NotMet, 21},
		"errors at the fixed rate (trellis-2hop, all rounds)":      {NotMet, 3},
		// The median start, not the worst.
		"sidecar start to ready (certificate issued, listeners up)":                                {Met, 30},
		"sidecar RSS with 5,000 services (permissive), app calling 5, ÷ the same with 10 services": {NotMeasured, 0},
		"control plane: a TrafficSplit change reaches 99% of 10,000 connected proxies":             {NotMeasured, 0},
		"control plane memory with 10,000 connected proxies and 1,000 services":                    {NotMeasured, 0},
	}
	if diff := cmp.Diff(want, got, cmpopts.EquateApprox(0, 1e-9)); diff != "" {
		t.Errorf("budgets (-want +got):\n%s", diff)
	}

	// Without trellis-2hop or nginx-2hop nothing can be judged.
	for fig, l := range summarize(budgets(nil, nil, 0, nil)) {
		if l.Status != NotMeasured {
			t.Errorf("budgets with nothing measured: %q is %q, want %q", fig, l.Status, NotMeasured)
		}
	}
	// The same CPU seconds in both, divided by slightly different rates'
	// worth of floating-point error (as in a recorded run: 0.138 against
	// 0.13799999999999998), meet the budget of 1.00.
	tied := &Figures{P50Ms: 0.9, P99Ms: 3, Hops: []HopFigures{{Name: "hop1", CoresPer1kRPS: 0.1380000000000001}, {Name: "hop2", CoresPer1kRPS: 0.07}}}
	tiedNginx := &Figures{P50Ms: 1, P99Ms: 4, Hops: []HopFigures{{Name: "hop1", CoresPer1kRPS: 0.13799999999999998}, {Name: "hop2", CoresPer1kRPS: 0.08}}}
	if l := summarize(budgets(tied, tiedNginx, 0, facts))["CPU per sidecar per 1,000 rps ÷ one nginx hop"]; l.Status != Met {
		t.Errorf("CPU tied with nginx's (ratio %v): status %q, want %q", l.Value, l.Status, Met)
	}
	// Zero errors meet the budget of zero.
	if l := summarize(budgets(trellis, nginx, 0, facts))["errors at the fixed rate (trellis-2hop, all rounds)"]; l.Status != Met {
		t.Errorf("0 errors: status %q, want %q", l.Status, Met)
	}
}

func TestReportFailedAndErrors(t *testing.T) {
	r := &Report{Load: LoadSpec{Rounds: 2}, Configurations: []ConfigResult{
		{Name: Direct, Rounds: []RoundResult{{Figures: Figures{Errors: 1}}, {Figures: Figures{Errors: 2}}}},
		{Name: Trellis, Error: "set-up: boom"},
		{Name: Nginx, Rounds: []RoundResult{{}}},
		{Name: HAProxy, Rounds: []RoundResult{{}, {Figures: Figures{Errors: 4}}}},
	}}
	if diff := cmp.Diff([]string{Trellis, Nginx}, r.Failed()); diff != "" {
		t.Errorf("Failed (-want +got):\n%s", diff)
	}
	if got := r.Errors(); got != 7 {
		t.Errorf("Errors = %d, want 7", got)
	}
}
