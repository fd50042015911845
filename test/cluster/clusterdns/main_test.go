package main

import (
	"context"
	"errors"
	"net"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	listerscorev1 "k8s.io/client-go/listers/core/v1"
	listersdiscoveryv1 "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
)

// serve runs the zone on loopback, UDP and TCP on one port, and returns a
// resolver that asks it only: over TCP for "tcp", else as the resolver
// chooses (UDP, then TCP for a truncated answer).
func serve(t *testing.T, objs ...any) func(network string) *net.Resolver {
	t.Helper()
	svcs := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	eps := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	for _, o := range objs {
		var err error
		switch o.(type) {
		case *corev1.Service:
			err = svcs.Add(o)
		case *discoveryv1.EndpointSlice:
			err = eps.Add(o)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	z := &zone{domain: "cluster.local.", services: listerscorev1.NewServiceLister(svcs), endpoints: listersdiscoveryv1.NewEndpointSliceLister(eps)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenPacket("udp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close(); pc.Close() })
	go serveTCP(ln, z)
	go serveUDP(pc, z)
	return func(network string) *net.Resolver {
		return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, chosen, _ string) (net.Conn, error) {
			if network == "tcp" {
				chosen = "tcp"
			}
			var d net.Dialer
			return d.DialContext(ctx, chosen, ln.Addr().String())
		}}
	}
}

func service(ns, name string, ips ...string) *corev1.Service {
	s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: corev1.ServiceSpec{ClusterIPs: ips}}
	if len(ips) > 0 {
		s.Spec.ClusterIP = ips[0]
	}
	return s
}

func TestAnswers(t *testing.T) {
	notReady := false
	headless := service("db", "mariadb", corev1.ClusterIPNone)
	resolver := serve(t,
		service("bookstore", "bookstore", "10.96.0.20"),
		service("default", "dual", "10.96.0.30", "fd00::30"),
		headless,
		&discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Namespace: "db", Name: "mariadb-a", Labels: map[string]string{discoveryv1.LabelServiceName: "mariadb"}},
			Endpoints: []discoveryv1.Endpoint{
				{Addresses: []string{"10.244.0.7"}},
				{Addresses: []string{"10.244.0.8"}, Conditions: discoveryv1.EndpointConditions{Ready: &notReady}},
			},
		},
		&discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Namespace: "db", Name: "mariadb-b", Labels: map[string]string{discoveryv1.LabelServiceName: "mariadb"}},
			Endpoints:  []discoveryv1.Endpoint{{Addresses: []string{"10.244.0.9"}}, {Addresses: []string{"10.244.0.7"}}},
		},
	)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, network := range []string{"udp", "tcp"} {
		r := resolver(network)
		for name, want := range map[string][]string{
			"bookstore.bookstore.svc.cluster.local": {"10.96.0.20"},
			"BookStore.bookstore.svc.cluster.local": {"10.96.0.20"},
			"dual.default.svc.cluster.local.":       {"10.96.0.30", "fd00::30"},
			"mariadb.db.svc.cluster.local":          {"10.244.0.7", "10.244.0.9"},
		} {
			got, err := r.LookupHost(ctx, name)
			slices.Sort(got)
			if err != nil || !slices.Equal(got, want) {
				t.Errorf("%s: LookupHost(%s) = %v, %v; want %v", network, name, got, err, want)
			}
		}
		for _, name := range []string{
			"missing.bookstore.svc.cluster.local",   // no such Service
			"bookstore.elsewhere.svc.cluster.local", // not in that namespace
			"bookstore.svc.cluster.local",           // no namespace
			"a.bookstore.bookstore.svc.cluster.local",
			"bookstore.bookstore.cluster.local", // under the domain, not a Service name
			"cluster.local",
		} {
			_, err := r.LookupHost(ctx, name)
			var de *net.DNSError
			if !errors.As(err, &de) || !de.IsNotFound {
				t.Errorf("%s: LookupHost(%s) = %v; want not found", network, name, err)
			}
		}
		// Outside the cluster domain: refused, never passed on.
		if addrs, err := r.LookupHost(ctx, "example.com"); err == nil {
			t.Errorf("%s: example.com resolved to %v; want refused", network, addrs)
		}
	}
}

// TestTruncated: an answer too big for UDP is truncated, and the resolver
// gets all of it over TCP.
func TestTruncated(t *testing.T) {
	var eps []discoveryv1.Endpoint
	var want []string
	for i := 1; i <= 60; i++ {
		ip := net.IPv4(10, 244, 1, byte(i)).String()
		eps = append(eps, discoveryv1.Endpoint{Addresses: []string{ip}})
		want = append(want, ip)
	}
	r := serve(t, service("big", "many", corev1.ClusterIPNone),
		&discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "big", Name: "many", Labels: map[string]string{discoveryv1.LabelServiceName: "many"}}, Endpoints: eps})
	got, err := r("udp").LookupHost(context.Background(), "many.big.svc.cluster.local")
	slices.Sort(got)
	slices.Sort(want)
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("LookupHost = %d addresses, %v; want 60 (truncated over UDP, then TCP)", len(got), err)
	}
}
