package procfs

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// Socket states in /proc/net/{tcp,udp}: TCP_LISTEN, and TCP_CLOSE, which is what
// an unconnected (bound, receiving) UDP socket shows.
const (
	stateListen = 0x0A
	stateClose  = 0x07
)

// Socket is one line of /proc/net/{tcp,tcp6,udp,udp6}.
type Socket struct {
	Local netip.AddrPort
	State uint8
	Inode uint64
}

// ParseNetSockets parses the text of /proc/net/tcp, tcp6, udp or udp6.
// Addresses are hexadecimal 32-bit words in the kernel's byte order.
func ParseNetSockets(text string) ([]Socket, error) {
	var out []Socket
	sc := bufio.NewScanner(strings.NewReader(text))
	first := true
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if first { // the header
			first = false
			continue
		}
		if line == "" {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 10 {
			return nil, fmt.Errorf("socket line %q: %d fields, want at least 10", trunc(line), len(f))
		}
		local, err := parseHexAddrPort(f[1])
		if err != nil {
			return nil, fmt.Errorf("socket line %q: local address: %w", trunc(line), err)
		}
		state, err := strconv.ParseUint(f[3], 16, 8)
		if err != nil {
			return nil, fmt.Errorf("socket line %q: state: %w", trunc(line), err)
		}
		inode, err := strconv.ParseUint(f[9], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("socket line %q: inode: %w", trunc(line), err)
		}
		out = append(out, Socket{Local: local, State: uint8(state), Inode: inode})
	}
	return out, sc.Err()
}

// parseHexAddrPort decodes "0100007F:1F90" (IPv4) or a 32-digit IPv6 address.
func parseHexAddrPort(s string) (netip.AddrPort, error) {
	h, p, ok := strings.Cut(s, ":")
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("%q has no port", s)
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q: port: %w", s, err)
	}
	raw, err := hex.DecodeString(h)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.AddrPort{}, fmt.Errorf("%q is not a hexadecimal IPv4 or IPv6 address", h)
	}
	// Each 32-bit word is in host byte order; turn it into network order.
	for i := 0; i < len(raw); i += 4 {
		binary.BigEndian.PutUint32(raw[i:], binary.NativeEndian.Uint32(raw[i:]))
	}
	addr, _ := netip.AddrFromSlice(raw)
	return netip.AddrPortFrom(addr.Unmap(), uint16(port)), nil
}

// socketInodes lists the socket inodes among pid's open files.
func (fs FS) socketInodes(pid int) (map[uint64]bool, error) {
	dir := fs.path(strconv.Itoa(pid), "fd")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("process %d: %w", pid, err)
	}
	out := map[uint64]bool{}
	for _, e := range ents {
		target, err := os.Readlink(dir + "/" + e.Name())
		if err != nil {
			continue // closed meanwhile
		}
		if s, ok := strings.CutPrefix(target, "socket:["); ok {
			if n, err := strconv.ParseUint(strings.TrimSuffix(s, "]"), 10, 64); err == nil {
				out[n] = true
			}
		}
	}
	return out, nil
}

// Listening lists the local addresses on which pid accepts traffic: its TCP
// sockets in LISTEN state and its bound, unconnected UDP sockets.
func (fs FS) Listening(pid int) ([]netip.AddrPort, error) {
	inodes, err := fs.socketInodes(pid)
	if err != nil || len(inodes) == 0 {
		return nil, err
	}
	var out []netip.AddrPort
	for _, table := range []struct {
		file  string
		state uint8
	}{{"tcp", stateListen}, {"tcp6", stateListen}, {"udp", stateClose}, {"udp6", stateClose}} {
		b, err := os.ReadFile(fs.path(strconv.Itoa(pid), "net", table.file))
		if os.IsNotExist(err) {
			continue // no IPv6 in this kernel
		}
		if err != nil {
			return nil, fmt.Errorf("process %d: %w", pid, err)
		}
		socks, err := ParseNetSockets(string(b))
		if err != nil {
			return nil, fmt.Errorf("process %d: net/%s: %w", pid, table.file, err)
		}
		for _, s := range socks {
			if inodes[s.Inode] && s.State == table.state && s.Local.Port() != 0 {
				out = append(out, s.Local)
			}
		}
	}
	return out, nil
}
