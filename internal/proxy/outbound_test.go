package proxy

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestRemoveHopHeaders(t *testing.T) {
	tests := []struct {
		name string
		in   http.Header
		want http.Header
	}{
		{
			name: "standard hop-by-hop headers",
			in: http.Header{
				"Connection": {"keep-alive"}, "Proxy-Connection": {"keep-alive"}, "Keep-Alive": {"timeout=5"},
				"Proxy-Authenticate": {"Basic"}, "Proxy-Authorization": {"Basic Zm9vOmJhcg=="}, "Te": {"trailers"},
				"Trailer": {"X-Checksum"}, "Transfer-Encoding": {"chunked"}, "Upgrade": {"websocket"},
				"Client-App": {"bookbuyer"}, "Authorization": {"Bearer t"},
			},
			want: http.Header{"Client-App": {"bookbuyer"}, "Authorization": {"Bearer t"}},
		},
		{
			name: "headers the Connection header lists",
			in: http.Header{
				"Connection": {"X-Hop-One, x-hop-two", "X-Hop-Three"},
				"X-Hop-One":  {"1"}, "X-Hop-Two": {"2"}, "X-Hop-Three": {"3"},
				"X-End-To-End": {"kept"},
			},
			want: http.Header{"X-End-To-End": {"kept"}},
		},
		{
			name: "nothing to remove",
			in:   http.Header{"Content-Type": {"text/plain"}, "Content-Length": {"5"}},
			want: http.Header{"Content-Type": {"text/plain"}, "Content-Length": {"5"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := tt.in.Clone()
			removeHopHeaders(h)
			if diff := cmp.Diff(tt.want, h); diff != "" {
				t.Errorf("headers after removeHopHeaders (-want +got):\n%s", diff)
			}
		})
	}
}

func TestHostPort(t *testing.T) {
	tests := []struct {
		authority, port, want string
	}{
		{"bookstore.bookstore:14001", "80", "bookstore.bookstore:14001"},
		{"bookstore.bookstore", "80", "bookstore.bookstore:80"},
		{"bookstore.bookstore", "443", "bookstore.bookstore:443"},
		{"127.0.0.1", "80", "127.0.0.1:80"},
		{"[::1]", "80", "[::1]:80"},
		{"[::1]:8080", "80", "[::1]:8080"},
	}
	for _, tt := range tests {
		t.Run(tt.authority+" default "+tt.port, func(t *testing.T) {
			if got := hostPort(tt.authority, tt.port); got != tt.want {
				t.Errorf("hostPort(%q, %q) = %q, want %q", tt.authority, tt.port, got, tt.want)
			}
		})
	}
}

func TestRefuse(t *testing.T) {
	w := httptest.NewRecorder()
	refuse(w, http.StatusForbidden, ReasonDenied, "bookthief may not call bookstore")
	resp := w.Result()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("status = %d, want %d", resp.StatusCode, http.StatusForbidden)
	}
	want := http.Header{
		"X-Trellis-Reason":       {"denied"},
		"Content-Type":           {"text/plain; charset=utf-8"},
		"X-Content-Type-Options": {"nosniff"},
	}
	if diff := cmp.Diff(want, resp.Header); diff != "" {
		t.Errorf("headers (-want +got):\n%s", diff)
	}
	if got, want := w.Body.String(), "trellis: denied: bookthief may not call bookstore\n"; got != want {
		t.Errorf("body = %q, want %q", got, want)
	}
}

func TestStatusText(t *testing.T) {
	for code, want := range map[int]string{200: "200", 403: "403", 503: "503", 599: "599", 600: "600", 0: "0", -1: "-1"} {
		if got := statusText(code); got != want {
			t.Errorf("statusText(%d) = %q, want %q", code, got, want)
		}
	}
}

