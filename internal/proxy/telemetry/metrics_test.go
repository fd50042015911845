package telemetry

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// parseExposition parses the text exposition with Prometheus' own parser.
func parseExposition(t testing.TB, text string) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("exposition does not parse: %v\n%s", err, text)
	}
	return fams
}

func scrape(t testing.TB, m *Metrics) string {
	t.Helper()
	var b bytes.Buffer
	if err := m.WritePrometheus(&b); err != nil {
		t.Fatalf("WritePrometheus: %v", err)
	}
	return b.String()
}

func labelMap(m *dto.Metric) map[string]string {
	out := make(map[string]string)
	for _, lp := range m.GetLabel() {
		out[lp.GetName()] = lp.GetValue()
	}
	return out
}

// allLabels returns the label map that a Labels value is written as.
func allLabels(l Labels) map[string]string {
	out := make(map[string]string)
	for i, v := range l.values() {
		out[labelNames[i]] = v
	}
	return out
}

type counterSample struct {
	Labels map[string]string
	Value  float64
}

func counters(t *testing.T, fams map[string]*dto.MetricFamily, name string) []counterSample {
	t.Helper()
	f, ok := fams[name]
	if !ok {
		t.Fatalf("family %s missing", name)
	}
	if got := f.GetType(); got != dto.MetricType_COUNTER {
		t.Fatalf("family %s has type %v, want COUNTER", name, got)
	}
	var out []counterSample
	for _, m := range f.GetMetric() {
		out = append(out, counterSample{labelMap(m), m.GetCounter().GetValue()})
	}
	return out
}

type histogramSample struct {
	Labels  map[string]string
	Count   uint64
	Sum     float64
	Buckets map[float64]uint64 // upper bound → cumulative count
}

func histograms(t *testing.T, fams map[string]*dto.MetricFamily, name string) []histogramSample {
	t.Helper()
	f, ok := fams[name]
	if !ok {
		t.Fatalf("family %s missing", name)
	}
	if got := f.GetType(); got != dto.MetricType_HISTOGRAM {
		t.Fatalf("family %s has type %v, want HISTOGRAM", name, got)
	}
	var out []histogramSample
	for _, m := range f.GetMetric() {
		h := m.GetHistogram()
		s := histogramSample{Labels: labelMap(m), Count: h.GetSampleCount(), Sum: h.GetSampleSum(), Buckets: map[float64]uint64{}}
		for _, b := range h.GetBucket() {
			s.Buckets[b.GetUpperBound()] = b.GetCumulativeCount()
		}
		out = append(out, s)
	}
	return out
}

func TestBoundTextsMatchBounds(t *testing.T) {
	for i, b := range durationBounds {
		got, err := strconv.ParseFloat(boundTexts[i], 64)
		if err != nil || got != b.Seconds() {
			t.Errorf("boundTexts[%d] = %q, want %v", i, boundTexts[i], b.Seconds())
		}
	}
	if got := boundTexts[len(durationBounds)]; got != "+Inf" {
		t.Errorf("last bound text = %q, want +Inf", got)
	}
}

