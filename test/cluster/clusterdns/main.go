// Command clusterdns is the test cluster's DNS (test/cluster/up.sh runs it on
// the host, on the bridge address, where the kubelet points every pod's
// resolv.conf). It answers what CoreDNS's kubernetes plugin answers for the
// names the project's tests use: <service>.<namespace>.svc.<domain> with the
// Service's ClusterIPs, or with its ready endpoints when it is headless, from
// client-go informers on Services and EndpointSlices. Other names under the
// domain do not exist; names outside it are refused, so no lookup ever leaves
// the machine.
//
// Usage:
//
//	clusterdns --kubeconfig FILE --listen 10.244.0.1:53
//	clusterdns --server 10.244.0.1:53 --check kubernetes.default.svc.cluster.local
package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listerscorev1 "k8s.io/client-go/listers/core/v1"
	listersdiscoveryv1 "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/clientcmd"
)

// ttl is short: tests create and delete Services all the time.
const ttl = 5

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the cluster whose Services to serve")
	listen := flag.String("listen", "", "address to serve DNS on, UDP and TCP (ip:port)")
	domain := flag.String("domain", "cluster.local", "the cluster domain")
	server := flag.String("server", "", "with --check: the DNS server to ask")
	check := flag.String("check", "", "look NAME up at --server and print its addresses, then exit (0 when found)")
	flag.Parse()
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	if *check != "" {
		if err := lookup(*server, *check); err != nil {
			fmt.Fprintln(os.Stderr, "clusterdns:", err)
			os.Exit(1)
		}
		return
	}
	if *kubeconfig == "" || *listen == "" {
		fmt.Fprintln(os.Stderr, "clusterdns: --kubeconfig and --listen are required (or --server with --check)")
		os.Exit(2)
	}
	if err := run(*kubeconfig, *listen, *domain); err != nil {
		log.Fatalf("clusterdns: %v", err)
	}
}

// lookup resolves name at server only, as a pod's resolver would.
func lookup(server, name string) error {
	if server == "" {
		return errors.New("--check needs --server")
	}
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, server)
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	addrs, err := r.LookupHost(ctx, name)
	if err != nil {
		return err
	}
	fmt.Println(strings.Join(addrs, " "))
	return nil
}

func run(kubeconfig, listen, domain string) error {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	factory := informers.NewSharedInformerFactory(client, 0)
	z := &zone{
		domain:    strings.Trim(strings.ToLower(domain), ".") + ".",
		services:  factory.Core().V1().Services().Lister(),
		endpoints: factory.Discovery().V1().EndpointSlices().Lister(),
	}
	factory.Start(ctx.Done())
	for typ, ok := range factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("cache of %v did not sync", typ)
		}
	}

	pc, err := net.ListenPacket("udp", listen)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		pc.Close()
		return err
	}
	log.Printf("serving %s on %s (udp and tcp)", z.domain, listen)
	go func() {
		<-ctx.Done()
		pc.Close()
		ln.Close()
	}()
	errc := make(chan error, 2)
	go func() { errc <- serveTCP(ln, z) }()
	go func() { errc <- serveUDP(pc, z) }()
	err = <-errc
	if ctx.Err() != nil {
		return nil // stopped
	}
	return err
}

func serveUDP(pc net.PacketConn, z *zone) error {
	buf := make([]byte, 512)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return fmt.Errorf("udp: %w", err)
		}
		if out := z.answer(buf[:n], 512); out != nil {
			pc.WriteTo(out, from)
		}
	}
}

func serveTCP(ln net.Listener, z *zone) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("tcp: %w", err)
			}
			// Out of descriptors and the like: the next accept may work.
			log.Printf("tcp accept: %v", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		go func() {
			defer c.Close()
			for {
				c.SetDeadline(time.Now().Add(10 * time.Second))
				var size [2]byte
				if _, err := io.ReadFull(c, size[:]); err != nil {
					return
				}
				q := make([]byte, binary.BigEndian.Uint16(size[:]))
				if _, err := io.ReadFull(c, q); err != nil {
					return
				}
				out := z.answer(q, 65535)
				if out == nil {
					return
				}
				if _, err := c.Write(binary.BigEndian.AppendUint16(nil, uint16(len(out)))); err != nil {
					return
				}
				if _, err := c.Write(out); err != nil {
					return
				}
			}
		}()
	}
}

