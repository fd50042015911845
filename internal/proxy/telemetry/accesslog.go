package telemetry

import (
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// Entry is one access log record: a finished request, or a finished TCP
// connection with the HTTP fields left empty.
type Entry struct {
	// Time is when the request started; the zero time means now.
	Time      time.Time
	Direction string // "inbound" or "outbound"
	Method    string
	Authority string
	Path      string
	Protocol  string // e.g. "HTTP/1.1", "HTTP/2", "gRPC", "TCP"
	Status    int    // HTTP status sent downstream; 0 when none was sent
	Duration  time.Duration
	// BytesSent and BytesReceived count body bytes sent to and received
	// from the downstream peer.
	BytesSent     int64
	BytesReceived int64
	// Source is the caller's SPIFFE ID, or its workload where it has none.
	Source              string
	DestinationService  string
	DestinationWorkload string
	Upstream            string // address the request was sent to, host:port
	Route               string
	Reason              string // failure the proxy produced; omitted when empty
	RequestID           string // x-request-id, if the request had one
	UserAgent           string
}

// AccessLog writes entries as JSON, one object per line, to an io.Writer.
// Log is safe for concurrent use; each line reaches the writer whole, in a
// single Write call, so lines never interleave.
type AccessLog struct {
	mu     sync.Mutex
	w      io.Writer
	bufs   sync.Pool // *[]byte
	failed atomic.Uint64

	// With a gathering interval (NewAccessLogEvery): lines waiting, the
	// timer that writes them, and the lock that keeps writes in order.
	every   time.Duration
	pending []byte
	lines   uint64 // in pending
	timer   *time.Timer
	writeMu sync.Mutex
}

// NewAccessLog returns an access log that writes to w. The writer is called
// with the log's lock held, so a slow writer slows the callers of Log.
func NewAccessLog(w io.Writer) *AccessLog {
	a := &AccessLog{w: w}
	a.bufs.New = func() any {
		b := make([]byte, 0, 1024)
		return &b
	}
	return a
}

// NewAccessLogEvery returns an access log that gathers lines and writes them
// together, at most every apart (or once 64 KiB wait), so that a busy proxy
// pays one write for many requests rather than one each, as Envoy's file
// access logs do. Flush writes what waits; a line is lost only if the process
// dies within every of logging it. every ≤ 0 is NewAccessLog.
func NewAccessLogEvery(w io.Writer, every time.Duration) *AccessLog {
	a := NewAccessLog(w)
	if every > 0 {
		a.every = every
		a.timer = time.AfterFunc(time.Hour, func() { a.Flush() })
		a.timer.Stop()
	}
	return a
}

// maxPending is how much a gathering log holds before writing at once.
const maxPending = 64 << 10

// Flush writes the lines waiting to be written, if any.
func (a *AccessLog) Flush() {
	a.writeMu.Lock()
	defer a.writeMu.Unlock()
	a.mu.Lock()
	buf, lines := a.pending, a.lines
	a.pending, a.lines = nil, 0
	a.mu.Unlock()
	a.write(buf, lines)
	if cap(buf) <= maxPending*2 {
		a.mu.Lock()
		if a.pending == nil {
			a.pending = buf[:0] // reuse the buffer
		}
		a.mu.Unlock()
	}
}

// write writes lines lines in buf, counting them as failed on an error.
func (a *AccessLog) write(buf []byte, lines uint64) {
	if len(buf) == 0 {
		return
	}
	if _, err := a.w.Write(buf); err != nil {
		a.failed.Add(lines)
	}
}

// Failed reports how many lines could not be written because the writer
// returned an error.
func (a *AccessLog) Failed() uint64 { return a.failed.Load() }

// maxPooledBuffer caps the buffers kept for reuse, so that one huge line does
// not pin its buffer for the life of the proxy.
const maxPooledBuffer = 64 << 10

// Log writes e as one JSON line. Write errors are counted (see Failed), not
// returned: a request is never failed because its log line was lost.
func (a *AccessLog) Log(e *Entry) {
	if a.every > 0 {
		a.mu.Lock()
		first := len(a.pending) == 0
		a.pending = appendEntry(a.pending, e)
		a.lines++
		full := len(a.pending) >= maxPending
		a.mu.Unlock()
		switch {
		case full:
			a.Flush()
		case first:
			a.timer.Reset(a.every)
		}
		return
	}
	bp := a.bufs.Get().(*[]byte)
	buf := appendEntry((*bp)[:0], e)
	a.mu.Lock()
	_, err := a.w.Write(buf)
	a.mu.Unlock()
	if err != nil {
		a.failed.Add(1)
	}
	if cap(buf) <= maxPooledBuffer {
		*bp = buf
		a.bufs.Put(bp)
	}
}

// appendEntry appends e as a JSON object and a newline.
func appendEntry(buf []byte, e *Entry) []byte {
	t := e.Time
	if t.IsZero() {
		t = time.Now()
	}
	buf = append(buf, `{"time":"`...)
	buf = t.UTC().AppendFormat(buf, time.RFC3339Nano)
	buf = append(buf, '"')
	buf = appendStringField(buf, "direction", e.Direction)
	buf = appendStringField(buf, "method", e.Method)
	buf = appendStringField(buf, "authority", e.Authority)
	buf = appendStringField(buf, "path", e.Path)
	buf = appendStringField(buf, "protocol", e.Protocol)
	buf = append(buf, `,"status":`...)
	buf = strconv.AppendInt(buf, int64(e.Status), 10)
	buf = append(buf, `,"duration_ms":`...)
	buf = strconv.AppendFloat(buf, float64(e.Duration)/float64(time.Millisecond), 'f', -1, 64)
	buf = append(buf, `,"bytes_sent":`...)
	buf = strconv.AppendInt(buf, e.BytesSent, 10)
	buf = append(buf, `,"bytes_received":`...)
	buf = strconv.AppendInt(buf, e.BytesReceived, 10)
	buf = appendStringField(buf, "source", e.Source)
	buf = appendStringField(buf, "destination_service", e.DestinationService)
	buf = appendStringField(buf, "destination_workload", e.DestinationWorkload)
	buf = appendStringField(buf, "upstream", e.Upstream)
	buf = appendStringField(buf, "route", e.Route)
	if e.Reason != "" {
		buf = appendStringField(buf, "reason", e.Reason)
	}
	buf = appendStringField(buf, "request_id", e.RequestID)
	buf = appendStringField(buf, "user_agent", e.UserAgent)
	return append(buf, "}\n"...)
}

// appendStringField appends ,"name":"value" with value escaped.
func appendStringField(buf []byte, name, v string) []byte {
	buf = append(buf, `,"`...)
	buf = append(buf, name...)
	buf = append(buf, `":"`...)
	buf = appendJSONString(buf, v)
	return append(buf, '"')
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends the body of a JSON string (no quotes). Quotes,
// backslashes and control characters are escaped; invalid UTF-8 becomes
// U+FFFD; U+2028 and U+2029 are escaped so that the line is also valid
// JavaScript.
func appendJSONString(buf []byte, s string) []byte {
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			buf = append(buf, s[start:i]...)
			switch c {
			case '"', '\\':
				buf = append(buf, '\\', c)
			case '\n':
				buf = append(buf, `\n`...)
			case '\r':
				buf = append(buf, `\r`...)
			case '\t':
				buf = append(buf, `\t`...)
			default:
				buf = append(buf, `\u00`...)
				buf = append(buf, hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			buf = append(buf, s[start:i]...)
			buf = append(buf, `\ufffd`...)
			i++
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			buf = append(buf, s[start:i]...)
			buf = append(buf, `\u202`...)
			buf = append(buf, hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	return append(buf, s[start:]...)
}
