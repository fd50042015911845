package kube

import (
	"context"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// The election's defaults are client-go's usual durations, the Lease the
// manifests' Role names, and an identity of the pod's name with a suffix of
// its own for each process.
func TestLeaderElectionDefaults(t *testing.T) {
	t.Setenv("POD_NAME", "trellis-control-plane-6f7c9-x2k4p")
	le, err := LeaderElection{Namespace: "trellis-system"}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if le.Name != "trellis-status-writer" || le.LeaseDuration != 15*time.Second || le.RenewDeadline != 10*time.Second || le.RetryPeriod != 2*time.Second {
		t.Errorf("defaults = %+v, want Lease trellis-status-writer, 15s, 10s, 2s", le)
	}
	if !strings.HasPrefix(le.Identity, "trellis-control-plane-6f7c9-x2k4p_") || len(le.Identity) == len("trellis-control-plane-6f7c9-x2k4p_") {
		t.Errorf("identity %q, want the pod's name and a suffix", le.Identity)
	}
	if again, _ := (LeaderElection{Namespace: "trellis-system"}).withDefaults(); again.Identity == le.Identity {
		t.Errorf("two processes of one pod both named %q", le.Identity)
	}
	if kept, _ := (LeaderElection{Namespace: "ns", Name: "l", Identity: "me", LeaseDuration: 3 * time.Second}).withDefaults(); kept.Name != "l" || kept.Identity != "me" || kept.LeaseDuration != 3*time.Second {
		t.Errorf("settings given were replaced: %+v", kept)
	}
}

// A bad election setting fails Run at once, naming it, before the source
// asks the API server anything (the client here reaches no server).
func TestRunRefusesBadElection(t *testing.T) {
	cfg := &rest.Config{Host: "http://127.0.0.1:1"}
	tests := []struct {
		le   LeaderElection
		want string
	}{
		{LeaderElection{}, "namespace of its Lease"},
		{LeaderElection{Namespace: "ns", LeaseDuration: 500 * time.Millisecond}, "under 1s"},
		{LeaderElection{Namespace: "ns", LeaseDuration: 5 * time.Second, RenewDeadline: 5 * time.Second}, "leaseDuration must be greater than renewDeadline"},
	}
	for _, tt := range tests {
		s := New(Options{Client: kubernetes.NewForConfigOrDie(cfg), Dynamic: dynamic.NewForConfigOrDie(cfg), WriteStatus: true, LeaderElection: &tt.le})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := s.Run(ctx)
		cancel()
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Run with %+v = %v, want an error saying %q", tt.le, err, tt.want)
		}
	}
}
