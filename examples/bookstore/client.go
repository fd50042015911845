package bookstore

import (
	"context"
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// ClientStats is what bookbuyer and bookthief serve at GET /stats.
type ClientStats struct {
	App string `json:"app"`
	// Total counts the calls made; Total = OK + Denied + Failed.
	Total int64 `json:"total"`
	// OK counts 2xx responses.
	OK int64 `json:"ok"`
	// Denied counts responses the sidecar refused with x-trellis-reason: denied.
	Denied int64 `json:"denied"`
	// Failed counts other non-2xx responses and transport errors.
	Failed int64 `json:"failed"`
	// Reasons counts the calls that were not 2xx by cause: the x-trellis-reason
	// value, "status_<code>" for a refusal without one, or "error" for a transport
	// error.
	Reasons map[string]int64 `json:"reasons"`
	// ServedBy counts responses by the bookstore that produced them (its identity
	// header, such as "bookstore-v1").
	ServedBy map[string]int64 `json:"served_by"`
}

// outcome is how one call ended.
type outcome struct {
	ok     bool
	denied bool
	// reason is why a call was not 2xx; empty when ok.
	reason string
	// servedBy is the identity header of the response, if any.
	servedBy string
	// status is the HTTP status code; 0 for a transport error.
	status int
}

// classify turns a response into an outcome.
func classify(status int, h http.Header) outcome {
	o := outcome{status: status, servedBy: h.Get(headerIdentity)}
	reason := h.Get(headerReason)
	switch {
	case status >= 200 && status < 300:
		o.ok = true
	case reason != "":
		o.reason = reason
		o.denied = reason == "denied"
	default:
		o.reason = "status_" + strconv.Itoa(status)
	}
	return o
}

// clientConfig configures a bookbuyer or bookthief.
type clientConfig struct {
	// App is "bookbuyer" or "bookthief": the client-app header sent and the name in
	// the stats.
	App string
	// Bookstore is the base URL of the bookstore, without a trailing slash.
	Bookstore string
	// Interval is the pause between calls.
	Interval time.Duration
	Log      *slog.Logger
}

// client calls the bookstore in a loop and counts what happens.
type client struct {
	cfg  clientConfig
	http *http.Client
	page *template.Template

	mu    sync.Mutex
	stats ClientStats
}

func newClient(cfg clientConfig) (*client, error) {
	page, err := template.New("client").Parse(clientPage)
	if err != nil {
		return nil, fmt.Errorf("%s: parse the status page: %w", cfg.App, err)
	}
	return &client{
		cfg:   cfg,
		http:  newHTTPClient(),
		page:  page,
		stats: ClientStats{App: cfg.App, Reasons: map[string]int64{}, ServedBy: map[string]int64{}},
	}, nil
}

func runClient(ctx context.Context, app string, args []string, stdout, stderr io.Writer, log *slog.Logger) error {
	fs := newFlagSet(app, "Calls GET <bookstore>/books-bought and GET <bookstore>/buy-a-book/new in turn, with\n"+
		"the header client-app: "+app+", through the proxy HTTP_PROXY names, and serves what\n"+
		"happened at GET /stats (JSON) and GET / (HTML) on --listen.", stderr)
	listen := fs.String("listen", defaultListen(app), "`address` of the stats server")
	bookstore := fs.String("bookstore", "http://bookstore.bookstore:14001", "base `URL` of the bookstore")
	interval := fs.Duration("interval", 50*time.Millisecond, "`pause` between calls")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := checkListen(app, *listen); err != nil {
		return err
	}
	base, err := checkBaseURL(app, "bookstore", *bookstore)
	if err != nil {
		return err
	}
	if *interval <= 0 {
		return fmt.Errorf("%s: --interval %s must be positive; use e.g. --interval 50ms", app, *interval)
	}
	c, err := newClient(clientConfig{App: app, Bookstore: base, Interval: *interval, Log: log})
	if err != nil {
		return err
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() { c.loop(ctx) })
	err = serve(ctx, serveConfig{App: app, Listen: *listen, Handler: c.handler(), Stdout: stdout, Log: log})
	cancel()
	wg.Wait()
	return err
}

// defaultListen is where an app serves unless told otherwise: the ports OSM's
// demo scripts forward to.
func defaultListen(app string) string {
	switch app {
	case "bookthief":
		return "127.0.0.1:8083"
	case "bookstore":
		return "127.0.0.1:14001"
	case "bookwarehouse":
		return "127.0.0.1:14002"
	}
	return "127.0.0.1:8080"
}

// loop calls the bookstore every Interval until ctx ends. It logs when the kind of
// outcome changes (ok, or a failure reason) and a summary every summaryEvery.
func (c *client) loop(ctx context.Context) {
	tick := time.NewTicker(c.cfg.Interval)
	defer tick.Stop()
	paths := [...]string{"/books-bought", "/buy-a-book/new"}
	last, lastSummary := "", time.Now()
	for i := 0; ; i++ {
		path := paths[i%len(paths)]
		o, err := c.call(ctx, path)
		if ctx.Err() != nil {
			return
		}
		c.record(o)
		kind := o.reason
		if o.ok {
			kind = "ok"
		}
		if kind != last {
			if o.ok {
				c.cfg.Log.Info("calls to the bookstore succeed", "path", path, "served_by", o.servedBy)
			} else {
				c.cfg.Log.Warn("calls to the bookstore fail", "path", path, "reason", o.reason, "status", o.status, "err", err)
			}
			last = kind
		}
		if time.Since(lastSummary) >= summaryEvery {
			s := c.snapshot()
			c.cfg.Log.Info("summary", "total", s.Total, "ok", s.OK, "denied", s.Denied, "failed", s.Failed)
			lastSummary = time.Now()
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// call makes one call to the bookstore. The error is the transport error, if any.
func (c *client) call(ctx context.Context, path string) (outcome, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.cfg.Bookstore+path, nil)
	if err != nil {
		return outcome{reason: "error"}, err
	}
	req.Header.Set(headerClientApp, c.cfg.App)
	req.Header.Set(headerUserAgent, userAgent)
	resp, err := c.http.Do(req)
	if err != nil {
		return outcome{reason: "error"}, err
	}
	drain(resp)
	return classify(resp.StatusCode, resp.Header), nil
}

func (c *client) record(o outcome) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := &c.stats
	s.Total++
	switch {
	case o.ok:
		s.OK++
	case o.denied:
		s.Denied++
	default:
		s.Failed++
	}
	if !o.ok {
		s.Reasons[o.reason]++
	}
	if o.servedBy != "" {
		s.ServedBy[o.servedBy]++
	}
}

// snapshot returns a copy of the counters.
func (c *client) snapshot() ClientStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.stats
	s.Reasons = maps.Clone(s.Reasons)
	s.ServedBy = maps.Clone(s.ServedBy)
	return s
}

func (c *client) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, c.snapshot())
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		writeHTML(w, c.page, c.snapshot())
	})
	return mux
}

