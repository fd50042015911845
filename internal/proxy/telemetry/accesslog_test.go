package telemetry

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/trellis-mesh/trellis/internal/syncbuf"
)

func decodeLine(t *testing.T, line []byte) map[string]any {
	t.Helper()
	var got map[string]any
	if err := json.Unmarshal(line, &got); err != nil {
		t.Fatalf("line is not valid JSON: %v\n%q", err, line)
	}
	return got
}

func TestAccessLogFields(t *testing.T) {
	start := time.Date(2026, 11, 3, 14, 5, 6, 123456789, time.FixedZone("CET", 3600))
	tests := []struct {
		name  string
		entry Entry
		want  map[string]any
	}{
		{
			name: "HTTP request",
			entry: Entry{
				Time: start, Direction: "outbound", Method: "GET", Authority: "bookstore.bookstore:14001",
				Path: "/books?x=1", Protocol: "HTTP/1.1", Status: 200, Duration: 1234567 * time.Nanosecond,
				BytesSent: 512, BytesReceived: 64, Source: "spiffe://cluster.local/ns/bookbuyer/sa/bookbuyer",
				DestinationService: "bookstore", DestinationWorkload: "bookstore-v1", Upstream: "10.1.2.3:14001",
				Route: "books", RequestID: "abc-123", UserAgent: "curl/8.0",
			},
			want: map[string]any{
				"time": "2026-11-03T13:05:06.123456789Z", "direction": "outbound", "method": "GET",
				"authority": "bookstore.bookstore:14001", "path": "/books?x=1", "protocol": "HTTP/1.1",
				"status": 200.0, "duration_ms": 1.234567, "bytes_sent": 512.0, "bytes_received": 64.0,
				"source": "spiffe://cluster.local/ns/bookbuyer/sa/bookbuyer", "destination_service": "bookstore",
				"destination_workload": "bookstore-v1", "upstream": "10.1.2.3:14001", "route": "books",
				"request_id": "abc-123", "user_agent": "curl/8.0",
			},
		},
		{
			name: "failure the proxy produced carries its reason",
			entry: Entry{
				Time: start, Direction: "inbound", Method: "POST", Path: "/", Protocol: "HTTP/2",
				Status: 403, Reason: "denied", Duration: 0,
			},
			want: map[string]any{
				"time": "2026-11-03T13:05:06.123456789Z", "direction": "inbound", "method": "POST",
				"authority": "", "path": "/", "protocol": "HTTP/2", "status": 403.0, "duration_ms": 0.0,
				"bytes_sent": 0.0, "bytes_received": 0.0, "source": "", "destination_service": "",
				"destination_workload": "", "upstream": "", "route": "", "reason": "denied",
				"request_id": "", "user_agent": "",
			},
		},
		{
			name: "tricky strings",
			entry: Entry{
				Time:      start,
				Path:      `/a"b\c` + "\n\r\t\x00\x1f\x7f",
				UserAgent: "bad\xff\xfeutf8 é \u2028 \u2029 😀",
				RequestID: "</script>&",
				Method:    "\x01",
			},
			want: map[string]any{
				"time": "2026-11-03T13:05:06.123456789Z", "direction": "", "method": "\x01",
				"authority": "", "path": `/a"b\c` + "\n\r\t\x00\x1f\x7f", "protocol": "", "status": 0.0,
				"duration_ms": 0.0, "bytes_sent": 0.0, "bytes_received": 0.0, "source": "",
				"destination_service": "", "destination_workload": "", "upstream": "", "route": "",
				"request_id": "</script>&", "user_agent": "bad\uFFFD\uFFFDutf8 é \u2028 \u2029 😀",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			NewAccessLog(&b).Log(&tt.entry)
			out := b.Bytes()
			if n := bytes.Count(out, []byte("\n")); n != 1 || out[len(out)-1] != '\n' {
				t.Fatalf("got %d newlines, want exactly one at the end: %q", n, out)
			}
			if diff := cmp.Diff(tt.want, decodeLine(t, out)); diff != "" {
				t.Errorf("fields (-want +got):\n%s", diff)
			}
		})
	}
}