func TestHistogramBuckets(t *testing.T) {
	bounds := []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, math.Inf(1)}
	tests := []struct {
		name      string
		durations []time.Duration
		// want is the cumulative count per bound, in bounds order.
		want    []uint64
		wantSum float64
	}{
		{
			name:      "no observation above the first bound",
			durations: []time.Duration{0, 100 * time.Microsecond, 500 * time.Microsecond},
			want:      []uint64{3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3},
			wantSum:   0.0006,
		},
		{
			name:      "a value equal to a bound falls in that bucket",
			durations: []time.Duration{time.Millisecond, 10 * time.Millisecond, 10*time.Millisecond + 1},
			want:      []uint64{0, 1, 1, 1, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3},
			wantSum:   0.021000001,
		},
		{
			name:      "values above the last bound count only in +Inf",
			durations: []time.Duration{3 * time.Second, 11 * time.Second, time.Minute},
			want:      []uint64{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 3},
			wantSum:   74,
		},
		{
			name:      "a negative duration is observed as zero",
			durations: []time.Duration{-time.Second},
			want:      []uint64{1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1},
			wantSum:   0,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := NewMetrics()
			l := Labels{Direction: "inbound", ResponseCode: "200"}
			for _, d := range tt.durations {
				m.Request(l, d)
			}
			fams := parseExposition(t, scrape(t, m))
			hs := histograms(t, fams, "trellis_request_duration_seconds")
			if len(hs) != 1 {
				t.Fatalf("got %d histogram series, want 1", len(hs))
			}
			want := map[float64]uint64{}
			for i, b := range bounds {
				want[b] = tt.want[i]
			}
			if diff := cmp.Diff(want, hs[0].Buckets); diff != "" {
				t.Errorf("buckets (-want +got):\n%s", diff)
			}
			if got, wantCount := hs[0].Count, tt.want[len(tt.want)-1]; got != wantCount {
				t.Errorf("count = %d, want %d", got, wantCount)
			}
			if math.Abs(hs[0].Sum-tt.wantSum) > 1e-12 {
				t.Errorf("sum = %v, want %v", hs[0].Sum, tt.wantSum)
			}
			reqs := counters(t, fams, "trellis_requests_total")
			if len(reqs) != 1 || reqs[0].Value != float64(len(tt.durations)) {
				t.Errorf("requests = %+v, want one series of %d", reqs, len(tt.durations))
			}
		})
	}
}

func TestWritePrometheusExact(t *testing.T) {
	m := NewMetrics()
	l := Labels{Direction: "outbound", SourceWorkload: "bookbuyer", SourceNamespace: "bookbuyer",
		DestinationService: "bookstore", DestinationWorkload: "bookstore-v1", DestinationNamespace: "bookstore",
		Route: "books", ResponseCode: "200", TLS: "true"}
	m.Request(l, 3*time.Millisecond)
	m.Request(l, 700*time.Millisecond)
	tl := Labels{Direction: "inbound", DestinationService: "mysql", TLS: "true"}
	m.ConnOpened(tl)
	m.TCP(tl, 10, 20)
	m.Refused("inbound", "plaintext")

	const ls = `direction="outbound",source_workload="bookbuyer",source_namespace="bookbuyer",destination_service="bookstore",destination_workload="bookstore-v1",destination_namespace="bookstore",route="books",response_code="200",grpc_status="",tls="true",reason=""`
	const tls = `direction="inbound",source_workload="",source_namespace="",destination_service="mysql",destination_workload="",destination_namespace="",route="",response_code="",grpc_status="",tls="true",reason=""`
	var want strings.Builder
	want.WriteString("# HELP trellis_requests_total Requests handled by this proxy, by direction, peers, route and outcome.\n")
	want.WriteString("# TYPE trellis_requests_total counter\n")
	want.WriteString("trellis_requests_total{" + ls + "} 2\n")
	want.WriteString("# HELP trellis_request_duration_seconds Time from the start of a request to the end of its response, in seconds.\n")
	want.WriteString("# TYPE trellis_request_duration_seconds histogram\n")
	for i, le := range []string{"0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf"} {
		n := 0
		if i >= 3 {
			n = 1
		}
		if i >= 10 {
			n = 2
		}
		fmt.Fprintf(&want, "trellis_request_duration_seconds_bucket{%s,le=%q} %d\n", ls, le, n)
	}
	want.WriteString("trellis_request_duration_seconds_sum{" + ls + "} 0.703\n")
	want.WriteString("trellis_request_duration_seconds_count{" + ls + "} 2\n")
	want.WriteString("# HELP trellis_tcp_sent_bytes_total Bytes sent on proxied TCP connections.\n")
	want.WriteString("# TYPE trellis_tcp_sent_bytes_total counter\n")
	want.WriteString("trellis_tcp_sent_bytes_total{" + tls + "} 10\n")
	want.WriteString("# HELP trellis_tcp_received_bytes_total Bytes received on proxied TCP connections.\n")
	want.WriteString("# TYPE trellis_tcp_received_bytes_total counter\n")
	want.WriteString("trellis_tcp_received_bytes_total{" + tls + "} 20\n")
	want.WriteString("# HELP trellis_tcp_connections_opened_total Proxied TCP connections opened.\n")
	want.WriteString("# TYPE trellis_tcp_connections_opened_total counter\n")
	want.WriteString("trellis_tcp_connections_opened_total{" + tls + "} 1\n")
	want.WriteString("# HELP trellis_tcp_connections_closed_total Proxied TCP connections closed.\n")
	want.WriteString("# TYPE trellis_tcp_connections_closed_total counter\n")
	want.WriteString("trellis_tcp_connections_closed_total{" + tls + "} 0\n")
	want.WriteString("# HELP trellis_connections_refused_total Connections refused before any request was read, by direction and reason.\n")
	want.WriteString("# TYPE trellis_connections_refused_total counter\n")
	want.WriteString(`trellis_connections_refused_total{direction="inbound",reason="plaintext"} 1` + "\n")

	if diff := cmp.Diff(want.String(), scrape(t, m)); diff != "" {
		t.Errorf("exposition (-want +got):\n%s", diff)
	}
}

