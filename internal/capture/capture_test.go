package capture

import (
	"net/netip"
	"reflect"
	"testing"
)

func TestParsePorts(t *testing.T) {
	got, err := ParsePorts(" 8125,3306 ,,")
	if err != nil || !reflect.DeepEqual(got, []int{3306, 8125}) {
		t.Fatalf("ParsePorts = %v, %v", got, err)
	}
	for _, bad := range []string{"0", "65536", "http", "80-90"} {
		if _, err := ParsePorts(bad); err == nil {
			t.Errorf("ParsePorts(%q) took it", bad)
		}
	}
}

func TestParseCIDRs(t *testing.T) {
	got, err := ParseCIDRs("10.1.2.3/8, 192.168.1.7,fd00:1::5/32, fd00::77")
	want := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.168.1.7/32"),
		netip.MustParsePrefix("fd00:1::/32"), netip.MustParsePrefix("fd00::77/128")}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("ParseCIDRs = %v, %v; want %v", got, err, want)
	}
	for _, bad := range []string{"10.0.0.0/33", "fd00::/129", "::ffff:10.0.0.0/104", "fe80::1%eth0", "nope"} {
		if _, err := ParseCIDRs(bad); err == nil {
			t.Errorf("ParseCIDRs(%q) took it", bad)
		}
	}
}

func TestValidate(t *testing.T) {
	uid := uint32(1337)
	for name, r := range map[string]Rules{
		"nothing":            {},
		"port out of range":  {InboundPort: 70000},
		"outbound, no owner": {OutboundPort: 15001},
		"bad exclusion":      {InboundPort: 15006, ExcludeInboundPorts: []int{0}},
		"ipv4-mapped cidr":   {OutboundPort: 15001, ProxyUID: &uid, ExcludeOutboundCIDRs: []netip.Prefix{netip.MustParsePrefix("::ffff:10.0.0.0/104")}},
		"invalid cidr":       {OutboundPort: 15001, ProxyUID: &uid, IncludeOutboundCIDRs: []netip.Prefix{{}}},
	} {
		if err := r.Validate(); err == nil {
			t.Errorf("%s: Validate took %+v", name, r)
		}
	}
	for _, r := range []Rules{
		{OutboundPort: 15001, InboundPort: 15006, ProxyUID: &uid},
		{OutboundPort: 15001, ProxyUID: &uid, ExcludeOutboundCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")}},
	} {
		if err := r.Validate(); err != nil {
			t.Errorf("Validate refused good rules %+v: %v", r, err)
		}
	}
}
