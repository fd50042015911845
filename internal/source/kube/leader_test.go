package kube_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"

	"github.com/trellis-mesh/trellis/internal/source/kube"
	"github.com/trellis-mesh/trellis/internal/syncbuf"
	"github.com/trellis-mesh/trellis/test/kubetest"
)

// Short terms, so that the test sees handovers in seconds.
func testElection(ns, id string) *kube.LeaderElection {
	return &kube.LeaderElection{Namespace: ns, Identity: id,
		LeaseDuration: 2 * time.Second, RenewDeadline: 1500 * time.Millisecond, RetryPeriod: 300 * time.Millisecond}
}

// brokenSplit is a TrafficSplit Trellis leaves out, so that its status says
// Accepted=False.
func brokenSplit(ns, name string) string {
	return fmt.Sprintf(`apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata: {name: %s, namespace: %s}
spec:
  service: web
  backends: [{service: web-v1, weight: 0}]
`, name, ns)
}

// accepted returns the Accepted condition of a TrafficSplit; nil if it has
// none.
func accepted(t *testing.T, c *kubetest.Cluster, ns, name string) map[string]any {
	t.Helper()
	u, err := c.Dynamic.Resource(c.GVR(t, "TrafficSplit")).Namespace(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		if m, ok := c.(map[string]any); ok && m["type"] == kube.ConditionAccepted {
			return m
		}
	}
	return nil
}

// waitRefused waits until the broken TrafficSplit's status says why it is
// left out.
func waitRefused(t *testing.T, c *kubetest.Cluster, ns, name string) {
	t.Helper()
	kubetest.Eventually(t, 20*time.Second, "TrafficSplit "+ns+"/"+name+" has Accepted=False", func() error {
		m := accepted(t, c, ns, name)
		if m == nil || m["status"] != "False" || !strings.Contains(fmt.Sprint(m["message"]), "weights sum to 0") {
			return fmt.Errorf("Accepted condition %v", m)
		}
		return nil
	})
}

// leaseHolder reads the status writer's Lease in ns; "" when nobody holds it.
func leaseHolder(t *testing.T, c *kubetest.Cluster, ns string) (string, *coordinationv1.Lease, error) {
	t.Helper()
	l, err := c.Client.CoordinationV1().Leases(ns).Get(context.Background(), kube.DefaultLeaseName, metav1.GetOptions{})
	if err != nil {
		return "", nil, err
	}
	if l.Spec.HolderIdentity == nil {
		return "", l, nil
	}
	return *l.Spec.HolderIdentity, l, nil
}

// replica is one control plane's source, with a count of the status writes
// it sent for objects of the test's namespace.
type replica struct {
	id     string
	src    *kube.Source
	done   <-chan error // Run's error
	stop   func() error // ends Run and returns its error
	writes atomic.Int64
	logs   syncbuf.Buffer
}

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// startReplica starts a source that writes status with leader election, as
// the control plane does, under identity id.
func startReplica(t *testing.T, c *kubetest.Cluster, ns, id string) *replica {
	t.Helper()
	r := &replica{id: id}
	r.src = kube.New(kube.Options{Client: c.Client, Dynamic: countingDynamic(t, c, ns, &r.writes), WriteStatus: true,
		LeaderElection: testElection(ns, id), Logger: slog.New(slog.NewTextHandler(&r.logs, nil))})
	r.start(t)
	return r
}

// countingDynamic is a dynamic client that counts the status writes it sends
// for objects of namespace ns (every source sees every namespace).
func countingDynamic(t *testing.T, c *kubetest.Cluster, ns string, writes *atomic.Int64) dynamic.Interface {
	t.Helper()
	cfg := rest.CopyConfig(c.Config)
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper {
		return roundTripperFunc(func(req *http.Request) (*http.Response, error) {
			if req.Method == http.MethodPut && strings.HasSuffix(req.URL.Path, "/status") && strings.Contains(req.URL.Path, "/namespaces/"+ns+"/") {
				writes.Add(1)
			}
			return rt.RoundTrip(req)
		})
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return dyn
}

// start runs the replica's source until stop or the end of the test.
func (r *replica) start(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.src.Run(ctx) }()
	r.done = done
	r.stop = sync.OnceValue(func() error {
		cancel()
		return <-done
	})
	t.Cleanup(func() {
		if err := r.stop(); err != nil {
			t.Errorf("%s: Run: %v", r.id, err)
		}
		if t.Failed() {
			t.Logf("log of %s:\n%s", r.id, r.logs.String())
		}
	})
}

// synced waits until the replica's source has synced.
func (r *replica) synced(t *testing.T) {
	t.Helper()
	waitSynced(t, r.id, r.src, r.done, &r.logs)
}