func TestAccessLogFieldOrder(t *testing.T) {
	var b bytes.Buffer
	NewAccessLog(&b).Log(&Entry{Time: time.Unix(0, 0), Reason: "timeout"})
	dec := json.NewDecoder(&b)
	if _, err := dec.Token(); err != nil {
		t.Fatal(err)
	}
	var got []string
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, k.(string))
		if _, err := dec.Token(); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{"time", "direction", "method", "authority", "path", "protocol", "status",
		"duration_ms", "bytes_sent", "bytes_received", "source", "destination_service",
		"destination_workload", "upstream", "route", "reason", "request_id", "user_agent"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("field order (-want +got):\n%s", diff)
	}
}

func TestAccessLogZeroTimeIsNow(t *testing.T) {
	var b bytes.Buffer
	before := time.Now()
	NewAccessLog(&b).Log(&Entry{})
	after := time.Now()
	got, err := time.Parse(time.RFC3339Nano, decodeLine(t, b.Bytes())["time"].(string))
	if err != nil {
		t.Fatalf("time is not RFC 3339: %v", err)
	}
	if got.Before(before) || got.After(after) {
		t.Errorf("time = %v, want between %v and %v", got, before, after)
	}
}

// FuzzAccessLogString checks that any string in any field yields one valid
// JSON line that decodes to what encoding/json would have written.
func FuzzAccessLogString(f *testing.F) {
	for _, s := range []string{"", `"`, `\`, "\n", "\x00", "\xff", "\u2028", "é😀", "\xed\xa0\x80"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var b bytes.Buffer
		NewAccessLog(&b).Log(&Entry{Path: s, UserAgent: s, Reason: s})
		line := b.Bytes()
		if bytes.IndexByte(line, '\n') != len(line)-1 {
			t.Fatalf("string %q: newline inside the line: %q", s, line)
		}
		var got struct {
			Path      string `json:"path"`
			UserAgent string `json:"user_agent"`
		}
		if err := json.Unmarshal(line, &got); err != nil {
			t.Fatalf("string %q: invalid JSON: %v\n%q", s, err, line)
		}
		std, _ := json.Marshal(s)
		var want string
		if err := json.Unmarshal(std, &want); err != nil {
			t.Fatal(err)
		}
		if got.Path != want || got.UserAgent != want {
			t.Errorf("string %q decoded as %q / %q, want %q", s, got.Path, got.UserAgent, want)
		}
	})
}

// unsafeBuffer is not safe for concurrent use; the race detector flags the
// access log if it ever writes from two goroutines at once.
type unsafeBuffer struct{ bytes.Buffer }

func TestAccessLogConcurrent(t *testing.T) {
	const goroutines, perG = 8, 200
	w := &unsafeBuffer{}
	a := NewAccessLog(w)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range perG {
				a.Log(&Entry{Path: strings.Repeat("x", g*50+i), Status: 200})
			}
		})
	}
	wg.Wait()
	sc := bufio.NewScanner(strings.NewReader(w.String()))
	sc.Buffer(nil, 1<<20)
	lines := 0
	for sc.Scan() {
		var e struct {
			Status int `json:"status"`
		}
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("line %d is not valid JSON: %v", lines, err)
		}
		if e.Status != 200 {
			t.Fatalf("line %d has status %d, want 200", lines, e.Status)
		}
		lines++
	}
	if lines != goroutines*perG {
		t.Errorf("got %d lines, want %d", lines, goroutines*perG)
	}
	if got := a.Failed(); got != 0 {
		t.Errorf("Failed() = %d, want 0", got)
	}
}

func TestAccessLogOneWritePerLine(t *testing.T) {
	w := &syncbuf.Buffer{}
	a := NewAccessLog(w)
	for range 10 {
		a.Log(&Entry{Path: strings.Repeat("p", 5000)})
	}
	if w.Writes() != 10 {
		t.Errorf("got %d writes for 10 lines, want 10", w.Writes())
	}
}

func TestAccessLogCountsWriteErrors(t *testing.T) {
	a := NewAccessLog(failingWriter{errors.New("disk full")})
	a.Log(&Entry{})
	a.Log(&Entry{})
	if got := a.Failed(); got != 2 {
		t.Errorf("Failed() = %d, want 2", got)
	}
}

func TestAccessLogDoesNotAllocate(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items at random under the race detector")
	}
	a := NewAccessLog(io.Discard)
	e := &Entry{Time: time.Now(), Direction: "outbound", Method: "GET", Authority: "bookstore.bookstore:14001",
		Path: "/books", Protocol: "HTTP/1.1", Status: 200, Duration: 3 * time.Millisecond,
		Source: "spiffe://cluster.local/ns/bookbuyer/sa/bookbuyer", UserAgent: "curl/8.0 \"quoted\""}
	a.Log(e)
	if got := testing.AllocsPerRun(100, func() { a.Log(e) }); got != 0 {
		t.Errorf("Log allocates %v times per line, want 0", got)
	}
}

func BenchmarkAccessLog(b *testing.B) {
	a := NewAccessLog(io.Discard)
	e := &Entry{Time: time.Now(), Direction: "outbound", Method: "GET", Authority: "bookstore.bookstore:14001",
		Path: "/books", Protocol: "HTTP/1.1", Status: 200, Duration: 3 * time.Millisecond, BytesSent: 512,
		Source: "spiffe://cluster.local/ns/bookbuyer/sa/bookbuyer", DestinationService: "bookstore",
		DestinationWorkload: "bookstore-v1", Upstream: "127.0.0.1:14001", Route: "books",
		RequestID: "0f6c1a9e-3b1d-4c55-9d6e-2a7f0e8b9c11", UserAgent: "Go-http-client/1.1"}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			a.Log(e)
		}
	})
}

func TestAccessLogEveryGathersLines(t *testing.T) {
	w := &syncbuf.Buffer{}
	a := NewAccessLogEvery(w, time.Hour)
	for i := range 10 {
		a.Log(&Entry{Status: 200 + i})
	}
	if got := w.String(); got != "" {
		t.Fatalf("before Flush, the writer got %q; want nothing yet", got)
	}
	a.Flush()
	lines := strings.Split(strings.TrimSuffix(w.String(), "\n"), "\n")
	if len(lines) != 10 || w.Writes() != 1 {
		t.Fatalf("after Flush: %d lines in %d writes, want 10 in 1", len(lines), w.Writes())
	}
	for i, l := range lines {
		if want := fmt.Sprintf(`"status":%d,`, 200+i); !strings.Contains(l, want) {
			t.Errorf("line %d = %s, want it to hold %s (lines in order)", i, l, want)
		}
	}
	a.Flush()
	if w.Writes() != 1 {
		t.Errorf("a Flush with nothing waiting wrote: %d writes, want 1", w.Writes())
	}
}

func TestAccessLogEveryWritesWithinTheInterval(t *testing.T) {
	w := &syncbuf.Buffer{}
	a := NewAccessLogEvery(w, 20*time.Millisecond)
	a.Log(&Entry{Path: "/first"})
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(w.String(), `"path":"/first"`) {
		if time.Now().After(deadline) {
			t.Fatal("the line was not written within 5s of a 20ms interval")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestAccessLogEveryWritesWhenFull(t *testing.T) {
	w := &syncbuf.Buffer{}
	a := NewAccessLogEvery(w, time.Hour)
	for range 20 {
		a.Log(&Entry{Path: strings.Repeat("p", 5000)})
	}
	if w.Writes() == 0 {
		t.Error("100 KB of lines waiting and nothing written: the gathered lines are not bounded")
	}
}

func TestAccessLogEveryCountsWriteErrors(t *testing.T) {
	a := NewAccessLogEvery(failingWriter{errors.New("disk full")}, time.Hour)
	for range 3 {
		a.Log(&Entry{})
	}
	a.Flush()
	if got := a.Failed(); got != 3 {
		t.Errorf("Failed() = %d, want 3", got)
	}
}