func TestWritePrometheusValues(t *testing.T) {
	m := NewMetrics()
	ok := Labels{Direction: "inbound", SourceWorkload: "bookbuyer", DestinationService: "bookstore", ResponseCode: "200", TLS: "true"}
	fail := Labels{Direction: "inbound", SourceWorkload: "bookbuyer", DestinationService: "bookstore", ResponseCode: "503", TLS: "true", Reason: "no_endpoints"}
	grpc := Labels{Direction: "outbound", DestinationService: "warehouse", ResponseCode: "200", GRPCStatus: "14", TLS: "true"}
	for range 3 {
		m.Request(ok, 2*time.Millisecond)
	}
	m.Request(fail, 0)
	m.Request(grpc, 20*time.Millisecond)
	tcpIn := Labels{Direction: "inbound", DestinationService: "mysql", TLS: "true"}
	tcpOut := Labels{Direction: "outbound", DestinationService: "mysql", TLS: "true"}
	m.ConnOpened(tcpIn)
	m.TCP(tcpIn, 100, 250)
	m.TCP(tcpIn, 1, -5) // negative counts are ignored
	m.ConnClosed(tcpIn)
	m.ConnOpened(tcpOut)
	m.ConnOpened(tcpOut)
	m.Refused("inbound", "plaintext")
	m.Refused("inbound", "plaintext")
	m.Refused("outbound", "untrusted_certificate")

	fams := parseExposition(t, scrape(t, m))

	// Series are sorted by label values in label order: direction first,
	// then source_workload, ..., response_code.
	wantReqs := []counterSample{
		{allLabels(ok), 3},
		{allLabels(fail), 1},
		{allLabels(grpc), 1},
	}
	if diff := cmp.Diff(wantReqs, counters(t, fams, "trellis_requests_total")); diff != "" {
		t.Errorf("trellis_requests_total (-want +got):\n%s", diff)
	}

	tcpWant := map[string][]counterSample{
		"trellis_tcp_sent_bytes_total":         {{allLabels(tcpIn), 101}, {allLabels(tcpOut), 0}},
		"trellis_tcp_received_bytes_total":     {{allLabels(tcpIn), 250}, {allLabels(tcpOut), 0}},
		"trellis_tcp_connections_opened_total": {{allLabels(tcpIn), 1}, {allLabels(tcpOut), 2}},
		"trellis_tcp_connections_closed_total": {{allLabels(tcpIn), 1}, {allLabels(tcpOut), 0}},
	}
	for name, want := range tcpWant {
		if diff := cmp.Diff(want, counters(t, fams, name)); diff != "" {
			t.Errorf("%s (-want +got):\n%s", name, diff)
		}
	}

	wantRefused := []counterSample{
		{map[string]string{"direction": "inbound", "reason": "plaintext"}, 2},
		{map[string]string{"direction": "outbound", "reason": "untrusted_certificate"}, 1},
	}
	if diff := cmp.Diff(wantRefused, counters(t, fams, "trellis_connections_refused_total")); diff != "" {
		t.Errorf("trellis_connections_refused_total (-want +got):\n%s", diff)
	}

	for name, f := range fams {
		if f.GetHelp() == "" {
			t.Errorf("family %s has no HELP", name)
		}
	}
}

