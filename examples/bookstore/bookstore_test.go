package bookstore

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// noProxy makes the tests' own calls directly, whatever the environment says.
var noProxy = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil}}

// logWriter sends an app's log lines to the test log.
type logWriter struct{ t *testing.T }

func (w logWriter) Write(b []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSuffix(string(b), "\n"))
	return len(b), nil
}

// running is an app started by start.
type running struct {
	URL    string // http://127.0.0.1:PORT
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
	err    error
}

// stop cancels the app's context and returns what Run returned.
func (r *running) stop(t *testing.T) error {
	t.Helper()
	r.once.Do(func() {
		r.cancel()
		select {
		case r.err = <-r.done:
		case <-time.After(10 * time.Second):
			r.err = errors.New("Run did not return within 10s of cancel")
		}
	})
	return r.err
}

// start runs app on a free loopback port with args, and stops it when the test ends,
// failing the test unless Run then returns nil.
func start(t *testing.T, app string, args ...string) *running {
	t.Helper()
	t.Setenv("HTTP_PROXY", "")
	t.Setenv("http_proxy", "")
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	r := &running{cancel: cancel, done: make(chan error, 1)}
	go func() {
		err := Run(ctx, app, append([]string{"--listen", "127.0.0.1:0"}, args...), pw, logWriter{t})
		pw.Close()
		r.done <- err
	}()
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		cancel()
		t.Fatalf("%s %v: no listening line on stdout: %v; Run returned %v", app, args, err, <-r.done)
	}
	go io.Copy(io.Discard, pr)
	prefix := app + " listening on "
	if !strings.HasPrefix(line, prefix) {
		cancel()
		t.Fatalf("%s stdout = %q, want a line starting %q", app, line, prefix)
	}
	r.URL = strings.TrimSpace(strings.TrimPrefix(line, prefix))
	t.Cleanup(func() {
		if err := r.stop(t); err != nil {
			t.Errorf("%s: Run returned %v after cancel, want nil", app, err)
		}
	})
	return r
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := noProxy.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: status %d, want 200", url, resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: decode: %v", url, err)
	}
}

