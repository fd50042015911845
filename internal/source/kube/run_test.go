package kube_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/source/kube"
)

// runSynced runs src until ctx ends and returns once it has synced, with the
// channel Run's result arrives on; it fails the test if Run ends first or sync
// takes over 30 s, showing logs, when not nil.
func runSynced(t *testing.T, ctx context.Context, src *kube.Source, logs interface{ String() string }) <-chan error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	waitSynced(t, "the source", src, done, logs)
	return done
}

// waitSynced waits until src, whose Run reports on done, has synced; it
// fails the test, naming who, if Run ends first or sync takes over 30 s,
// showing logs, when not nil.
func waitSynced(t *testing.T, who string, src *kube.Source, done <-chan error, logs interface{ String() string }) {
	t.Helper()
	select {
	case <-src.Synced():
	case err := <-done:
		t.Fatalf("%s: Run: %v", who, err)
	case <-time.After(30 * time.Second):
		if logs != nil {
			t.Fatalf("%s not synced after 30s; log:\n%s", who, logs.String())
		}
		t.Fatalf("%s not synced after 30s", who)
	}
}

// misspeltSourceTarget is a TrafficTarget in ns whose source ServiceAccount,
// bookbuyre, is misspelt: in force, and reported while no account of that
// name exists.
func misspeltSourceTarget(ns string) string {
	return fmt.Sprintf(`apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: bookstore, namespace: %s}
spec:
  destination: {kind: ServiceAccount, name: bookstore, namespace: %[1]s}
  rules: [{kind: TCPRoute, name: bookstore-tcp}]
  sources: [{kind: ServiceAccount, name: bookbuyre, namespace: %[1]s}]
`, ns)
}
