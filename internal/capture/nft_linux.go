package capture

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// families are the tables capture programs: "ip trellis" always, and
// "ip6 trellis" alongside when the kernel has IPv6.
func families() []nftables.TableFamily {
	if !kernelHasIPv6() {
		return []nftables.TableFamily{nftables.TableFamilyIPv4}
	}
	return []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyIPv6}
}

// kernelHasIPv6 says whether the kernel runs IPv6 at all (not booted with
// ipv6.disable=1), which an ip6 NAT table needs: /proc/net/if_inet6 exists
// exactly then.
func kernelHasIPv6() bool {
	_, err := os.Stat("/proc/net/if_inet6")
	return err == nil
}

// Apply programs r in the network namespace open as netnsFD, or in the
// caller's own namespace when netnsFD is negative (an init container): the
// same rules for IPv4 (table ip trellis) and IPv6 (table ip6 trellis), each
// with the CIDRs of its family. It replaces any earlier Trellis tables there
// in one netlink batch, so the namespace never holds half the rules.
func Apply(netnsFD int, r Rules) error {
	if err := r.Validate(); err != nil {
		return err
	}
	c, err := conn(netnsFD)
	if err != nil {
		return err
	}
	for _, fam := range families() {
		t := &nftables.Table{Family: fam, Name: TableName}
		// Adding then deleting makes the delete succeed whether or not the
		// table was there; the new table follows in the same batch.
		c.AddTable(t)
		c.DelTable(t)
		c.AddTable(t)
		if r.OutboundPort != 0 {
			ch := c.AddChain(&nftables.Chain{Name: "output", Table: t, Type: nftables.ChainTypeNAT,
				Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest})
			for _, e := range outboundRules(r, fam == nftables.TableFamilyIPv6) {
				c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: e})
			}
		}
		if r.InboundPort != 0 {
			ch := c.AddChain(&nftables.Chain{Name: "prerouting", Table: t, Type: nftables.ChainTypeNAT,
				Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest})
			for _, e := range inboundRules(r) {
				c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: e})
			}
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("capture: program nftables tables %s: %w", TableName, err)
	}
	return nil
}

// Remove deletes the Trellis tables from the namespace; a namespace without
// them is not an error.
func Remove(netnsFD int) error {
	c, err := conn(netnsFD)
	if err != nil {
		return err
	}
	for _, fam := range families() {
		t := &nftables.Table{Family: fam, Name: TableName}
		c.AddTable(t)
		c.DelTable(t)
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("capture: delete nftables tables %s: %w", TableName, err)
	}
	return nil
}

// Programmed says whether the namespace holds the Trellis tables, of every
// family Apply programs.
func Programmed(netnsFD int) (bool, error) {
	c, err := conn(netnsFD)
	if err != nil {
		return false, err
	}
	for _, fam := range families() {
		ts, err := c.ListTablesOfFamily(fam)
		if err != nil {
			return false, fmt.Errorf("capture: list nftables tables: %w", err)
		}
		if !slices.ContainsFunc(ts, func(t *nftables.Table) bool { return t.Name == TableName }) {
			return false, nil
		}
	}
	return true, nil
}

func conn(netnsFD int) (*nftables.Conn, error) {
	var opts []nftables.ConnOption
	if netnsFD >= 0 {
		opts = append(opts, nftables.WithNetNSFd(netnsFD))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("capture: netlink: %w", err)
	}
	return c, nil
}

var (
	ret = &expr.Verdict{Kind: expr.VerdictReturn}
	// notTCP returns from the chain for anything but TCP.
	notTCP = []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		ret,
	}
)

// outboundRules are the output chain's rules for one family: the CIDRs of
// the other family are the other table's.
func outboundRules(r Rules, v6 bool) [][]expr.Any {
	rules := [][]expr.Any{notTCP}
	if r.ProxyMark != 0 {
		rules = append(rules, []expr.Any{
			&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(r.ProxyMark)},
			ret,
		})
	}
	if r.ProxyUID != nil {
		rules = append(rules, []expr.Any{
			&expr.Meta{Key: expr.MetaKeySKUID, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(*r.ProxyUID)},
			ret,
		})
	}
	// Loopback (127.0.0.0/8 and ::1): the app calling itself, and the
	// sidecar handing requests to the app.
	rules = append(rules, []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname("lo")},
		ret,
	})
	ofFamily := func(p netip.Prefix) bool { return p.Addr().Is6() == v6 }
	for _, p := range r.ExcludeOutboundCIDRs {
		if ofFamily(p) {
			rules = append(rules, append(daddrIn(p), ret))
		}
	}
	for _, p := range r.ExcludeOutboundPorts {
		rules = append(rules, append(dport(p), ret))
	}
	if len(r.IncludeOutboundCIDRs) == 0 {
		return append(rules, redirect(r.OutboundPort))
	}
	// Only the included destinations are captured: in a family with none
	// of them, nothing is.
	for _, p := range r.IncludeOutboundCIDRs {
		if ofFamily(p) {
			rules = append(rules, append(daddrIn(p), redirect(r.OutboundPort)...))
		}
	}
	return rules
}

func inboundRules(r Rules) [][]expr.Any {
	rules := [][]expr.Any{notTCP}
	for _, p := range r.ExcludeInboundPorts {
		rules = append(rules, append(dport(p), ret))
	}
	return append(rules, redirect(r.InboundPort))
}

// daddrIn matches a destination inside p: the IPv4 header's destination
// address (offset 16, 4 bytes) or the IPv6 header's (offset 24, 16 bytes).
func daddrIn(p netip.Prefix) []expr.Any {
	offset, size := uint32(16), 4
	if p.Addr().Is6() {
		offset, size = 24, 16
	}
	mask := net.CIDRMask(p.Bits(), size*8)
	a := p.Masked().Addr().AsSlice()
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: uint32(size)},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: uint32(size), Mask: mask, Xor: make([]byte, size)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a},
	}
}

// dport matches a TCP destination port (the chain already returned for
// anything but TCP).
func dport(p int) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(uint16(p))},
	}
}

func redirect(port int) []expr.Any {
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(uint16(port))},
		&expr.Redir{RegisterProtoMin: 1},
	}
}

// ifname is an interface name as nftables compares it: NUL-padded to IFNAMSIZ.
func ifname(n string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, n)
	return b
}