func TestWritePrometheusEmpty(t *testing.T) {
	text := scrape(t, NewMetrics())
	fams := parseExposition(t, text)
	for _, name := range []string{
		"trellis_requests_total", "trellis_request_duration_seconds",
		"trellis_tcp_sent_bytes_total", "trellis_tcp_received_bytes_total",
		"trellis_tcp_connections_opened_total", "trellis_tcp_connections_closed_total",
		"trellis_connections_refused_total",
	} {
		if !strings.Contains(text, "# TYPE "+name+" ") {
			t.Errorf("empty exposition lacks TYPE line for %s", name)
		}
		if f := fams[name]; f != nil && len(f.GetMetric()) != 0 {
			t.Errorf("empty exposition has %d series of %s", len(f.GetMetric()), name)
		}
	}
}

func TestLabelEscaping(t *testing.T) {
	tests := []struct {
		name  string
		value string
		want  string // value as Prometheus reads it back
		raw   string // value as written between the quotes
	}{
		{"plain", "GET /books", "GET /books", `GET /books`},
		{"quote", `say "hi"`, `say "hi"`, `say \"hi\"`},
		{"backslash", `C:\path\`, `C:\path\`, `C:\\path\\`},
		{"newline", "a\nb", "a\nb", `a\nb`},
		{"tab and unicode kept", "a\tü→", "a\tü→", "a\tü→"},
		{"invalid UTF-8 replaced", "a\xffb\xc3", "a\uFFFDb\uFFFD", "a\uFFFDb\uFFFD"},
		{"brace and comma", `x},y="z`, `x},y="z`, `x},y=\"z`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := NewMetrics()
			l := Labels{Direction: "outbound", Route: tt.value}
			m.Request(l, time.Millisecond)
			m.Refused("inbound", tt.value)
			text := scrape(t, m)
			if !strings.Contains(text, `route="`+tt.raw+`"`) {
				t.Errorf("exposition lacks route=%q:\n%s", tt.raw, text)
			}
			fams := parseExposition(t, text)
			reqs := counters(t, fams, "trellis_requests_total")
			if len(reqs) != 1 {
				t.Fatalf("got %d request series, want 1", len(reqs))
			}
			if got := reqs[0].Labels["route"]; got != tt.want {
				t.Errorf("route read back = %q, want %q", got, tt.want)
			}
			for _, h := range histograms(t, fams, "trellis_request_duration_seconds") {
				if got := h.Labels["route"]; got != tt.want {
					t.Errorf("histogram route read back = %q, want %q", got, tt.want)
				}
			}
			ref := counters(t, fams, "trellis_connections_refused_total")
			if len(ref) != 1 || ref[0].Labels["reason"] != tt.want {
				t.Errorf("refused series = %+v, want reason %q", ref, tt.want)
			}
		})
	}
}