// TestStatusWriterLeaderElection runs two replicas' sources against the real
// API server with leader election: exactly one holds the Lease and only it
// writes status conditions; stopped, it releases the Lease, the other takes
// over at once and writes the status of an object applied after. A replica
// that loses the Lease (another holder takes it) stops writing but goes on
// serving snapshots, and when it wins the Lease back writes what it missed.
func TestStatusWriterLeaderElection(t *testing.T) {
	c := kubetest.New(t)
	ns := c.Namespace(t, "leader", true)
	// An object that exists before the replicas start: at sync, two writers
	// without election would both write its status at once.
	c.Apply(t, brokenSplit(ns, "before"))

	a, b := startReplica(t, c, ns, ns+"-a"), startReplica(t, c, ns, ns+"-b")
	a.synced(t)
	b.synced(t)
	var leader, follower *replica
	kubetest.Eventually(t, 10*time.Second, "one replica holds the Lease", func() error {
		holder, _, err := leaseHolder(t, c, ns)
		if err != nil {
			return err
		}
		switch holder {
		case a.id:
			leader, follower = a, b
		case b.id:
			leader, follower = b, a
		default:
			return fmt.Errorf("Lease holder %q, want %s or %s", holder, a.id, b.id)
		}
		return nil
	})
	// Both replicas know who writes (what trellis check shows).
	kubetest.Eventually(t, 10*time.Second, "both replicas see the holder", func() error {
		for _, r := range []*replica{a, b} {
			if w := r.src.StatusWriter(); w.Holder != leader.id || w.Self != r.id || w.Lease != ns+"/"+kube.DefaultLeaseName {
				return fmt.Errorf("%s: status writer %+v, want holder %s, self %s, Lease %s/%s", r.id, w, leader.id, r.id, ns, kube.DefaultLeaseName)
			}
		}
		return nil
	})
	waitRefused(t, c, ns, "before")
	c.Apply(t, brokenSplit(ns, "first"))
	waitRefused(t, c, ns, "first")
	// The follower sees the same objects; give a write of its a moment to
	// arrive before counting.
	time.Sleep(time.Second)
	if n := follower.writes.Load(); n != 0 {
		t.Errorf("%s, which does not hold the Lease, wrote status %d times", follower.id, n)
	}
	if leader.writes.Load() == 0 {
		t.Errorf("the status was written, but not by the Lease's holder %s", leader.id)
	}
	if holder, _, _ := leaseHolder(t, c, ns); holder != leader.id {
		t.Errorf("Lease holder %q, want %s still", holder, leader.id)
	}
	// Every replica serves: the follower's snapshot holds the problem too.
	kubetest.Eventually(t, 10*time.Second, "the follower reports the split's problem", func() error {
		return hasProblem(follower.src, "TrafficSplit "+ns+"/first")
	})

	// The leader stops: its Run returns once the Lease is released, and the
	// follower takes it and writes the status of an object applied after.
	if err := leader.stop(); err != nil {
		t.Errorf("%s: Run: %v", leader.id, err)
	}
	if holder, _, err := leaseHolder(t, c, ns); err != nil || holder == leader.id {
		t.Errorf("after %s stopped, the Lease holder is %q (%v): not released", leader.id, holder, err)
	}
	kubetest.Eventually(t, 10*time.Second, "the follower takes the Lease", func() error {
		if holder, _, err := leaseHolder(t, c, ns); err != nil || holder != follower.id {
			return fmt.Errorf("Lease holder %q (%v), want %s", holder, err, follower.id)
		}
		return nil
	})
	c.Apply(t, brokenSplit(ns, "after"))
	waitRefused(t, c, ns, "after")
	if follower.writes.Load() == 0 {
		t.Errorf("the status of the object applied after the handover was written, but not by the new holder %s", follower.id)
	}
	for _, want := range []struct {
		r   *replica
		log string
	}{{leader, "status writer stopped; the Lease is handed over"}, {follower, "holds the Lease and writes status conditions"}} {
		if !strings.Contains(want.r.logs.String(), want.log) {
			t.Errorf("the log of %s does not say %q", want.r.id, want.log)
		}
	}

	// Another holder takes the Lease (for 5 s, unrenewed): the replica stops
	// writing, serves on, and when the Lease has expired takes it back and
	// writes the status of the object applied in between.
	kubetest.Eventually(t, 5*time.Second, "the Lease taken by another holder", func() error {
		_, l, err := leaseHolder(t, c, ns)
		if err != nil {
			return err
		}
		now := metav1.NewMicroTime(time.Now())
		l.Spec.HolderIdentity, l.Spec.LeaseDurationSeconds = kubetest.Ptr("intruder"), kubetest.Ptr(int32(5))
		l.Spec.AcquireTime, l.Spec.RenewTime = &now, &now
		_, err = c.Client.CoordinationV1().Leases(ns).Update(context.Background(), l, metav1.UpdateOptions{})
		return err // a conflict with a renewal: again
	})
	kubetest.Eventually(t, 5*time.Second, "the replica stops writing", func() error {
		if !strings.Contains(follower.logs.String(), "the Lease was lost") {
			return fmt.Errorf("its log does not say the Lease was lost")
		}
		return nil
	})
	writes := follower.writes.Load()
	c.Apply(t, brokenSplit(ns, "during"))
	kubetest.Eventually(t, 5*time.Second, "the snapshot follows without the Lease", func() error {
		return hasProblem(follower.src, "TrafficSplit "+ns+"/during")
	})
	if m := accepted(t, c, ns, "during"); m != nil {
		t.Errorf("status written while another held the Lease: %v", m)
	}
	if n := follower.writes.Load(); n != writes {
		t.Errorf("%s wrote status %d times while another held the Lease", follower.id, n-writes)
	}
	kubetest.Eventually(t, 15*time.Second, "the replica takes the Lease back", func() error {
		if holder, _, err := leaseHolder(t, c, ns); err != nil || holder != follower.id {
			return fmt.Errorf("Lease holder %q (%v), want %s", holder, err, follower.id)
		}
		return nil
	})
	waitRefused(t, c, ns, "during")
}

func hasProblem(src *kube.Source, object string) error {
	for _, p := range src.Problems() {
		if p.Object == object {
			return nil
		}
	}
	return fmt.Errorf("no problem names %s", object)
}