// writeJSON writes v as an indented JSON response.
func writeJSON(w http.ResponseWriter, v any) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		http.Error(w, "encode: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(append(b, '\n'))
}

// writeHTML renders page with v.
func writeHTML(w http.ResponseWriter, page *template.Template, v any) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := page.Execute(w, v); err != nil {
		fmt.Fprintf(w, "<p>render: %s</p>", template.HTMLEscapeString(err.Error()))
	}
}

const clientPage = `<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="1"><title>{{.App}}</title></head>
<body>
<h1>{{.App}}</h1>
<table>
<tr><th align="left">calls</th><td>{{.Total}}</td></tr>
<tr><th align="left">ok</th><td>{{.OK}}</td></tr>
<tr><th align="left">denied</th><td>{{.Denied}}</td></tr>
<tr><th align="left">failed</th><td>{{.Failed}}</td></tr>
</table>
<h2>Served by</h2>
<ul>{{range $k, $v := .ServedBy}}<li>{{$k}}: {{$v}}</li>{{else}}<li>none yet</li>{{end}}</ul>
<h2>Failures by reason</h2>
<ul>{{range $k, $v := .Reasons}}<li>{{$k}}: {{$v}}</li>{{else}}<li>none</li>{{end}}</ul>
</body></html>
`
