// Package capture programs transparent traffic capture inside a network
// namespace: outbound TCP connections the app opens are redirected to the
// sidecar's capture-outbound port, inbound TCP connections to the app's ports
// are redirected to its capture-inbound port, and the sidecar's own traffic,
// loopback, and the ports and CIDRs the user excludes pass untouched. The
// sidecar reads where a redirected connection was going with OriginalDst.
//
// The rules are one nftables table, "trellis", in each of the ip and ip6
// families (the same rules, each with the CIDRs of its family; ip6 only where
// the kernel runs IPv6), written through
// netlink (github.com/google/nftables): no iptables or nft binary is needed, so
// a static binary can program a pod's namespace from an init container, and
// `trellis run --isolation netns` programs a workload's namespace the same way.
package capture

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
)

// TableName is the nftables table the rules live in (families ip and ip6).
const TableName = "trellis"

// Default ports, as the sidecar uses them in a namespace of its own.
const (
	DefaultOutboundPort = 15002 // capture-outbound: the app's redirected connections (15001 is the explicit proxy)
	DefaultInboundPort  = 15006 // capture-inbound: connections to the app's ports
)

// Rules describe what is captured in one network namespace.
type Rules struct {
	// OutboundPort is where outbound connections are redirected (the sidecar's
	// --capture-outbound listener on 127.0.0.1); 0 captures no outbound traffic.
	OutboundPort int
	// InboundPort is where inbound connections are redirected (the sidecar's
	// --capture-inbound listener on 0.0.0.0); 0 captures no inbound traffic.
	InboundPort int

	// The sidecar's own connections are told apart by socket mark (set with
	// SO_MARK, which needs CAP_NET_ADMIN) or by the user ID it runs as, or
	// both. At least one is required when outbound traffic is captured, or
	// the sidecar's own dials would loop back into it.
	ProxyMark uint32
	ProxyUID  *uint32

	// Exclusions. Inbound ports always include the sidecar's own listeners,
	// which the caller lists (its mTLS port and admin port). CIDRs may be
	// IPv4 or IPv6; each goes into the table of its family.
	ExcludeOutboundPorts []int
	ExcludeInboundPorts  []int
	ExcludeOutboundCIDRs []netip.Prefix
	// IncludeOutboundCIDRs, when set, limits outbound capture to these
	// destinations; empty captures every destination not excluded.
	IncludeOutboundCIDRs []netip.Prefix
}

// Validate reports the first thing that makes the rules unusable, naming the
// field and the fix.
func (r Rules) Validate() error {
	if r.OutboundPort == 0 && r.InboundPort == 0 {
		return errors.New("capture: neither outbound nor inbound port is set: nothing would be captured")
	}
	for _, p := range []struct {
		name string
		v    int
	}{{"outbound port", r.OutboundPort}, {"inbound port", r.InboundPort}} {
		if p.v < 0 || p.v > 65535 {
			return fmt.Errorf("capture: %s %d is not a port from 1 to 65535", p.name, p.v)
		}
	}
	if r.OutboundPort != 0 && r.ProxyMark == 0 && r.ProxyUID == nil {
		return errors.New("capture: outbound capture needs the sidecar's socket mark or user ID, or its own connections would be captured again")
	}
	for _, ports := range [][]int{r.ExcludeOutboundPorts, r.ExcludeInboundPorts} {
		for _, p := range ports {
			if p < 1 || p > 65535 {
				return fmt.Errorf("capture: excluded port %d is not a port from 1 to 65535", p)
			}
		}
	}
	for _, cidrs := range [][]netip.Prefix{r.ExcludeOutboundCIDRs, r.IncludeOutboundCIDRs} {
		for _, c := range cidrs {
			if !c.IsValid() || c.Addr().Is4In6() || c.Addr().Zone() != "" {
				return fmt.Errorf("capture: CIDR %s is not an IPv4 or IPv6 prefix (no IPv4-mapped addresses, no zones)", c)
			}
		}
	}
	return nil
}

// ParsePorts reads a comma-separated port list, as the exclusion annotations
// and flags take it ("3306,8125"). Empty gives none.
func ParsePorts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		p, err := strconv.Atoi(f)
		if err != nil || p < 1 || p > 65535 {
			return nil, fmt.Errorf("port %q is not a number from 1 to 65535", f)
		}
		out = append(out, p)
	}
	sort.Ints(out)
	return out, nil
}

// ParseCIDRs reads a comma-separated list of IPv4 and IPv6 CIDRs
// ("10.0.0.0/8,192.168.1.7/32,fd00::/8"); a bare address means /32 or /128.
// Empty gives none.
func ParseCIDRs(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if !strings.Contains(f, "/") {
			a, err := netip.ParseAddr(f)
			if err != nil {
				return nil, fmt.Errorf("%q is neither a CIDR nor an address", f)
			}
			if a.Zone() != "" {
				return nil, fmt.Errorf("%q has a zone, which a CIDR cannot", f)
			}
			f = netip.PrefixFrom(a, a.BitLen()).String()
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, fmt.Errorf("%q is not a CIDR: %v", f, err)
		}
		if p.Addr().Is4In6() {
			return nil, fmt.Errorf("%q is an IPv4-mapped IPv6 prefix: write it as IPv4", f)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}