// FuzzLabelValue checks that any label value yields an exposition that
// Prometheus parses and that reads back as the value, with invalid UTF-8
// bytes replaced one by one with U+FFFD.
func FuzzLabelValue(f *testing.F) {
	for _, s := range []string{"", `"`, `\`, "\n", "\\n", "\xff", "é", "}", "\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		m := NewMetrics()
		m.Request(Labels{Route: v}, time.Millisecond)
		p := expfmt.NewTextParser(model.UTF8Validation)
		var b bytes.Buffer
		if err := m.WritePrometheus(&b); err != nil {
			t.Fatal(err)
		}
		fams, err := p.TextToMetricFamilies(&b)
		if err != nil {
			t.Fatalf("route %q: exposition does not parse: %v", v, err)
		}
		ms := fams["trellis_requests_total"].GetMetric()
		if len(ms) != 1 {
			t.Fatalf("route %q: %d series, want 1", v, len(ms))
		}
		if got, want := labelMap(ms[0])["route"], string([]rune(v)); got != want {
			t.Errorf("route read back = %q, want %q", got, want)
		}
	})
}

func TestStableOrder(t *testing.T) {
	var ls []Labels
	for _, dir := range []string{"outbound", "inbound"} {
		for _, code := range []string{"503", "200", "404"} {
			for _, src := range []string{"b", "a", ""} {
				ls = append(ls, Labels{Direction: dir, SourceWorkload: src, ResponseCode: code})
			}
		}
	}
	forward, backward := NewMetrics(), NewMetrics()
	for i := range ls {
		forward.Request(ls[i], time.Millisecond)
		forward.Refused(ls[i].Direction, ls[i].ResponseCode)
		backward.Request(ls[len(ls)-1-i], time.Millisecond)
		backward.Refused(ls[len(ls)-1-i].Direction, ls[len(ls)-1-i].ResponseCode)
	}
	a, b := scrape(t, forward), scrape(t, backward)
	if a != b {
		t.Fatalf("exposition depends on insertion order:\n%s", cmp.Diff(a, b))
	}
	if again := scrape(t, forward); again != a {
		t.Fatalf("two scrapes differ:\n%s", cmp.Diff(a, again))
	}
	fams := parseExposition(t, a)
	var got []string
	for _, c := range counters(t, fams, "trellis_requests_total") {
		got = append(got, c.Labels["direction"]+"/"+c.Labels["source_workload"]+"/"+c.Labels["response_code"])
	}
	want := []string{
		"inbound//200", "inbound//404", "inbound//503",
		"inbound/a/200", "inbound/a/404", "inbound/a/503",
		"inbound/b/200", "inbound/b/404", "inbound/b/503",
		"outbound//200", "outbound//404", "outbound//503",
		"outbound/a/200", "outbound/a/404", "outbound/a/503",
		"outbound/b/200", "outbound/b/404", "outbound/b/503",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("series order (-want +got):\n%s", diff)
	}
}

func TestConcurrentRequests(t *testing.T) {
	const goroutines, perG = 16, 500
	m := NewMetrics()
	labels := []Labels{
		{Direction: "inbound", ResponseCode: "200"},
		{Direction: "inbound", ResponseCode: "500"},
		{Direction: "outbound", ResponseCode: "200"},
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	scraped := make(chan error, 1)
	go func() { // scrape while requests are recorded
		var err error
		for {
			select {
			case <-stop:
				scraped <- err
				return
			default:
			}
			var b bytes.Buffer
			if werr := m.WritePrometheus(&b); werr != nil {
				err = werr
			}
			p := expfmt.NewTextParser(model.UTF8Validation)
			if _, perr := p.TextToMetricFamilies(&b); perr != nil {
				err = perr
			}
		}
	}()
	for g := range goroutines {
		wg.Go(func() {
			for i := range perG {
				l := labels[(g+i)%len(labels)]
				m.Request(l, time.Duration(i)*time.Millisecond)
				m.ConnOpened(l)
				m.TCP(l, 2, 3)
				m.Refused(l.Direction, "plaintext")
			}
		})
	}
	wg.Wait()
	close(stop)
	if err := <-scraped; err != nil {
		t.Errorf("scrape during recording: %v", err)
	}

	fams := parseExposition(t, scrape(t, m))
	sum := func(name string) float64 {
		var s float64
		for _, c := range counters(t, fams, name) {
			s += c.Value
		}
		return s
	}
	const total = goroutines * perG
	for name, want := range map[string]float64{
		"trellis_requests_total":               total,
		"trellis_tcp_connections_opened_total": total,
		"trellis_tcp_sent_bytes_total":         2 * total,
		"trellis_tcp_received_bytes_total":     3 * total,
		"trellis_connections_refused_total":    total,
	} {
		if got := sum(name); got != want {
			t.Errorf("sum of %s = %v, want %v", name, got, want)
		}
	}
	var count uint64
	var durSum float64
	for _, h := range histograms(t, fams, "trellis_request_duration_seconds") {
		count += h.Count
		durSum += h.Sum
	}
	if count != total {
		t.Errorf("histogram count = %d, want %d", count, total)
	}
	// Each goroutine observes 0..perG-1 milliseconds.
	if want := float64(goroutines) * float64(perG*(perG-1)/2) / 1000; math.Abs(durSum-want) > 1e-6 {
		t.Errorf("histogram sum = %v, want %v", durSum, want)
	}
}

func TestHotPathDoesNotAllocate(t *testing.T) {
	m := NewMetrics()
	l := Labels{Direction: "inbound", SourceWorkload: "bookbuyer", DestinationService: "bookstore", ResponseCode: "200", TLS: "true"}
	// First sight creates the series.
	m.Request(l, time.Millisecond)
	m.ConnOpened(l)
	m.Refused("inbound", "plaintext")
	for name, f := range map[string]func(){
		"Request":    func() { m.Request(l, 3*time.Millisecond) },
		"TCP":        func() { m.TCP(l, 10, 20) },
		"ConnOpened": func() { m.ConnOpened(l) },
		"ConnClosed": func() { m.ConnClosed(l) },
		"Refused":    func() { m.Refused("inbound", "plaintext") },
	} {
		if got := testing.AllocsPerRun(100, f); got != 0 {
			t.Errorf("%s allocates %v times per call on a known series, want 0", name, got)
		}
	}
}

type failingWriter struct{ err error }

func (w failingWriter) Write([]byte) (int, error) { return 0, w.err }

func TestWritePrometheusReturnsWriteError(t *testing.T) {
	m := NewMetrics()
	m.Request(Labels{Direction: "inbound"}, time.Millisecond)
	boom := errors.New("connection reset")
	if err := m.WritePrometheus(failingWriter{boom}); !errors.Is(err, boom) {
		t.Errorf("WritePrometheus error = %v, want %v", err, boom)
	}
}

func TestWritePrometheusManySeries(t *testing.T) {
	// More series than one flush holds, to cover writing in chunks.
	m := NewMetrics()
	const n = 500
	for i := range n {
		m.Request(Labels{Direction: "inbound", SourceWorkload: fmt.Sprintf("w%04d", i)}, time.Millisecond)
	}
	text := scrape(t, m)
	if len(text) < 2*flushSize {
		t.Fatalf("exposition is %d bytes, want over %d to exercise chunking", len(text), 2*flushSize)
	}
	fams := parseExposition(t, text)
	if got := len(fams["trellis_requests_total"].GetMetric()); got != n {
		t.Errorf("got %d request series, want %d", got, n)
	}
	if got := len(fams["trellis_request_duration_seconds"].GetMetric()); got != n {
		t.Errorf("got %d histogram series, want %d", got, n)
	}
}

func BenchmarkRequest(b *testing.B) {
	m := NewMetrics()
	l := Labels{Direction: "outbound", SourceWorkload: "bookbuyer", SourceNamespace: "bookbuyer",
		DestinationService: "bookstore", DestinationWorkload: "bookstore-v1", DestinationNamespace: "bookstore",
		Route: "books", ResponseCode: "200", TLS: "true"}
	m.Request(l, time.Millisecond)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.Request(l, 3*time.Millisecond)
		}
	})
}

func BenchmarkWritePrometheus(b *testing.B) {
	m := NewMetrics()
	for i := range 100 {
		m.Request(Labels{Direction: "inbound", SourceWorkload: fmt.Sprintf("w%03d", i), ResponseCode: "200"}, time.Millisecond)
	}
	var buf bytes.Buffer
	b.ReportAllocs()
	for b.Loop() {
		buf.Reset()
		if err := m.WritePrometheus(&buf); err != nil {
			b.Fatal(err)
		}
	}
}
