//go:build pprof

package proxy

import (
	"net/http"
	"runtime/pprof"
	"strconv"
	"time"
)

// With the pprof build tag (make build BUILD_TAGS=pprof) the admin listener,
// loopback-only by default, serves the runtime's profiles:
// `go tool pprof http://ADMIN/debug/pprof/profile?seconds=10`. They are left
// out of the default build because linking runtime/pprof adds about 0.3 MiB
// to the sidecar's idle RSS, whose budget is 12 MiB (docs/adr/0009).

const profilesServed = true

func addProfiles(mux *http.ServeMux) {
	mux.HandleFunc("GET /debug/pprof/profile", serveCPUProfile)
	mux.HandleFunc("GET /debug/pprof/{name}", serveProfile)
}

// serveCPUProfile writes a CPU profile of the next ?seconds= (default 30).
func serveCPUProfile(w http.ResponseWriter, r *http.Request) {
	secs, err := strconv.Atoi(r.FormValue("seconds"))
	if err != nil || secs <= 0 {
		secs = 30
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	if err := pprof.StartCPUProfile(w); err != nil {
		http.Error(w, "cannot start a CPU profile: "+err.Error(), http.StatusConflict)
		return
	}
	t := time.NewTimer(time.Duration(secs) * time.Second)
	select {
	case <-t.C:
	case <-r.Context().Done():
		t.Stop()
	}
	pprof.StopCPUProfile()
}

// serveProfile writes the named runtime profile (heap, allocs, goroutine,
// block, mutex, threadcreate), as text with ?debug=1 or 2.
func serveProfile(w http.ResponseWriter, r *http.Request) {
	prof := pprof.Lookup(r.PathValue("name"))
	if prof == nil {
		http.Error(w, "no such profile: try heap, allocs, goroutine, block, mutex, threadcreate or profile", http.StatusNotFound)
		return
	}
	debug, _ := strconv.Atoi(r.FormValue("debug"))
	if debug > 0 {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	} else {
		w.Header().Set("Content-Type", "application/octet-stream")
	}
	prof.WriteTo(w, debug)
}
