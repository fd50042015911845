package bookstore

import (
	"context"
	"fmt"
	"html/template"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// StoreStats is what a bookstore answers at GET /books-bought, /buy-a-book/new and
// /reset.
type StoreStats struct {
	// Identity is "bookstore-<version>", also sent as the identity header.
	Identity string `json:"identity"`
	// BooksBought counts purchases since start or the last reset.
	BooksBought int64 `json:"books_bought"`
	// RestocksOK and RestocksFailed count the calls to the warehouse's
	// /restock-books, made on every 10th purchase.
	RestocksOK     int64 `json:"restocks_ok"`
	RestocksFailed int64 `json:"restocks_failed"`
}

// restockEvery is how many purchases make the bookstore call the warehouse.
const restockEvery = 10

// storeConfig configures a bookstore.
type storeConfig struct {
	// Version names the bookstore: its identity is "bookstore-<Version>".
	Version string
	// Warehouse is the base URL of the bookwarehouse, without a trailing slash.
	Warehouse string
	Log       *slog.Logger
}

// store sells books and restocks from the warehouse.
type store struct {
	cfg      storeConfig
	identity string // "bookstore-<version>"
	http     *http.Client
	page     *template.Template

	mu    sync.Mutex
	stats StoreStats
	// lastRestock is "ok" or the last restock failure's reason, so that only
	// changes are logged.
	lastRestock string
}

func newStore(cfg storeConfig) (*store, error) {
	page, err := template.New("store").Parse(storePage)
	if err != nil {
		return nil, fmt.Errorf("bookstore: parse the status page: %w", err)
	}
	identity := "bookstore-" + cfg.Version
	return &store{
		cfg:      cfg,
		identity: identity,
		http:     newHTTPClient(),
		page:     page,
		stats:    StoreStats{Identity: identity},
	}, nil
}

func runStore(ctx context.Context, args []string, stdout, stderr io.Writer, log *slog.Logger) error {
	fs := newFlagSet("bookstore", "Sells books: GET /buy-a-book/new counts a purchase, GET /books-bought reports the count,\n"+
		"GET or POST /reset zeroes it. Every 10th purchase calls POST <warehouse>/restock-books\n"+
		"through the proxy HTTP_PROXY names. Every response carries the headers\n"+
		"identity: bookstore-<version> and Booksbought: <count>.", stderr)
	listen := fs.String("listen", defaultListen("bookstore"), "`address` to serve on")
	version := fs.String("version", "v1", "`version` of this bookstore; its identity header is bookstore-<version>")
	warehouse := fs.String("warehouse", "http://bookwarehouse.bookwarehouse:14001", "base `URL` of the bookwarehouse")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := checkListen("bookstore", *listen); err != nil {
		return err
	}
	if !validVersion(*version) {
		return fmt.Errorf("bookstore: --version %q must be lower-case letters, digits, dots and dashes; use e.g. --version v2", *version)
	}
	base, err := checkBaseURL("bookstore", "warehouse", *warehouse)
	if err != nil {
		return err
	}
	s, err := newStore(storeConfig{Version: *version, Warehouse: base, Log: log.With("identity", "bookstore-"+*version)})
	if err != nil {
		return err
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() { s.summarize(ctx) })
	err = serve(ctx, serveConfig{App: "bookstore", Listen: *listen, Handler: s.handler(), Stdout: stdout, Log: s.cfg.Log})
	cancel()
	wg.Wait()
	return err
}

func validVersion(v string) bool {
	if v == "" || len(v) > 63 {
		return false
	}
	for _, r := range v {
		if (r < 'a' || r > 'z') && (r < '0' || r > '9') && r != '.' && r != '-' {
			return false
		}
	}
	return true
}

// summarize logs the counters every summaryEvery while they change, until ctx ends.
func (s *store) summarize(ctx context.Context) {
	tick := time.NewTicker(summaryEvery)
	defer tick.Stop()
	var prev StoreStats
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if st := s.snapshot(); st != prev {
			s.cfg.Log.Info("summary", "books_bought", st.BooksBought, "restocks_ok", st.RestocksOK, "restocks_failed", st.RestocksFailed)
			prev = st
		}
	}
}

func (s *store) snapshot() StoreStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

func (s *store) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		writeHTML(w, s.page, struct {
			StoreStats
			Warehouse string
		}{s.snapshot(), s.cfg.Warehouse})
	})
	mux.HandleFunc("GET /books-bought", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, s.snapshot())
	})
	mux.HandleFunc("GET /buy-a-book/new", s.buy)
	reset := func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.stats.BooksBought = 0
		st := s.stats
		s.mu.Unlock()
		w.Header().Set(headerBooksBought, "0")
		writeJSON(w, st)
	}
	mux.HandleFunc("GET /reset", reset)
	mux.HandleFunc("POST /reset", reset)
	alive := func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") }
	mux.HandleFunc("GET /liveness", alive)
	mux.HandleFunc("GET /readiness", alive)
	mux.HandleFunc("GET /startup", alive)

	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set(headerIdentity, s.identity)
		h.Set(headerBooksBought, strconv.FormatInt(s.snapshot().BooksBought, 10))
		mux.ServeHTTP(w, r)
	})
}

// buy counts a purchase; every restockEvery-th one restocks from the warehouse
// before answering. A failed restock is logged; the purchase still succeeds.
func (s *store) buy(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.stats.BooksBought++
	n := s.stats.BooksBought
	s.mu.Unlock()
	if n%restockEvery == 0 {
		s.restock(context.WithoutCancel(r.Context()))
	}
	w.Header().Set(headerBooksBought, strconv.FormatInt(n, 10))
	st := s.snapshot()
	st.BooksBought = n
	writeJSON(w, st)
}

// restock calls POST <warehouse>/restock-books and counts the result.
func (s *store) restock(ctx context.Context) {
	failure, err := s.callWarehouse(ctx)
	s.mu.Lock()
	defer s.mu.Unlock()
	if failure == "" {
		s.stats.RestocksOK++
		if s.lastRestock != "ok" {
			s.cfg.Log.Info("restocking from the warehouse succeeds", "warehouse", s.cfg.Warehouse)
		}
		s.lastRestock = "ok"
		return
	}
	s.stats.RestocksFailed++
	if s.lastRestock != failure {
		s.cfg.Log.Warn("restocking from the warehouse fails; purchases still succeed", "warehouse", s.cfg.Warehouse, "reason", failure, "err", err)
	}
	s.lastRestock = failure
}

// callWarehouse returns "" on a 2xx answer, else why not: the x-trellis-reason of
// the answer, "status_<code>", or "error" with the transport error.
func (s *store) callWarehouse(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.cfg.Warehouse+"/restock-books", http.NoBody)
	if err != nil {
		return "error", err
	}
	req.Header.Set(headerClientApp, "bookstore")
	req.Header.Set(headerUserAgent, userAgent)
	resp, err := s.http.Do(req)
	if err != nil {
		return "error", err
	}
	drain(resp)
	if o := classify(resp.StatusCode, resp.Header); !o.ok {
		return o.reason, nil
	}
	return "", nil
}

const storePage = `<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="1"><title>{{.Identity}}</title></head>
<body>
<h1>{{.Identity}}</h1>
<table>
<tr><th align="left">books bought</th><td>{{.BooksBought}}</td></tr>
<tr><th align="left">restocks ok</th><td>{{.RestocksOK}}</td></tr>
<tr><th align="left">restocks failed</th><td>{{.RestocksFailed}}</td></tr>
<tr><th align="left">warehouse</th><td>{{.Warehouse}}</td></tr>
</table>
</body></html>
`
