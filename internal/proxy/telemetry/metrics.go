package telemetry

import (
	"cmp"
	"io"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// Labels is the label set of one request or TCP series. It is comparable and
// used as a map key, so building one on the hot path costs no allocation.
// Every field is written as a label, an empty field as an empty value, so that
// every series of a family carries the same label names.
type Labels struct {
	// Direction is "inbound" (the proxy serves its own workload) or
	// "outbound" (the proxy calls another workload).
	Direction            string
	SourceWorkload       string
	SourceNamespace      string
	DestinationService   string
	DestinationWorkload  string
	DestinationNamespace string
	Route                string
	// ResponseCode is the HTTP status code as decimal text, empty when no
	// response was sent.
	ResponseCode string
	// GRPCStatus is the grpc-status of a gRPC response, empty otherwise.
	GRPCStatus string
	// TLS is "true" when the connection to the peer was mutual TLS.
	TLS string
	// Reason names a failure the proxy itself produced (denied, no_endpoints,
	// timeout, circuit_open, rate_limited, ...); empty when the proxy did not
	// fail the request itself.
	Reason string
}

// labelNames are the label names of Labels, in the order they are written and
// sorted by.
var labelNames = [...]string{
	"direction",
	"source_workload",
	"source_namespace",
	"destination_service",
	"destination_workload",
	"destination_namespace",
	"route",
	"response_code",
	"grpc_status",
	"tls",
	"reason",
}

func (l *Labels) values() [len(labelNames)]string {
	return [...]string{
		l.Direction,
		l.SourceWorkload,
		l.SourceNamespace,
		l.DestinationService,
		l.DestinationWorkload,
		l.DestinationNamespace,
		l.Route,
		l.ResponseCode,
		l.GRPCStatus,
		l.TLS,
		l.Reason,
	}
}

// compareLabels orders label sets field by field, in labelNames order.
func compareLabels(a, b *Labels) int {
	av, bv := a.values(), b.values()
	for i := range av {
		if c := cmp.Compare(av[i], bv[i]); c != 0 {
			return c
		}
	}
	return 0
}

// durationBounds are the upper bounds of the request duration histogram's
// buckets; a last, implicit bucket holds everything above the last bound.
var durationBounds = [...]time.Duration{
	500 * time.Microsecond,
	time.Millisecond,
	2500 * time.Microsecond,
	5 * time.Millisecond,
	10 * time.Millisecond,
	25 * time.Millisecond,
	50 * time.Millisecond,
	100 * time.Millisecond,
	250 * time.Millisecond,
	500 * time.Millisecond,
	time.Second,
	2500 * time.Millisecond,
	5 * time.Second,
	10 * time.Second,
}

// requestSeries holds the counters of one request label set. The request
// count is the sum of the buckets, so recording a request costs two atomic
// additions.
type requestSeries struct {
	labels string // formatted label pairs, without braces
	// buckets counts observations per bucket, not cumulatively; the last
	// element counts those above every bound.
	buckets  [len(durationBounds) + 1]atomic.Uint64
	sumNanos atomic.Int64
}

func (s *requestSeries) observe(d time.Duration) {
	if d < 0 {
		d = 0
	}
	i := 0
	for i < len(durationBounds) && d > durationBounds[i] {
		i++
	}
	s.buckets[i].Add(1)
	s.sumNanos.Add(int64(d))
}

// tcpSeries holds the counters of one TCP label set.
type tcpSeries struct {
	labels   string
	sent     atomic.Uint64
	received atomic.Uint64
	opened   atomic.Uint64
	closed   atomic.Uint64
}

type refusedKey struct{ direction, reason string }

// Metrics holds the proxy's series. The zero value is not usable; call
// NewMetrics. All methods are safe for concurrent use. Series are created on
// first sight of a label set and kept for the life of the proxy.
type Metrics struct {
	reqMu    sync.RWMutex
	requests map[Labels]*requestSeries

	tcpMu sync.RWMutex
	tcp   map[Labels]*tcpSeries

	refusedMu sync.RWMutex
	refused   map[refusedKey]*atomic.Uint64
}

// NewMetrics returns an empty set of series.
func NewMetrics() *Metrics {
	return &Metrics{
		requests: make(map[Labels]*requestSeries),
		tcp:      make(map[Labels]*tcpSeries),
		refused:  make(map[refusedKey]*atomic.Uint64),
	}
}

// Request counts one finished request in trellis_requests_total and observes
// its duration in trellis_request_duration_seconds. A negative duration is
// observed as zero.
func (m *Metrics) Request(l Labels, d time.Duration) {
	m.requestSeries(&l).observe(d)
}

func (m *Metrics) requestSeries(l *Labels) *requestSeries {
	m.reqMu.RLock()
	s := m.requests[*l]
	m.reqMu.RUnlock()
	if s != nil {
		return s
	}
	m.reqMu.Lock()
	defer m.reqMu.Unlock()
	if s = m.requests[*l]; s == nil {
		s = &requestSeries{labels: formatLabels(l)}
		m.requests[*l] = s
	}
	return s
}

// TCP adds bytes sent and received on a TCP connection to
// trellis_tcp_sent_bytes_total and trellis_tcp_received_bytes_total. It may be
// called many times per connection; negative counts are ignored.
func (m *Metrics) TCP(l Labels, sent, received int64) {
	s := m.tcpSeries(&l)
	if sent > 0 {
		s.sent.Add(uint64(sent))
	}
	if received > 0 {
		s.received.Add(uint64(received))
	}
}

// ConnOpened counts a TCP connection opened, in
// trellis_tcp_connections_opened_total.
func (m *Metrics) ConnOpened(l Labels) {
	m.tcpSeries(&l).opened.Add(1)
}

// ConnClosed counts a TCP connection closed, in
// trellis_tcp_connections_closed_total.
func (m *Metrics) ConnClosed(l Labels) {
	m.tcpSeries(&l).closed.Add(1)
}

func (m *Metrics) tcpSeries(l *Labels) *tcpSeries {
	m.tcpMu.RLock()
	s := m.tcp[*l]
	m.tcpMu.RUnlock()
	if s != nil {
		return s
	}
	m.tcpMu.Lock()
	defer m.tcpMu.Unlock()
	if s = m.tcp[*l]; s == nil {
		s = &tcpSeries{labels: formatLabels(l)}
		m.tcp[*l] = s
	}
	return s
}

// Refused counts a connection refused before any request was read, in
// trellis_connections_refused_total{direction,reason}; reason is a short
// snake_case word such as "plaintext" or "untrusted_certificate".
func (m *Metrics) Refused(direction, reason string) {
	k := refusedKey{direction, reason}
	m.refusedMu.RLock()
	c := m.refused[k]
	m.refusedMu.RUnlock()
	if c == nil {
		m.refusedMu.Lock()
		if c = m.refused[k]; c == nil {
			c = new(atomic.Uint64)
			m.refused[k] = c
		}
		m.refusedMu.Unlock()
	}
	c.Add(1)
}

// Metric family names and their help.
const (
	requestsName  = "trellis_requests_total"
	durationName  = "trellis_request_duration_seconds"
	sentName      = "trellis_tcp_sent_bytes_total"
	receivedName  = "trellis_tcp_received_bytes_total"
	openedName    = "trellis_tcp_connections_opened_total"
	closedName    = "trellis_tcp_connections_closed_total"
	refusedName   = "trellis_connections_refused_total"
	requestsHelp  = "Requests handled by this proxy, by direction, peers, route and outcome."
	durationHelp  = "Time from the start of a request to the end of its response, in seconds."
	sentHelp      = "Bytes sent on proxied TCP connections."
	receivedHelp  = "Bytes received on proxied TCP connections."
	openedHelp    = "Proxied TCP connections opened."
	closedHelp    = "Proxied TCP connections closed."
	refusedHelp   = "Connections refused before any request was read, by direction and reason."
	counterType   = "counter"
	histogramType = "histogram"

	// flushSize is how much exposition text is buffered before it is
	// written out.
	flushSize = 32 << 10
)

// boundTexts are the le label values of the duration buckets, +Inf last, as
// the shortest decimal of each bound in seconds.
var boundTexts = [len(durationBounds) + 1]string{
	"0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05",
	"0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf",
}

// WritePrometheus writes every series in the Prometheus text exposition
// format 0.0.4, families in a fixed order and series sorted by label values.
// Families with no series are written with their HELP and TYPE lines only.
func (m *Metrics) WritePrometheus(w io.Writer) error {
	ew := &exposition{w: w}
	buf := make([]byte, 0, flushSize+4<<10)

	reqs := sortedSeries(&m.reqMu, m.requests)
	buf = appendHeader(buf, requestsName, requestsHelp, counterType)
	counts := make([]uint64, len(reqs))
	for i, e := range reqs {
		for b := range e.s.buckets {
			counts[i] += e.s.buckets[b].Load()
		}
		buf = appendSample(buf, requestsName, e.s.labels, "", counts[i])
		buf = ew.flushIfLarge(buf)
	}
	buf = appendHeader(buf, durationName, durationHelp, histogramType)
	for _, e := range reqs {
		var cum uint64
		for b := range e.s.buckets {
			cum += e.s.buckets[b].Load()
			buf = appendSample(buf, durationName+"_bucket", e.s.labels, boundTexts[b], cum)
		}
		buf = append(buf, durationName+"_sum{"...)
		buf = append(buf, e.s.labels...)
		buf = append(buf, "} "...)
		buf = strconv.AppendFloat(buf, float64(e.s.sumNanos.Load())/1e9, 'g', -1, 64)
		buf = append(buf, '\n')
		// The count is the +Inf bucket as read above, so that the two agree
		// even while requests are being recorded.
		buf = appendSample(buf, durationName+"_count", e.s.labels, "", cum)
		buf = ew.flushIfLarge(buf)
	}

	tcp := sortedSeries(&m.tcpMu, m.tcp)
	for _, f := range []struct {
		name, help string
		value      func(*tcpSeries) uint64
	}{
		{sentName, sentHelp, func(s *tcpSeries) uint64 { return s.sent.Load() }},
		{receivedName, receivedHelp, func(s *tcpSeries) uint64 { return s.received.Load() }},
		{openedName, openedHelp, func(s *tcpSeries) uint64 { return s.opened.Load() }},
		{closedName, closedHelp, func(s *tcpSeries) uint64 { return s.closed.Load() }},
	} {
		buf = appendHeader(buf, f.name, f.help, counterType)
		for _, e := range tcp {
			buf = appendSample(buf, f.name, e.s.labels, "", f.value(e.s))
			buf = ew.flushIfLarge(buf)
		}
	}

	m.refusedMu.RLock()
	refused := make([]refusedKey, 0, len(m.refused))
	values := make(map[refusedKey]uint64, len(m.refused))
	for k, c := range m.refused {
		refused = append(refused, k)
		values[k] = c.Load()
	}
	m.refusedMu.RUnlock()
	slices.SortFunc(refused, func(a, b refusedKey) int {
		return cmp.Or(cmp.Compare(a.direction, b.direction), cmp.Compare(a.reason, b.reason))
	})
	buf = appendHeader(buf, refusedName, refusedHelp, counterType)
	for _, k := range refused {
		buf = append(buf, refusedName+`{direction="`...)
		buf = appendLabelValue(buf, k.direction)
		buf = append(buf, `",reason="`...)
		buf = appendLabelValue(buf, k.reason)
		buf = append(buf, `"} `...)
		buf = strconv.AppendUint(buf, values[k], 10)
		buf = append(buf, '\n')
	}

	ew.write(buf)
	return ew.err
}

type entry[S any] struct {
	l Labels
	s S
}

// sortedSeries copies a family's series under its read lock and sorts them by
// label values.
func sortedSeries[S any](mu *sync.RWMutex, m map[Labels]S) []entry[S] {
	mu.RLock()
	out := make([]entry[S], 0, len(m))
	for l, s := range m {
		out = append(out, entry[S]{l, s})
	}
	mu.RUnlock()
	slices.SortFunc(out, func(a, b entry[S]) int { return compareLabels(&a.l, &b.l) })
	return out
}

// exposition writes text to w in chunks of about flushSize, so that a scrape
// of many series does not hold them all in memory, and keeps the first error.
type exposition struct {
	w   io.Writer
	err error
}

func (e *exposition) write(buf []byte) {
	if e.err == nil && len(buf) > 0 {
		_, e.err = e.w.Write(buf)
	}
}

// flushIfLarge writes buf out once it has reached flushSize and returns it
// emptied for reuse; otherwise it returns buf as is.
func (e *exposition) flushIfLarge(buf []byte) []byte {
	if len(buf) < flushSize {
		return buf
	}
	e.write(buf)
	return buf[:0]
}

func appendHeader(buf []byte, name, help, typ string) []byte {
	buf = append(buf, "# HELP "...)
	buf = append(buf, name...)
	buf = append(buf, ' ')
	buf = append(buf, help...)
	buf = append(buf, "\n# TYPE "...)
	buf = append(buf, name...)
	buf = append(buf, ' ')
	buf = append(buf, typ...)
	return append(buf, '\n')
}

// appendSample appends one sample line; le, when not empty, is added as the
// last label.
func appendSample(buf []byte, name, labels, le string, v uint64) []byte {
	buf = append(buf, name...)
	buf = append(buf, '{')
	buf = append(buf, labels...)
	if le != "" {
		buf = append(buf, `,le="`...)
		buf = append(buf, le...)
		buf = append(buf, '"')
	}
	buf = append(buf, "} "...)
	buf = strconv.AppendUint(buf, v, 10)
	return append(buf, '\n')
}

// formatLabels formats every label of l as name="value" pairs separated by
// commas, without braces. It runs once per new series.
func formatLabels(l *Labels) string {
	var buf []byte
	for i, v := range l.values() {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, labelNames[i]...)
		buf = append(buf, `="`...)
		buf = appendLabelValue(buf, v)
		buf = append(buf, '"')
	}
	return string(buf)
}

// appendLabelValue escapes a label value as the text format requires
// (backslash, double quote and newline) and replaces invalid UTF-8, which
// Prometheus rejects, with U+FFFD.
func appendLabelValue(buf []byte, v string) []byte {
	for i := 0; i < len(v); {
		c := v[i]
		if c < utf8.RuneSelf {
			switch c {
			case '\\':
				buf = append(buf, `\\`...)
			case '"':
				buf = append(buf, `\"`...)
			case '\n':
				buf = append(buf, `\n`...)
			default:
				buf = append(buf, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(v[i:])
		if r == utf8.RuneError && size == 1 {
			buf = utf8.AppendRune(buf, utf8.RuneError)
		} else {
			buf = append(buf, v[i:i+size]...)
		}
		i += size
	}
	return buf
}