// clientStatsAtLeast polls a client's /stats until total reaches n.
func clientStatsAtLeast(t *testing.T, url string, n int64) ClientStats {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var s ClientStats
		getJSON(t, url+"/stats", &s)
		if s.Total >= n {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s/stats after 10s = %+v, want total >= %d", url, s, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// unreachable returns the address of a loopback port nobody listens on.
func unreachable(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestRunRejectsBadInput(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()

	tests := []struct {
		name string
		app  string
		args []string
		want string // substring of the error
	}{
		{"unknown app", "bookshop", nil, `unknown demo app "bookshop": use one of bookbuyer, bookthief, bookstore, bookwarehouse`},
		{"undefined flag", "bookbuyer", []string{"--nope"}, "bookbuyer: flag provided but not defined: -nope"},
		{"unparsable interval", "bookthief", []string{"--interval", "soon"}, `invalid value "soon" for flag -interval`},
		{"zero interval", "bookbuyer", []string{"--interval", "0s"}, "--interval 0s must be positive"},
		{"bookstore URL not http", "bookbuyer", []string{"--bookstore", "ftp://bookstore.bookstore:14001"}, "want an http:// URL"},
		{"bookstore URL without host", "bookbuyer", []string{"--bookstore", "http:///books"}, "the URL has no host"},
		{"listen without port", "bookstore", []string{"--listen", "14001"}, `--listen "14001" is not HOST:PORT`},
		{"bad version", "bookstore", []string{"--version", "V 1"}, `--version "V 1" must be`},
		{"warehouse URL without scheme", "bookstore", []string{"--warehouse", "bookwarehouse.bookwarehouse:14001"}, "want an http:// URL"},
		{"positional argument", "bookwarehouse", []string{"extra"}, `unexpected argument "extra"`},
		{"listen address taken", "bookwarehouse", []string{"--listen", taken.Addr().String()}, "bookwarehouse: listen on " + taken.Addr().String()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			err := Run(ctx, tt.app, tt.args, io.Discard, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Run(%q, %q) = %v, want an error containing %q", tt.app, tt.args, err, tt.want)
			}
		})
	}
}

func TestRunHelp(t *testing.T) {
	for _, app := range []string{"bookbuyer", "bookthief", "bookstore", "bookwarehouse"} {
		t.Run(app, func(t *testing.T) {
			var stderr strings.Builder
			err := Run(context.Background(), app, []string{"-h"}, io.Discard, &stderr)
			if !errors.Is(err, flag.ErrHelp) {
				t.Errorf("Run(%q, -h) = %v, want flag.ErrHelp", app, err)
			}
			if got := stderr.String(); !strings.Contains(got, "Usage: "+app) || !strings.Contains(got, "-listen") {
				t.Errorf("Run(%q, -h) stderr = %q, want the usage with -listen", app, got)
			}
		})
	}
}

func TestBuyerBuysFromBookstore(t *testing.T) {
	wh := start(t, "bookwarehouse")
	store := start(t, "bookstore", "--version", "v1", "--warehouse", wh.URL)
	buyer := start(t, "bookbuyer", "--bookstore", store.URL, "--interval", "2ms")

	got := clientStatsAtLeast(t, buyer.URL, 40)
	want := ClientStats{
		App: "bookbuyer", Total: got.Total, OK: got.Total,
		Reasons: map[string]int64{}, ServedBy: map[string]int64{"bookstore-v1": got.Total},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("bookbuyer /stats mismatch (-want +got):\n%s", diff)
	}

	var ss StoreStats
	getJSON(t, store.URL+"/books-bought", &ss)
	if ss.Identity != "bookstore-v1" || ss.BooksBought < got.Total/2 || ss.RestocksOK < 2 || ss.RestocksFailed != 0 {
		t.Errorf("bookstore /books-bought = %+v, want identity bookstore-v1, >= %d books, >= 2 restocks ok, none failed", ss, got.Total/2)
	}
	var ws WarehouseStats
	getJSON(t, wh.URL+"/stats", &ws)
	if ws.App != "bookwarehouse" || ws.Restocks < ss.RestocksOK {
		t.Errorf("bookwarehouse /stats = %+v, want app bookwarehouse and >= %d restocks", ws, ss.RestocksOK)
	}

	resp, err := noProxy.Get(buyer.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
		t.Errorf("bookbuyer GET / Content-Type = %q, want text/html", ct)
	}
	for _, s := range []string{"<h1>bookbuyer</h1>", "bookstore-v1: "} {
		if !strings.Contains(string(page), s) {
			t.Errorf("bookbuyer GET / page lacks %q:\n%s", s, page)
		}
	}
}

// recorder is a stand-in bookstore that answers every call with one response and
// records what it was asked.
type recorder struct {
	status int
	header http.Header

	mu    sync.Mutex
	seen  map[string]bool // "METHOD PATH client-app=... user-agent=..."
	calls int
}

func (rec *recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec.mu.Lock()
	rec.seen[fmt.Sprintf("%s %s client-app=%s user-agent=%s", r.Method, r.URL.Path, r.Header.Get("client-app"), r.UserAgent())] = true
	rec.calls++
	rec.mu.Unlock()
	for k, v := range rec.header {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.status)
}

func (rec *recorder) snapshot() (map[string]bool, int) {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	seen := map[string]bool{}
	for k := range rec.seen {
		seen[k] = true
	}
	return seen, rec.calls
}

func TestClientCountsOutcomes(t *testing.T) {
	tests := []struct {
		name   string
		app    string
		status int // 0: nobody listens
		header http.Header
		want   func(n int64) ClientStats
	}{
		{
			name: "sidecar denies", app: "bookthief", status: http.StatusForbidden,
			header: http.Header{"X-Trellis-Reason": {"denied"}},
			want: func(n int64) ClientStats {
				return ClientStats{App: "bookthief", Total: n, Denied: n, Reasons: map[string]int64{"denied": n}, ServedBy: map[string]int64{}}
			},
		},
		{
			name: "sidecar has no endpoints", app: "bookbuyer", status: http.StatusServiceUnavailable,
			header: http.Header{"X-Trellis-Reason": {"no_endpoints"}},
			want: func(n int64) ClientStats {
				return ClientStats{App: "bookbuyer", Total: n, Failed: n, Reasons: map[string]int64{"no_endpoints": n}, ServedBy: map[string]int64{}}
			},
		},
		{
			name: "bookstore fails without a reason", app: "bookbuyer", status: http.StatusInternalServerError,
			header: http.Header{"Identity": {"bookstore-v2"}},
			want: func(n int64) ClientStats {
				return ClientStats{App: "bookbuyer", Total: n, Failed: n, Reasons: map[string]int64{"status_500": n}, ServedBy: map[string]int64{"bookstore-v2": n}}
			},
		},
		{
			name: "bookstore v2 serves", app: "bookthief", status: http.StatusOK,
			header: http.Header{"Identity": {"bookstore-v2"}},
			want: func(n int64) ClientStats {
				return ClientStats{App: "bookthief", Total: n, OK: n, Reasons: map[string]int64{}, ServedBy: map[string]int64{"bookstore-v2": n}}
			},
		},
		{
			name: "nobody listens", app: "bookbuyer",
			want: func(n int64) ClientStats {
				return ClientStats{App: "bookbuyer", Total: n, Failed: n, Reasons: map[string]int64{"error": n}, ServedBy: map[string]int64{}}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recorder{status: tt.status, header: tt.header, seen: map[string]bool{}}
			target := "http://" + unreachable(t)
			if tt.status != 0 {
				srv := httptest.NewServer(rec)
				defer srv.Close()
				target = srv.URL
			}
			c := start(t, tt.app, "--bookstore", target, "--interval", "2ms")
			got := clientStatsAtLeast(t, c.URL, 6)
			if diff := cmp.Diff(tt.want(got.Total), got); diff != "" {
				t.Errorf("%s /stats mismatch (-want +got):\n%s", tt.app, diff)
			}
			if tt.status == 0 {
				return
			}
			seen, _ := rec.snapshot()
			want := map[string]bool{
				"GET /books-bought client-app=" + tt.app + " user-agent=Go-http-client/1.1":   true,
				"GET /buy-a-book/new client-app=" + tt.app + " user-agent=Go-http-client/1.1": true,
			}
			if diff := cmp.Diff(want, seen); diff != "" {
				t.Errorf("calls the bookstore saw mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// proxyChildEnv marks the child process of TestClientUsesHTTPProxy. The child is
// needed because net/http reads HTTP_PROXY once per process.
const proxyChildEnv = "BOOKSTORE_TEST_PROXY_CHILD"

func TestClientUsesHTTPProxy(t *testing.T) {
	if os.Getenv(proxyChildEnv) != "" {
		// In the child: HTTP_PROXY names the parent's stand-in sidecar.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		pr, pw := io.Pipe()
		done := make(chan error, 1)
		go func() {
			done <- Run(ctx, "bookthief", []string{"--listen", "127.0.0.1:0", "--interval", "2ms"}, pw, io.Discard)
			pw.Close()
		}()
		line, err := bufio.NewReader(pr).ReadString('\n')
		if err != nil {
			t.Fatalf("no listening line: %v", err)
		}
		go io.Copy(io.Discard, pr)
		got := clientStatsAtLeast(t, strings.TrimSpace(strings.TrimPrefix(line, "bookthief listening on ")), 4)
		if got.Denied != got.Total {
			t.Errorf("bookthief through the sidecar: stats %+v, want every call denied", got)
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v after cancel, want nil", err)
		}
		return
	}

	sidecar := &recorder{status: http.StatusForbidden, header: http.Header{"X-Trellis-Reason": {"denied"}}, seen: map[string]bool{}}
	proxied := map[string]bool{}
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		proxied[r.URL.String()] = true
		mu.Unlock()
		sidecar.ServeHTTP(w, r)
	}))
	defer srv.Close()

	cmd := exec.Command(os.Args[0], "-test.run=^TestClientUsesHTTPProxy$", "-test.count=1")
	cmd.Env = append(os.Environ(), proxyChildEnv+"=1", "HTTP_PROXY="+srv.URL, "http_proxy="+srv.URL, "NO_PROXY=", "no_proxy=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child process: %v\n%s", err, out)
	}
	mu.Lock()
	defer mu.Unlock()
	want := map[string]bool{
		"http://bookstore.bookstore:14001/books-bought":   true,
		"http://bookstore.bookstore:14001/buy-a-book/new": true,
	}
	if diff := cmp.Diff(want, proxied); diff != "" {
		t.Errorf("URLs the sidecar was asked for mismatch (-want +got):\n%s", diff)
	}
}

// warehouseRecorder is a stand-in bookwarehouse.
type warehouseRecorder struct {
	status int
	header http.Header

	mu    sync.Mutex
	calls []string // "METHOD PATH"
}

func (wr *warehouseRecorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	wr.mu.Lock()
	wr.calls = append(wr.calls, r.Method+" "+r.URL.Path)
	wr.mu.Unlock()
	for k, v := range wr.header {
		w.Header()[k] = v
	}
	w.WriteHeader(wr.status)
}

func (wr *warehouseRecorder) snapshot() []string {
	wr.mu.Lock()
	defer wr.mu.Unlock()
	return append([]string(nil), wr.calls...)
}

// buy makes one purchase and checks the answer's status and headers.
func buy(t *testing.T, storeURL, identity string, wantCount int) {
	t.Helper()
	resp, err := noProxy.Get(storeURL + "/buy-a-book/new")
	if err != nil {
		t.Fatalf("purchase %d: %v", wantCount, err)
	}
	drain(resp)
	got := fmt.Sprintf("%d identity=%s booksbought=%s", resp.StatusCode, resp.Header.Get("identity"), resp.Header.Get("Booksbought"))
	if want := fmt.Sprintf("200 identity=%s booksbought=%d", identity, wantCount); got != want {
		t.Fatalf("purchase %d answered %q, want %q", wantCount, got, want)
	}
}

func TestBookstoreRestocksEveryTenthPurchase(t *testing.T) {
	tests := []struct {
		name       string
		status     int // 0: nobody listens
		header     http.Header
		wantOK     int64
		wantFailed int64
	}{
		{name: "warehouse takes the order", status: http.StatusOK, wantOK: 2},
		{name: "sidecar denies the order", status: http.StatusForbidden, header: http.Header{"X-Trellis-Reason": {"denied"}}, wantFailed: 2},
		{name: "nobody listens", wantFailed: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wr := &warehouseRecorder{status: tt.status, header: tt.header}
			target := "http://" + unreachable(t)
			if tt.status != 0 {
				srv := httptest.NewServer(wr)
				defer srv.Close()
				target = srv.URL
			}
			store := start(t, "bookstore", "--version", "v1", "--warehouse", target)
			for i := 1; i <= 9; i++ {
				buy(t, store.URL, "bookstore-v1", i)
			}
			if got := wr.snapshot(); len(got) != 0 {
				t.Errorf("after 9 purchases the warehouse saw %q, want nothing", got)
			}
			buy(t, store.URL, "bookstore-v1", 10)
			if tt.status != 0 {
				if diff := cmp.Diff([]string{"POST /restock-books"}, wr.snapshot()); diff != "" {
					t.Errorf("after 10 purchases the warehouse calls mismatch (-want +got):\n%s", diff)
				}
			}
			for i := 11; i <= 20; i++ {
				buy(t, store.URL, "bookstore-v1", i)
			}
			var got StoreStats
			getJSON(t, store.URL+"/books-bought", &got)
			want := StoreStats{Identity: "bookstore-v1", BooksBought: 20, RestocksOK: tt.wantOK, RestocksFailed: tt.wantFailed}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("/books-bought mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestBookstoreEndpoints(t *testing.T) {
	store := start(t, "bookstore", "--version", "v2", "--warehouse", "http://"+unreachable(t))
	for i := 1; i <= 3; i++ {
		buy(t, store.URL, "bookstore-v2", i)
	}
	// In order: the count is 3 until a reset.
	tests := []struct {
		method, path string
		wantStatus   int
		wantBought   string
		wantType     string // Content-Type prefix
	}{
		{"GET", "/", 200, "3", "text/html"},
		{"GET", "/books-bought", 200, "3", "application/json"},
		{"GET", "/liveness", 200, "3", "text/plain"},
		{"GET", "/readiness", 200, "3", "text/plain"},
		{"GET", "/startup", 200, "3", "text/plain"},
		{"GET", "/no-such-page", 404, "3", "text/plain"},
		{"DELETE", "/reset", 405, "3", "text/plain"},
		{"POST", "/reset", 200, "0", "application/json"},
		{"GET", "/books-bought", 200, "0", "application/json"},
		{"GET", "/buy-a-book/new", 200, "1", "application/json"},
		{"GET", "/reset", 200, "0", "application/json"},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			req, err := http.NewRequest(tt.method, store.URL+tt.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := noProxy.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			drain(resp)
			got := fmt.Sprintf("%d identity=%s booksbought=%s", resp.StatusCode, resp.Header.Get("identity"), resp.Header.Get("Booksbought"))
			want := fmt.Sprintf("%d identity=bookstore-v2 booksbought=%s", tt.wantStatus, tt.wantBought)
			if got != want {
				t.Errorf("%s %s answered %q, want %q", tt.method, tt.path, got, want)
			}
			if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, tt.wantType) {
				t.Errorf("%s %s Content-Type = %q, want %s", tt.method, tt.path, ct, tt.wantType)
			}
		})
	}
}

func TestWarehouse(t *testing.T) {
	wh := start(t, "bookwarehouse")
	tests := []struct {
		method, path string
		wantStatus   int
		wantBody     string // JSON, compared after decoding; "" to skip
	}{
		{"GET", "/stats", 200, `{"app":"bookwarehouse","restocks":0}`},
		{"POST", "/restock-books", 200, `{"app":"bookwarehouse","restocks":1}`},
		{"POST", "/restock-books", 200, `{"app":"bookwarehouse","restocks":2}`},
		{"GET", "/restock-books", 405, ""},
		{"GET", "/", 200, `{"app":"bookwarehouse","restocks":2}`},
		{"GET", "/stats", 200, `{"app":"bookwarehouse","restocks":2}`},
	}
	for i, tt := range tests {
		t.Run(strconv.Itoa(i)+" "+tt.method+" "+tt.path, func(t *testing.T) {
			req, err := http.NewRequest(tt.method, wh.URL+tt.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := noProxy.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("%s %s status = %d, want %d", tt.method, tt.path, resp.StatusCode, tt.wantStatus)
			}
			if tt.wantBody == "" {
				return
			}
			var got, want WarehouseStats
			if err := json.Unmarshal(body, &got); err != nil {
				t.Fatalf("%s %s body %q: %v", tt.method, tt.path, body, err)
			}
			if err := json.Unmarshal([]byte(tt.wantBody), &want); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("%s %s body mismatch (-want +got):\n%s", tt.method, tt.path, diff)
			}
		})
	}
}

// TestBookstoreDrainsOnCancel checks that a purchase in flight when the context
// ends is still answered, and that Run then returns nil and stops listening.
func TestBookstoreDrainsOnCancel(t *testing.T) {
	arrived := make(chan struct{}, 1)
	release := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-release
	}))
	defer slow.Close()
	defer close(release)

	store := start(t, "bookstore", "--warehouse", slow.URL)
	for i := 1; i <= 9; i++ {
		buy(t, store.URL, "bookstore-v1", i)
	}
	answered := make(chan string, 1)
	go func() {
		resp, err := noProxy.Get(store.URL + "/buy-a-book/new")
		if err != nil {
			answered <- err.Error()
			return
		}
		drain(resp)
		answered <- fmt.Sprintf("%d booksbought=%s", resp.StatusCode, resp.Header.Get("Booksbought"))
	}()
	select { // the 10th purchase waits on the warehouse
	case <-arrived:
	case <-time.After(5 * time.Second):
		t.Fatal("the 10th purchase did not call the warehouse within 5s")
	}

	stopped := make(chan error, 1)
	go func() { stopped <- store.stop(t) }()
	time.Sleep(50 * time.Millisecond)
	select {
	case err := <-stopped:
		t.Fatalf("Run returned %v while a purchase was in flight, want it to wait", err)
	default:
	}
	release <- struct{}{}
	select {
	case got := <-answered:
		if want := "200 booksbought=10"; got != want {
			t.Errorf("in-flight purchase answered %q, want %q", got, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("in-flight purchase not answered within 5s of the warehouse answering")
	}
	if err := <-stopped; err != nil { // stop gives up after 10s
		t.Errorf("Run = %v after cancel, want nil", err)
	}
	if _, err := net.DialTimeout("tcp", strings.TrimPrefix(store.URL, "http://"), time.Second); err == nil {
		t.Errorf("bookstore still accepts connections after Run returned")
	}
}
