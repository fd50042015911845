package proxy

import (
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

func TestListenInheritedSocket(t *testing.T) {
	orig, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f, err := orig.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	addr := orig.Addr().String()
	orig.Close() // the duplicate keeps the socket bound, as in a child process

	ln, err := listen(handOver(t, f))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if got := ln.Addr().String(); got != addr {
		t.Errorf("inherited listener address = %s, want %s", got, addr)
	}
	accepted := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Close()
		}
		accepted <- err
	}()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial the inherited listener: %v", err)
	}
	c.Close()
	if err := <-accepted; err != nil {
		t.Fatalf("accept on the inherited listener: %v", err)
	}
}

// handOver returns "fd:N" for a duplicate of f's descriptor that listen may take
// and close, as a child process owns what it inherits. Closing f's own number
// there instead would close it twice, the second time perhaps another test's.
func handOver(t *testing.T, f *os.File) string {
	t.Helper()
	fd, err := syscall.Dup(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	return "fd:" + strconv.Itoa(fd)
}

func TestListenBadDescriptor(t *testing.T) {
	notSocket, err := os.CreateTemp(t.TempDir(), "plain")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ addr, want string }{
		{"fd:x", "want fd:N"},
		{"fd:1", "want fd:N"},
		{handOver(t, notSocket), "not a listening socket"},
	} {
		_, err := listen(tc.addr)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("listen(%q) = %v, want an error containing %q", tc.addr, err, tc.want)
		}
	}
}

func TestMeshLogLevel(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want slog.Level
	}{
		{"trace", slog.LevelDebug}, {"debug", slog.LevelDebug}, {"info", slog.LevelInfo}, {"warning", slog.LevelWarn},
		{"warn", slog.LevelWarn}, {"error", slog.LevelError}, {"critical", slog.LevelError}, {"", slog.LevelWarn}, {"loud", slog.LevelWarn},
	} {
		if got := meshLogLevel(tt.in, slog.LevelWarn); got != tt.want {
			t.Errorf("meshLogLevel(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
	if off := meshLogLevel("off", slog.LevelInfo); off <= slog.LevelError {
		t.Errorf("meshLogLevel(off) = %v, want above error", off)
	}
}
