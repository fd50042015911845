package bookstore

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// WarehouseStats is what a bookwarehouse answers at GET / and GET /stats.
type WarehouseStats struct {
	App string `json:"app"`
	// Restocks counts POST /restock-books calls.
	Restocks int64 `json:"restocks"`
}

// warehouse counts restock orders.
type warehouse struct {
	log      *slog.Logger
	restocks atomic.Int64
}

func runWarehouse(ctx context.Context, args []string, stdout, stderr io.Writer, log *slog.Logger) error {
	fs := newFlagSet("bookwarehouse", "Takes restock orders from the bookstore at POST /restock-books and reports\n"+
		"how many it took at GET / and GET /stats (JSON).", stderr)
	listen := fs.String("listen", defaultListen("bookwarehouse"), "`address` to serve on")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := checkListen("bookwarehouse", *listen); err != nil {
		return err
	}
	wh := &warehouse{log: log}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() { wh.summarize(ctx) })
	err := serve(ctx, serveConfig{App: "bookwarehouse", Listen: *listen, Handler: wh.handler(), Stdout: stdout, Log: log})
	cancel()
	wg.Wait()
	return err
}

func (wh *warehouse) stats() WarehouseStats {
	return WarehouseStats{App: "bookwarehouse", Restocks: wh.restocks.Load()}
}

func (wh *warehouse) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /restock-books", func(w http.ResponseWriter, r *http.Request) {
		wh.restocks.Add(1)
		writeJSON(w, wh.stats())
	})
	get := func(w http.ResponseWriter, r *http.Request) { writeJSON(w, wh.stats()) }
	mux.HandleFunc("GET /{$}", get)
	mux.HandleFunc("GET /stats", get)
	return mux
}

// summarize logs the restock count every summaryEvery while it changes, until ctx ends.
func (wh *warehouse) summarize(ctx context.Context) {
	tick := time.NewTicker(summaryEvery)
	defer tick.Stop()
	var prev int64
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if n := wh.restocks.Load(); n != prev {
			wh.log.Info("summary", "restocks", n)
			prev = n
		}
	}
}