func TestPrepareRequest(t *testing.T) {
	tests := []struct {
		name        string
		in          http.Header
		want        http.Header
		wantUpgrade string
	}{
		{
			name: "WebSocket upgrade travels end to end",
			in: http.Header{
				"Connection": {"keep-alive, Upgrade"}, "Upgrade": {"websocket"}, "Keep-Alive": {"timeout=5"},
				"Sec-Websocket-Key": {"dGhlIHNhbXBsZSBub25jZQ=="}, "Sec-Websocket-Version": {"13"},
			},
			want: http.Header{
				"Connection": {"Upgrade"}, "Upgrade": {"websocket"},
				"Sec-Websocket-Key": {"dGhlIHNhbXBsZSBub25jZQ=="}, "Sec-Websocket-Version": {"13"},
			},
			wantUpgrade: "websocket",
		},
		{
			name: "Upgrade without Connection: upgrade is dropped",
			in:   http.Header{"Upgrade": {"websocket"}, "Accept": {"*/*"}},
			want: http.Header{"Accept": {"*/*"}},
		},
		{
			name: "TE: trailers is kept for gRPC, other TE values are not",
			in:   http.Header{"Te": {"gzip, trailers"}, "Content-Type": {"application/grpc"}},
			want: http.Header{"Te": {"trailers"}, "Content-Type": {"application/grpc"}},
		},
		{
			name: "TE without trailers",
			in:   http.Header{"Te": {"gzip"}},
			want: http.Header{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := tt.in.Clone()
			up := prepareRequest(h)
			if up != tt.wantUpgrade {
				t.Errorf("upgrade = %q, want %q", up, tt.wantUpgrade)
			}
			if diff := cmp.Diff(tt.want, h); diff != "" {
				t.Errorf("headers (-want +got):\n%s", diff)
			}
		})
	}
}

func TestIsGRPC(t *testing.T) {
	for ct, want := range map[string]bool{
		"application/grpc": true, "application/grpc+proto": true, "application/grpc;charset=utf-8": true,
		"application/grpc-web": false, "application/grpcx": false, "application/json": false, "": false,
	} {
		r := httptest.NewRequest(http.MethodPost, "/trellis.test.Books/Get", nil)
		if ct != "" {
			r.Header.Set("Content-Type", ct)
		}
		if got := isGRPC(r); got != want {
			t.Errorf("isGRPC(Content-Type %q) = %v, want %v", ct, got, want)
		}
	}
}

func TestRefuseRequestGRPC(t *testing.T) {
	r := httptest.NewRequest(http.MethodPost, "/trellis.test.Books/Get", nil)
	r.Header.Set("Content-Type", "application/grpc")
	w := httptest.NewRecorder()
	refuseRequest(w, r, http.StatusServiceUnavailable, ReasonNoEndpoints, "bookstore.bookstore has no ready endpoint, 100% down")
	resp := w.Result()
	want := http.Header{
		"X-Trellis-Reason": {"no_endpoints"},
		"Content-Type":     {"application/grpc"},
		"Grpc-Status":      {"14"},
		"Grpc-Message":     {"trellis: no_endpoints: bookstore.bookstore has no ready endpoint, 100%25 down"},
	}
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("status = %d, want 503", resp.StatusCode)
	}
	if diff := cmp.Diff(want, resp.Header); diff != "" {
		t.Errorf("headers (-want +got):\n%s", diff)
	}
	if w.Body.Len() != 0 {
		t.Errorf("body = %q, want none (a trailers-only gRPC answer)", w.Body.String())
	}
}

