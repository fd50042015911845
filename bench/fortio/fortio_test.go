package fortio

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseResult(t *testing.T) {
	tests := []struct {
		file string
		want Result
	}{
		{
			// 2s at 1,000 qps through two Trellis sidecars, all 200.
			file: "trellis-2s.json",
			want: Result{
				RequestedQPS: 1000, ActualQPS: 991.5711661587771, ActualDuration: 2017000966,
				Requests: 2000, OK: 2000, Errors: 0,
				Codes: map[int]int64{200: 2000},
				Percentiles: map[float64]time.Duration{
					50: 1450 * time.Microsecond, 90: 5060606, 99: 19411765, 99.9: 29375 * time.Microsecond,
				},
				Min: 368962, Avg: 2476541, Max: 31762434,
			},
		},
		{
			// 1s at 200 qps against fortio's echo asked to answer 503 one time in ten.
			file: "status503-1s.json",
			want: Result{
				RequestedQPS: 200, ActualQPS: 199.6588351616647, ActualDuration: 1001708739,
				Requests: 200, OK: 179, Errors: 21,
				Codes: map[int]int64{200: 179, 503: 21},
				Percentiles: map[float64]time.Duration{
					50: 345 * time.Microsecond, 90: 766667, 99: 1350 * time.Microsecond, 99.9: 5267158,
				},
				Min: 87547, Avg: 438557, Max: 5333948,
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join("testdata", tc.file))
			if err != nil {
				t.Fatal(err)
			}
			got, err := ParseResult(b)
			if err != nil {
				t.Fatalf("ParseResult: %v", err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("ParseResult (-want +got):\n%s", diff)
			}
			p99, ok := got.Percentile(99)
			if !ok || p99 != tc.want.Percentiles[99] {
				t.Errorf("Percentile(99) = %v, %v; want %v, true", p99, ok, tc.want.Percentiles[99])
			}
			if _, ok := got.Percentile(75); ok {
				t.Errorf("Percentile(75) found, but fortio was not asked for it")
			}
		})
	}
}

func TestParseResultRejects(t *testing.T) {
	tests := []struct {
		name, json, wantErr string
	}{
		{"not JSON", "Fortio 1.68.2 running", "fortio result"},
		{"no histogram", `{"RunType":"HTTP","ActualQPS":10}`, "no DurationHistogram"},
		{"codes disagree with the histogram", `{"RetCodes":{"200":5},"DurationHistogram":{"Count":6}}`, "RetCodes count 5 requests, the histogram 6"},
		{"a code that is not a number", `{"RetCodes":{"ok":6},"DurationHistogram":{"Count":6}}`, `"ok" is not a status code`},
		{"a rate that is not a number", `{"RequestedQPS":"fast","RetCodes":{},"DurationHistogram":{"Count":0}}`, "RequestedQPS"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseResult([]byte(tc.json))
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseResult error = %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestLoadArgs(t *testing.T) {
	l := Load{Binary: "fortio", URL: "http://echo.bench:8080/echo", Proxy: "127.0.0.1:15001",
		QPS: 1000, Connections: 16, Duration: 10 * time.Second, PayloadBytes: 1024}
	want := []string{"load", "-stdclient", "-resolve", "127.0.0.1", "-qps", "1000", "-c", "16", "-t", "10s",
		"-uniform", "-r", "0.00001", "-p", "50,90,99,99.9", "-loglevel", "error", "-json", "/tmp/r.json",
		"-payload-size", "1024", "http://echo.bench:8080/echo"}
	if diff := cmp.Diff(want, l.Args("/tmp/r.json")); diff != "" {
		t.Errorf("Args (-want +got):\n%s", diff)
	}
	l.PayloadBytes, l.Percentiles, l.QPS = 0, []float64{99.99}, 12.5
	got := l.Args("r.json")
	if strings.Contains(strings.Join(got, " "), "-payload-size") {
		t.Errorf("Args with no payload = %q, want no -payload-size", got)
	}
	if !strings.Contains(strings.Join(got, " "), "-p 99.99 ") || !strings.Contains(strings.Join(got, " "), "-qps 12.5 ") {
		t.Errorf("Args = %q, want -p 99.99 and -qps 12.5", got)
	}
}

func TestLoadEnv(t *testing.T) {
	base := []string{"PATH=/bin", "http_proxy=http://elsewhere:3128", "NO_PROXY=localhost", "HOME=/root"}
	tests := []struct {
		name  string
		proxy string
		want  []string
	}{
		{"no proxy", "", []string{"PATH=/bin", "HOME=/root"}},
		{"the sidecar as proxy", "127.0.0.1:15001", []string{"PATH=/bin", "HOME=/root", "HTTP_PROXY=http://127.0.0.1:15001"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := Load{Proxy: tc.proxy}.Env(base)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Env (-want +got):\n%s", diff)
			}
		})
	}
	if base[1] != "http_proxy=http://elsewhere:3128" {
		t.Errorf("Env changed its argument: %q", base)
	}
}