// zone answers for the names under domain ("cluster.local."): Services'
// names under svc.domain, and no other name.
type zone struct {
	domain    string
	services  listerscorev1.ServiceLister
	endpoints listersdiscoveryv1.EndpointSliceLister
}

// answer builds the response to one query message, or nil when the message
// is not a query worth answering. limit is the transport's message size: an
// answer that does not fit a UDP message is sent truncated, and the client
// asks again over TCP.
func (z *zone) answer(msg []byte, limit int) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(msg)
	if err != nil || h.Response {
		return nil
	}
	resp := dnsmessage.Header{ID: h.ID, Response: true, OpCode: h.OpCode, RecursionDesired: h.RecursionDesired, Authoritative: true}
	q, err := p.Question()
	if err != nil || h.OpCode != 0 {
		resp.RCode = dnsmessage.RCodeFormatError
		if h.OpCode != 0 {
			resp.RCode = dnsmessage.RCodeNotImplemented
		}
		return build(resp, nil, nil)
	}
	name := strings.ToLower(q.Name.String())
	if name != z.domain && !strings.HasSuffix(name, "."+z.domain) {
		// Not ours, and there is no upstream to ask.
		resp.Authoritative = false
		resp.RCode = dnsmessage.RCodeRefused
		return build(resp, &q, nil)
	}
	var addrs []netip.Addr
	rel, found := strings.CutSuffix(name, ".svc."+z.domain)
	if found {
		addrs, found = z.lookup(rel)
	}
	if !found {
		resp.RCode = dnsmessage.RCodeNameError
		return build(resp, &q, nil)
	}
	var records []netip.Addr
	for _, a := range addrs {
		if q.Type == dnsmessage.TypeA && a.Is4() || q.Type == dnsmessage.TypeAAAA && a.Is6() {
			records = append(records, a)
		}
	}
	out := build(resp, &q, records)
	for len(out) > limit && len(records) > 0 {
		resp.Truncated = true
		records = records[:len(records)/2]
		out = build(resp, &q, records)
	}
	return out
}

// lookup finds the addresses of "service.namespace": the ClusterIPs, or the
// ready endpoints of a headless Service.
func (z *zone) lookup(rel string) ([]netip.Addr, bool) {
	name, ns, ok := strings.Cut(rel, ".")
	if !ok || name == "" || strings.Contains(ns, ".") {
		return nil, false
	}
	svc, err := z.services.Services(ns).Get(name)
	if err != nil {
		return nil, false
	}
	var addrs []netip.Addr
	if svc.Spec.ClusterIP != corev1.ClusterIPNone {
		for _, ip := range svc.Spec.ClusterIPs {
			if a, err := netip.ParseAddr(ip); err == nil {
				addrs = append(addrs, a)
			}
		}
		return addrs, true
	}
	eps, err := z.endpoints.EndpointSlices(ns).List(serviceSelector(name))
	if err != nil {
		return nil, true
	}
	for _, s := range eps {
		for _, e := range s.Endpoints {
			if e.Conditions.Ready != nil && !*e.Conditions.Ready {
				continue
			}
			for _, ip := range e.Addresses {
				if a, err := netip.ParseAddr(ip); err == nil {
					addrs = appendUnique(addrs, a)
				}
			}
		}
	}
	return addrs, true
}

func appendUnique(addrs []netip.Addr, a netip.Addr) []netip.Addr {
	if slices.Contains(addrs, a) {
		return addrs
	}
	return append(addrs, a)
}

// build writes a response with the question and A/AAAA answers.
func build(h dnsmessage.Header, q *dnsmessage.Question, addrs []netip.Addr) []byte {
	b := dnsmessage.NewBuilder(nil, h)
	b.EnableCompression()
	if q == nil {
		out, _ := b.Finish()
		return out
	}
	if b.StartQuestions() != nil || b.Question(*q) != nil || b.StartAnswers() != nil {
		return nil
	}
	for _, a := range addrs {
		rh := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: ttl}
		var err error
		if a.Is4() {
			err = b.AResource(rh, dnsmessage.AResource{A: a.As4()})
		} else {
			err = b.AAAAResource(rh, dnsmessage.AAAAResource{AAAA: a.As16()})
		}
		if err != nil {
			return nil
		}
	}
	out, err := b.Finish()
	if err != nil {
		return nil
	}
	return out
}

// serviceSelector selects the EndpointSlices of a Service.
func serviceSelector(service string) labels.Selector {
	return labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: service})
}
