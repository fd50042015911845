// Command trellis-capture programs transparent capture in the network
// namespace it runs in and exits: the init container Trellis injects into a
// meshed pod (with CAP_NET_ADMIN), before the sidecar and the app start.
//
//	trellis-capture --proxy-uid 1500 --exclude-inbound-ports 15000,15003
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/trellis-mesh/trellis/internal/capture"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "trellis-capture:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("trellis-capture", flag.ContinueOnError)
	out := fs.Int("outbound-port", capture.DefaultOutboundPort, "the sidecar's capture-outbound `port` (0: no outbound capture)")
	in := fs.Int("inbound-port", capture.DefaultInboundPort, "the sidecar's capture-inbound `port` (0: no inbound capture)")
	uid := fs.Int("proxy-uid", -1, "the `uid` the sidecar runs as, whose connections pass")
	mark := fs.Uint("proxy-mark", 0, "the socket `mark` the sidecar sets, whose connections pass")
	exIn := fs.String("exclude-inbound-ports", "", "comma-separated `ports` inbound capture leaves alone (the sidecar's own among them)")
	exOut := fs.String("exclude-outbound-ports", "", "comma-separated destination `ports` outbound capture leaves alone")
	exCIDR := fs.String("exclude-outbound-cidrs", "", "comma-separated IPv4 or IPv6 `CIDRs` outbound capture leaves alone")
	inCIDR := fs.String("include-outbound-cidrs", "", "comma-separated IPv4 or IPv6 `CIDRs`: when set, only these are captured outbound")
	remove := fs.Bool("remove", false, "remove the rules instead")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *remove {
		return capture.Remove(-1)
	}
	r := capture.Rules{OutboundPort: *out, InboundPort: *in, ProxyMark: uint32(*mark)}
	if *uid >= 0 {
		u := uint32(*uid)
		r.ProxyUID = &u
	}
	var err error
	if r.ExcludeInboundPorts, err = capture.ParsePorts(*exIn); err != nil {
		return fmt.Errorf("--exclude-inbound-ports: %w", err)
	}
	if r.ExcludeOutboundPorts, err = capture.ParsePorts(*exOut); err != nil {
		return fmt.Errorf("--exclude-outbound-ports: %w", err)
	}
	if r.ExcludeOutboundCIDRs, err = capture.ParseCIDRs(*exCIDR); err != nil {
		return fmt.Errorf("--exclude-outbound-cidrs: %w", err)
	}
	if r.IncludeOutboundCIDRs, err = capture.ParseCIDRs(*inCIDR); err != nil {
		return fmt.Errorf("--include-outbound-cidrs: %w", err)
	}
	if r.OutboundPort != 0 && r.ProxyUID == nil && r.ProxyMark == 0 {
		return errors.New("--proxy-uid or --proxy-mark is required: the sidecar's own connections must pass")
	}
	if err := capture.Apply(-1, r); err != nil {
		return err
	}
	fmt.Printf("trellis-capture: outbound TCP → :%d, inbound TCP → :%d; inbound ports left alone %v, outbound ports %v, outbound CIDRs %v\n",
		r.OutboundPort, r.InboundPort, r.ExcludeInboundPorts, r.ExcludeOutboundPorts, r.ExcludeOutboundCIDRs)
	return nil
}