func TestPercentEncode(t *testing.T) {
	for in, want := range map[string]string{
		"plain text": "plain text", "50%": "50%25", "línea\n": "l%C3%ADnea%0A", "": "",
	} {
		if got := percentEncode(in); got != want {
			t.Errorf("percentEncode(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestGRPCStatusLabel(t *testing.T) {
	for in, want := range map[string]string{
		"0": "0", "5": "5", "14": "14", "16": "16",
		"17": "unknown", "05": "unknown", "": "unknown", "-1": "unknown", "abc": "unknown", "1x": "unknown", "100": "unknown",
	} {
		if got := grpcStatusLabel(in); got != want {
			t.Errorf("grpcStatusLabel(%q) = %q, want %q", in, got, want)
		}
	}
	if n := testing.AllocsPerRun(100, func() { grpcStatusLabel("14") }); n != 0 {
		t.Errorf("grpcStatusLabel allocates %v times per call, want 0", n)
	}
}

func TestPrepareRequestAllocations(t *testing.T) {
	base := http.Header{
		"Connection": {"keep-alive"}, "Keep-Alive": {"timeout=5"}, "Proxy-Connection": {"keep-alive"},
		"User-Agent": {"bookbuyer/1.0"}, "Accept": {"*/*"},
	}
	h := http.Header{}
	n := testing.AllocsPerRun(100, func() {
		for k, v := range base {
			h[k] = v
		}
		prepareRequest(h)
	})
	if n != 0 {
		t.Errorf("prepareRequest of a plain keep-alive request allocates %v times, want 0", n)
	}
}

// FuzzPrepareRequest checks that whatever headers a client sends, no
// hop-by-hop header survives but the ones forwarded on purpose.
func FuzzPrepareRequest(f *testing.F) {
	f.Add("keep-alive, Upgrade", "websocket", "trailers", "X-Hop")
	f.Add("X-Hop,,  x-hop , close", "", "gzip, trailers", "x-hop")
	f.Add("", "h2c", "", "")
	f.Fuzz(func(t *testing.T, connection, upgrade, te, other string) {
		h := http.Header{"Connection": {connection}, "Upgrade": {upgrade}, "Te": {te}, "Keep-Alive": {"1"}, "Transfer-Encoding": {"chunked"}}
		if other != "" {
			h[http.CanonicalHeaderKey(other)] = []string{"v"}
		}
		up := prepareRequest(h)
		for _, k := range []string{"Keep-Alive", "Transfer-Encoding", "Proxy-Connection", "Trailer"} {
			if _, ok := h[k]; ok {
				t.Errorf("%s survived", k)
			}
		}
		if up != "" && (len(h["Connection"]) != 1 || h["Connection"][0] != "Upgrade" || h.Get("Upgrade") != up) {
			t.Errorf("upgrade %q forwarded with Connection %q, Upgrade %q", up, h["Connection"], h["Upgrade"])
		}
		if up == "" {
			if _, ok := h["Upgrade"]; ok {
				t.Errorf("Upgrade %q survived without a switch", h["Upgrade"])
			}
			if _, ok := h["Connection"]; ok {
				t.Errorf("Connection %q survived without a switch", h["Connection"])
			}
		}
		if v, ok := h["Te"]; ok && (len(v) != 1 || v[0] != "trailers") {
			t.Errorf("Te %q survived", v)
		}
	})
}

// rwc is an upgraded connection's body as net/http's transport hands it over.
type rwc struct {
	io.Reader
	io.Writer
}

func (rwc) Close() error { return nil }

func TestRelayRefusesASwitchNotAskedFor(t *testing.T) {
	tests := []struct {
		name      string
		upgrade   string // what the request asked for
		switchTo  string // what the upstream answered
		wantCode  int
		wantInMsg string
	}{
		{name: "no upgrade asked", upgrade: "", switchTo: "websocket", wantCode: http.StatusBadGateway, wantInMsg: "did not ask for"},
		{name: "another protocol", upgrade: "websocket", switchTo: "h2c", wantCode: http.StatusBadGateway, wantInMsg: "switched to h2c, not the websocket"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &Proxy{streams: newStreams()}
			resp := &http.Response{
				StatusCode: http.StatusSwitchingProtocols,
				Header:     http.Header{"Connection": {"Upgrade"}, "Upgrade": {tt.switchTo}},
				Body:       rwc{strings.NewReader(""), io.Discard},
			}
			w := httptest.NewRecorder()
			st, reason, _, _ := p.relay(w, resp, tt.upgrade)
			if st != tt.wantCode || reason != ReasonUpgradeFailed || w.Code != tt.wantCode {
				t.Errorf("relay = %d %q, wrote %d; want %d %s", st, reason, w.Code, tt.wantCode, ReasonUpgradeFailed)
			}
			if !strings.Contains(w.Body.String(), tt.wantInMsg) {
				t.Errorf("body %q does not say %q", w.Body.String(), tt.wantInMsg)
			}
		})
	}
}
