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
	"strconv"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

var errNotRedirected = errors.New("not redirected")

// ip6tSoOriginalDst is IP6T_SO_ORIGINAL_DST (linux/netfilter_ipv6/ip6_tables.h),
// the IPv6 counterpart of SO_ORIGINAL_DST, read at level SOL_IPV6. x/sys
// does not name it.
const ip6tSoOriginalDst = 80

// OriginalDst returns where a redirected TCP connection was going before
// capture sent it to the sidecar: SO_ORIGINAL_DST for IPv4,
// IP6T_SO_ORIGINAL_DST for IPv6, by the family of the connection's local
// address. A connection that was not redirected returns its own local address.
func OriginalDst(c net.Conn) (netip.AddrPort, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return netip.AddrPort{}, errors.New("not a socket")
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	v6 := false
	if a, ok := c.LocalAddr().(*net.TCPAddr); ok {
		v6 = a.AddrPort().Addr().Is6() && !a.AddrPort().Addr().Is4In6()
	}
	var sa4 unix.RawSockaddrInet4
	var sa6 unix.RawSockaddrInet6
	var serr error
	err = rc.Control(func(fd uintptr) {
		level, opt, p, size := unix.SOL_IP, unix.SO_ORIGINAL_DST, unsafe.Pointer(&sa4), uint32(unsafe.Sizeof(sa4))
		name := "SO_ORIGINAL_DST"
		if v6 {
			level, opt, p, size = unix.SOL_IPV6, ip6tSoOriginalDst, unsafe.Pointer(&sa6), uint32(unsafe.Sizeof(sa6))
			name = "IP6T_SO_ORIGINAL_DST"
		}
		_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, uintptr(level), uintptr(opt),
			uintptr(p), uintptr(unsafe.Pointer(&size)), 0)
		if e != 0 {
			serr = os.NewSyscallError("getsockopt "+name, e)
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
	if v6 {
		a := netip.AddrFrom16(sa6.Addr)
		if sa6.Scope_id != 0 {
			a = a.WithZone(strconv.FormatUint(uint64(sa6.Scope_id), 10))
		}
		return netip.AddrPortFrom(a.Unmap(), networkPort(sa6.Port)), nil
	}
	return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), networkPort(sa4.Port)), nil
}

// networkPort reads a port in network byte order, as a sockaddr holds it.
func networkPort(p uint16) uint16 {
	pb := (*[2]byte)(unsafe.Pointer(&p))
	return uint16(pb[0])<<8 | uint16(pb[1])
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
