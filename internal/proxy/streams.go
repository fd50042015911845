package proxy

import (
	"context"
	"net"
	"sync"
)

// streams tracks the connections the sidecar carries outside net/http's
// servers, which forget a connection once it is hijacked: CONNECT tunnels,
// switched protocols (WebSocket), inbound TCP tunnels and TCP forwards. A
// drain waits for them, as the servers wait for requests, then closes those
// left.
type streams struct {
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	draining bool
	wg       sync.WaitGroup
}

func newStreams() *streams { return &streams{conns: map[net.Conn]struct{}{}} }

// add tracks c until done(c). Once a drain has begun it closes c instead and
// returns false: the caller must not carry it.
func (s *streams) add(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining {
		c.Close()
		return false
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return true
}

// done stops tracking c, which the caller has closed.
func (s *streams) done(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.wg.Done()
}

// drain refuses new connections, waits until those tracked have finished or
// ctx ends, then closes those left and waits for their carriers to return.
func (s *streams) drain(ctx context.Context) {
	s.mu.Lock()
	s.draining = true
	s.mu.Unlock()
	finished := make(chan struct{})
	go func() { s.wg.Wait(); close(finished) }()
	select {
	case <-finished:
		return
	case <-ctx.Done():
	}
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	<-finished
}
