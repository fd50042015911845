package proxy_test

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// TestP2CMovesLoadFromSlowEndpoint runs two bookstore endpoints behind real
// sidecars, one answering fifty times slower, and checks that the client's
// sidecar (peak-EWMA P2C, the default) sends it few of the requests. Peak-EWMA
// reacts at once to a slow sample, so on a saturated machine a scheduling stall
// can make the fast endpoint look slow for a while: the margins are wide, and
// the test does not run in parallel with others.
func TestP2CMovesLoadFromSlowEndpoint(t *testing.T) {
	slow := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(50 * time.Millisecond)
		w.Write([]byte("slow"))
	})
	fast := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(time.Millisecond)
		w.Write([]byte("fast"))
	})
	m := newMesh(t, permissiveMesh)
	m.sidecar(sidecarSpec{reg: bookstoreReg("bookstore-v1", "bookstore"), app: serve(t, slow), ready: true})
	m.sidecar(sidecarSpec{reg: bookstoreReg("bookstore-v2", "bookstore-v2"), app: serve(t, fast), ready: true})
	client := m.sidecar(sidecarSpec{reg: bookbuyerReg()})
	client.getUntil(t, bookstoreURL+"/", statusIs(http.StatusOK))

	got := map[string]int{}
	for i := range 300 {
		_, body := client.do(t, http.MethodGet, bookstoreURL+"/", nil, nil)
		if i >= 30 { // after a warm-up that lets both endpoints be measured
			got[string(body)]++
		}
	}
	if share := float64(got["slow"]) / 270; share > 0.25 {
		t.Errorf("the slow endpoint served %.0f%% of requests after warm-up (%v), want under 25%% (round robin would give 50%%)", 100*share, got)
	}
}

// serve runs h on a loopback server for the test's life and returns its address.
func serve(t *testing.T, h http.Handler) string {
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}
