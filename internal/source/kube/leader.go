package kube

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/go-logr/logr"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/klog/v2"

	"github.com/trellis-mesh/trellis/internal/manifests"
)

// LeaderElection makes the control plane's replicas elect the one that writes
// status conditions, with client-go's leaderelection over a
// coordination.k8s.io/v1 Lease. Only writing is elected: every replica runs its
// informers and serves snapshots whether it leads or not.
type LeaderElection struct {
	// Namespace holds the Lease: the control plane's own; required.
	Namespace string
	// Name of the Lease; default DefaultLeaseName.
	Name string
	// Identity this replica holds the Lease under; default DefaultIdentity().
	Identity string
	// LeaseDuration is how long the others wait after the holder's last
	// renewal before they take the Lease; at least 1s, counted in whole
	// seconds (the Lease's unit); default 15s. RenewDeadline is how long the
	// holder keeps trying to renew before it stops writing; default 10s.
	// RetryPeriod is how often each replica tries; default 2s.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
}

// DefaultLeaseName is the Lease the status writer is elected with.
const DefaultLeaseName = "trellis-status-writer"

// DefaultIdentity names this process in the Lease: the pod's name ($POD_NAME,
// which the install manifests set from the downward API, else the host name)
// and a random suffix, so that two processes that share a name (two control
// planes run by hand on one machine, say) never both take themselves for the
// holder.
func DefaultIdentity() string {
	name := os.Getenv("POD_NAME")
	if name == "" {
		name, _ = os.Hostname()
	}
	if name == "" {
		name = "trellis-control-plane"
	}
	b := make([]byte, 4)
	rand.Read(b) // never fails (crypto/rand)
	return name + "_" + hex.EncodeToString(b)
}

// withDefaults fills in the defaults and checks the durations, so that a bad
// setting fails Run instead of the election.
func (le LeaderElection) withDefaults() (LeaderElection, error) {
	if le.Namespace == "" {
		return le, errors.New("kube source: leader election needs the namespace of its Lease (the control plane's own)")
	}
	if le.Name == "" {
		le.Name = DefaultLeaseName
	}
	if le.Identity == "" {
		le.Identity = DefaultIdentity()
	}
	if le.LeaseDuration == 0 {
		le.LeaseDuration = 15 * time.Second
	}
	if le.RenewDeadline == 0 {
		le.RenewDeadline = 10 * time.Second
	}
	if le.RetryPeriod == 0 {
		le.RetryPeriod = 2 * time.Second
	}
	if le.LeaseDuration < time.Second {
		return le, fmt.Errorf("kube source: Lease duration %s is under 1s, and a Lease counts whole seconds; use 1s or more", le.LeaseDuration)
	}
	return le, nil
}

// newElector makes the elector of the status writer: while this source holds
// the Lease, the writer runs on the context OnStartedLeading gives it, which
// ends when a renewal fails (leadership lost) or the election ends.
func (s *Source) newElector(ctx context.Context, le LeaderElection) (*leaderelection.LeaderElector, error) {
	log := s.o.Logger.With("part", "status", "lease", le.Namespace+"/"+le.Name, "identity", le.Identity)
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: le.Namespace, Name: le.Name},
		Client:     s.o.Client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: le.Identity},
		Labels:     map[string]string{manifests.PartOfLabel: "trellis"},
	}
	return leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock:          lock,
		Name:          le.Namespace + "/" + le.Name,
		LeaseDuration: le.LeaseDuration,
		RenewDeadline: le.RenewDeadline,
		RetryPeriod:   le.RetryPeriod,
		// A replica shutting down hands the Lease over at once instead of
		// leaving the others to wait it out; elect stops the writer first.
		ReleaseOnCancel: true,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(lead context.Context) {
				if lead.Err() != nil {
					return // a term that ended before this goroutine ran
				}
				w, cancel := context.WithCancel(lead)
				defer cancel()
				// The source's end stops the writer before the election
				// ends (elect), so no write is in flight at the handover.
				defer context.AfterFunc(ctx, cancel)()
				log.Info("this replica holds the Lease and writes status conditions")
				s.status.run(w)
				if ctx.Err() == nil {
					log.Warn("the Lease was lost (not renewed in time, or taken by another holder): this replica stopped writing status conditions, serves on, and stands for the Lease again")
				} else {
					log.Info("status writer stopped; the Lease is handed over")
				}
			},
			OnStoppedLeading: func() {
				// The elector ends the context OnStartedLeading got before it
				// calls this, which stops the writer; wait for its last write,
				// so that a term won back at once never overlaps it.
				s.status.running.Lock()
				s.status.running.Unlock()
			},
			OnNewLeader: func(holder string) {
				s.setHolder(holder)
				if holder != "" && holder != le.Identity {
					log.Info("another replica holds the Lease and writes status conditions", "holder", holder)
				}
			},
		},
	})
}

// elect stands for the Lease until ctx ends, again after each loss, and runs
// the status writer while it holds it. Losing the Lease stops only the writer:
// the informers and snapshots go on.
func (s *Source) elect(ctx context.Context, el *leaderelection.LeaderElector) {
	// The election has a context of its own, ended only once the writer has
	// stopped: with ReleaseOnCancel the next replica may write as soon as the
	// Lease is released, so no write of this one must still be going.
	ectx, end := context.WithCancel(context.WithoutCancel(ctx))
	defer end()
	stop := context.AfterFunc(ctx, func() {
		s.status.running.Lock() // held while a writer runs
		s.status.running.Unlock()
		end()
	})
	defer stop()
	// client-go's election logs through klog's contextual logger: into the
	// source's log, with its level.
	ectx = klog.NewContext(ectx, logr.FromSlogHandler(s.o.Logger.With("part", "leader-election").Handler()))
	for ectx.Err() == nil {
		el.Run(ectx)
	}
}

// mayUseLease says whether the control plane may read the Lease, and if not,
// why (the error names the Lease). A control plane upgraded without its Role's
// Lease rule would otherwise try, and log, for ever and never write status;
// any error but a refusal is left to the election's retries.
func mayUseLease(ctx context.Context, s *Source, le LeaderElection) error {
	_, err := s.o.Client.CoordinationV1().Leases(le.Namespace).Get(ctx, le.Name, metav1.GetOptions{})
	if apierrors.IsForbidden(err) {
		return fmt.Errorf("Lease %s/%s: %w", le.Namespace, le.Name, err)
	}
	return nil
}
