package cli

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

// A sidecar that exits before it is ready ends the wait with its exit, and
// leaves that exit for the caller, whose stop then does not wait for another
// (trellis run once hung there, past SIGINT and SIGTERM).
func TestWaitReadyLeavesTheSidecarsExitForTheCaller(t *testing.T) {
	// A loopback port nothing listens on: /ready never answers.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	died := make(chan error, 1)
	exit := errors.New("exit status 1")
	died <- exit
	err = waitReady(context.Background(), "http://"+addr+"/ready", time.Minute, died, nil)
	if err == nil || !strings.Contains(err.Error(), "exited before it was ready: exit status 1") {
		t.Fatalf("waitReady = %v, want the sidecar's exit", err)
	}
	select {
	case got := <-died:
		if got != exit {
			t.Errorf("left on the channel %v, want %v", got, exit)
		}
	default:
		t.Error("the sidecar's exit was taken from the channel: the caller's stop would wait for it forever")
	}
}
