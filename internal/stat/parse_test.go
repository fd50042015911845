package stat

import (
	"math"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParse(t *testing.T) {
	const text = `# HELP trellis_requests_total Requests.
# TYPE trellis_requests_total counter
trellis_requests_total{direction="inbound",response_code="200",route="a\"b"} 7
trellis_requests_total{direction="outbound",response_code="503",reason="timeout"} 2
trellis_requests_total{direction="inbound",response_code="200",route="nan"} NaN
# HELP trellis_request_duration_seconds Durations.
# TYPE trellis_request_duration_seconds histogram
trellis_request_duration_seconds_bucket{direction="inbound",le="0.1"} 3
trellis_request_duration_seconds_bucket{direction="inbound",le="0.01"} 1
trellis_request_duration_seconds_bucket{direction="inbound",le="+Inf"} 7
trellis_request_duration_seconds_sum{direction="inbound"} 1.5
trellis_request_duration_seconds_count{direction="inbound"} 7
# TYPE other_metric gauge
other_metric 3
`
	got, err := Parse(strings.NewReader(text))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	want := &Sample{
		Requests: []Counter{
			{map[string]string{"direction": "inbound", "response_code": "200", "route": `a"b`}, 7},
			{map[string]string{"direction": "outbound", "response_code": "503", "reason": "timeout"}, 2},
		},
		Durations: []Histogram{{
			Labels:  map[string]string{"direction": "inbound"},
			Count:   7,
			Sum:     1.5,
			Buckets: []Bucket{{0.01, 1}, {0.1, 3}, {math.Inf(1), 7}},
		}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Parse (-want +got):\n%s", diff)
	}
}

func TestParseAddsMissingInfBucket(t *testing.T) {
	const text = `# TYPE trellis_request_duration_seconds histogram
trellis_request_duration_seconds_bucket{le="0.5"} 2
trellis_request_duration_seconds_sum 0.75
trellis_request_duration_seconds_count 4
`
	got, err := Parse(strings.NewReader(text))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	want := []Bucket{{0.5, 2}, {math.Inf(1), 4}}
	if len(got.Durations) != 1 {
		t.Fatalf("got %d histograms, want 1", len(got.Durations))
	}
	if diff := cmp.Diff(want, got.Durations[0].Buckets); diff != "" {
		t.Errorf("buckets (-want +got):\n%s", diff)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name, text, wantSub string
	}{
		{"not the text format", "<html>hello</html>\n", "parse sidecar metrics"},
		{"requests is a gauge", "# TYPE trellis_requests_total gauge\ntrellis_requests_total 1\n", "want a counter"},
		{"durations is a summary", "# TYPE trellis_request_duration_seconds summary\ntrellis_request_duration_seconds_count 1\n", "want a histogram"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Parse(strings.NewReader(tt.text))
			if err == nil {
				t.Fatalf("Parse = %+v, want an error", s)
			}
			if !strings.Contains(err.Error(), tt.wantSub) {
				t.Errorf("error %q does not contain %q", err, tt.wantSub)
			}
		})
	}
}

func TestParseEmpty(t *testing.T) {
	got, err := Parse(strings.NewReader(""))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if diff := cmp.Diff(&Sample{}, got); diff != "" {
		t.Errorf("Parse (-want +got):\n%s", diff)
	}
}

// FuzzParse feeds Parse arbitrary text: it must not panic, and what it keeps
// must be usable by Compute and marshal to JSON.
func FuzzParse(f *testing.F) {
	f.Add("trellis_requests_total{direction=\"inbound\"} 3\n")
	f.Add("# TYPE trellis_request_duration_seconds histogram\ntrellis_request_duration_seconds_bucket{direction=\"inbound\",le=\"0.1\"} 1\ntrellis_request_duration_seconds_count{direction=\"inbound\"} 2\n")
	f.Add("# TYPE trellis_requests_total counter\ntrellis_requests_total{direction=\"inbound\"} +Inf\n")
	f.Fuzz(func(t *testing.T, text string) {
		s, err := Parse(strings.NewReader(text))
		if err != nil {
			return
		}
		rows := Compute(nil, map[string]*Sample{"w": s}, 1, nil)
		if len(rows) != 1 {
			t.Fatalf("got %d rows, want 1", len(rows))
		}
		r := rows[0]
		for _, v := range []float64{r.Requests, r.RPS, r.SuccessRate, r.TotalRequests, r.TotalSuccess} {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				t.Fatalf("row has a non-finite value: %+v", r)
			}
		}
		if _, err := r.MarshalJSON(); err != nil {
			t.Fatalf("row does not marshal: %v", err)
		}
	})
}
