package bench

import (
	"strings"
	"testing"
	"time"
)

func TestWriteTable(t *testing.T) {
	val := 2.5
	lim := 1.0
	r := &Report{
		Date: time.Date(2026, 11, 22, 5, 0, 0, 0, time.UTC), NProc: 2,
		Load:     LoadSpec{Client: "fortio", QPS: 1000, Connections: 16, PayloadBytes: 1024, Warmup: "3s", Duration: "10s", Rounds: 1},
		Versions: map[string]string{"nginx": "1.22.1", "fortio": "1.68.2"},
		Configurations: []ConfigResult{
			{Name: Trellis, Rounds: []RoundResult{{Figures: Figures{Errors: 3}}},
				Median: &Figures{P50Ms: 1.25, P90Ms: 2, P99Ms: 4.5, P999Ms: 9, RateRPS: 999.4, Errors: 3,
					Hops: []HopFigures{{Name: "hop1", Processes: 1, CPUSeconds: 1.5, Cores: 0.15, CoresPer1kRPS: 0.15, RSSMaxBytes: 15 * mib, PSSMaxBytes: 12 * mib, HWMBytes: 16 * mib, HWMLifetime: true}}},
				VsNginx:  Ratios{"p50": 2.5, "cpu_hop1": 1.5},
				VsDirect: Ratios{"p50": 5}},
			{Name: HAProxy, Error: "set-up: haproxy exited (exit status 1)\nmore lines"},
		},
		Sidecar: &SidecarResult{IdleRSSBytes: map[string]uint64{"hop1": 11 * mib, "hop2": 10 * mib}, StartToReadyMs: []float64{20, 30}, StartToReadyMedianMs: 25, StartToReadyMaxMs: 30},
		Budgets: []Budget{{Figure: "latency p50", Budget: "≤ 1.00", Status: NotMet, Value: &val, Limit: &lim, Unit: "×"}},
	}
	var b strings.Builder
	if err := WriteTable(&b, r); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"nproc 2",
		"fortio 1.68.2, nginx 1.22.1",
		"trellis-2hop   1.250   2.000   4.500     9.000   999.4                    3",
		"haproxy-2hop       -",
		"trellis-2hop  hop1          1   1.50  0.150             0.150         15.0         12.0      16.0*",
		"2.50×",
		"5.00×",
		"idle RSS hop1 (client, certificate + one destination) 11.0 MiB, hop2 (server) 10.0 MiB; start to ready median 25.0 ms, max 30.0 ms over 2 starts",
		"not met      latency p50 ≤ 1.00: 2.50 ×",
		"haproxy-2hop: set-up: haproxy exited (exit status 1)\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q; it is:\n%s", want, out)
		}
	}
	if strings.Contains(out, "more lines") {
		t.Errorf("a failed configuration's error shows more than its first line:\n%s", out)
	}
}
