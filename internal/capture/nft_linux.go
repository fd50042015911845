package capture

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Apply programs r in the network namespace open as netnsFD, or in the
// caller's own namespace when netnsFD is negative (an init container). It
// replaces any earlier Trellis table there in one netlink batch, so the
// namespace never holds half the rules.
func Apply(netnsFD int, r Rules) error {
	if err := r.Validate(); err != nil {
		return err
	}
	c, err := conn(netnsFD)
	if err != nil {
		return err
	}
	t := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: TableName}
	// Adding then deleting makes the delete succeed whether or not the table
	// was there; the new table follows in the same batch.
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	if r.OutboundPort != 0 {
		ch := c.AddChain(&nftables.Chain{Name: "output", Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest})
		for _, e := range outboundRules(r) {
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
	if err := c.Flush(); err != nil {
		return fmt.Errorf("capture: program nftables table %s: %w", TableName, err)
	}
	return nil
}

// Remove deletes the Trellis table from the namespace; a namespace without one
// is not an error.
func Remove(netnsFD int) error {
	c, err := conn(netnsFD)
	if err != nil {
		return err
	}
	t := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: TableName}
	c.AddTable(t)
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("capture: delete nftables table %s: %w", TableName, err)
	}
	return nil
}

// Programmed says whether the namespace holds the Trellis table.
func Programmed(netnsFD int) (bool, error) {
	c, err := conn(netnsFD)
	if err != nil {
		return false, err
	}
	ts, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return false, fmt.Errorf("capture: list nftables tables: %w", err)
	}
	for _, t := range ts {
		if t.Name == TableName {
			return true, nil
		}
	}
	return false, nil
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

func outboundRules(r Rules) [][]expr.Any {
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
	// Loopback: the app calling itself, and the sidecar handing requests to
	// the app.
	rules = append(rules, []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname("lo")},
		ret,
	})
	for _, p := range r.ExcludeOutboundCIDRs {
		rules = append(rules, append(daddrIn(p), ret))
	}
	for _, p := range r.ExcludeOutboundPorts {
		rules = append(rules, append(dport(p), ret))
	}
	if len(r.IncludeOutboundCIDRs) == 0 {
		return append(rules, redirect(r.OutboundPort))
	}
	for _, p := range r.IncludeOutboundCIDRs {
		rules = append(rules, append(daddrIn(p), redirect(r.OutboundPort)...))
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

// daddrIn matches an IPv4 destination inside p.
func daddrIn(p netip.Prefix) []expr.Any {
	mask := net.CIDRMask(p.Bits(), 32)
	a := p.Masked().Addr().As4()
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a[:]},
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
