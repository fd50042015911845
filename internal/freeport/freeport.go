// Package freeport picks loopback ports for listeners that another process, or a
// later step, will open. It picks below the kernel's ephemeral range: a port the
// kernel hands out for ":0" can be taken by an outgoing connection before the
// intended listener binds it, which makes start-ups fail now and then. The CLI,
// the benchmark harness and the tests import it.
package freeport

import (
	"errors"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
)

// Pick returns a port on 127.0.0.1 that nothing listens on now, below the
// ephemeral range (from /proc/sys/net/ipv4/ip_local_port_range; 32768 if
// unreadable).
func Pick() (int, error) {
	low := ephemeralLow()
	for range 200 {
		port := 10000 + rand.IntN(low-10000)
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err == nil {
			l.Close()
			return port, nil
		}
	}
	return 0, errors.New("no free port on 127.0.0.1 below the ephemeral range")
}

func ephemeralLow() int {
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if v, err := strconv.Atoi(f[0]); err == nil && v > 11000 {
				low = v
			}
		}
	}
	return low
}
