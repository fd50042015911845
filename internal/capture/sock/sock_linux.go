// Package sock holds the socket options transparent capture needs on the
// sidecar's side: reading a redirected connection's original destination and
// marking the sidecar's own sockets so capture lets them pass. It uses the
// standard library and x/sys only, so the sidecar stays lean (the rules
// themselves are programmed by package capture, which the sidecar does not
// import).
package sock

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

var errNotRedirected = errors.New("not redirected")

// OriginalDst returns where a redirected TCP connection was going before
// capture sent it to the sidecar (SO_ORIGINAL_DST). A connection that was not
// redirected returns its own local address.
func OriginalDst(c net.Conn) (netip.AddrPort, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return netip.AddrPort{}, errors.New("not a socket")
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	var sa unix.RawSockaddrInet4
	var serr error
	err = rc.Control(func(fd uintptr) {
		size := uint32(unsafe.Sizeof(sa))
		_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_IP, unix.SO_ORIGINAL_DST,
			uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&size)), 0)
		if e != 0 {
			serr = os.NewSyscallError("getsockopt SO_ORIGINAL_DST", e)
		}
		if e == unix.ENOENT { // no NAT entry: the connection came straight here
			serr = errNotRedirected
		}
	})
	if err == nil {
		err = serr
	}
	if err == errNotRedirected {
		if a, ok := c.LocalAddr().(*net.TCPAddr); ok {
			ap := a.AddrPort()
			return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
		}
	}
	if err != nil {
		return netip.AddrPort{}, err
	}
	pb := (*[2]byte)(unsafe.Pointer(&sa.Port)) // network byte order
	port := uint16(pb[0])<<8 | uint16(pb[1])
	return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), port), nil
}

// MarkDialer returns a net.Dialer Control function that sets SO_MARK on each
// socket, so that capture rules with the same ProxyMark let the sidecar's own
// connections pass. Setting a mark needs CAP_NET_ADMIN.
func MarkDialer(mark uint32) func(network, address string, c syscall.RawConn) error {
	return func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
		}); err != nil {
			return err
		}
		if serr != nil {
			return fmt.Errorf("set SO_MARK %#x (needs CAP_NET_ADMIN): %w", mark, serr)
		}
		return nil
	}
}
