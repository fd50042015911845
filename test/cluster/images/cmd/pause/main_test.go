package main

import (
	"errors"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// TestMain lets the test binary act as the pause process when asked, so the
// tests can signal a real process.
func TestMain(m *testing.M) {
	if os.Getenv("PAUSE_TEST_BE_PAUSE") == "1" {
		os.Exit(run())
	}
	os.Exit(m.Run())
}

func TestStopsOnSignal(t *testing.T) {
	tests := []struct {
		name string
		sig  syscall.Signal
	}{
		{"SIGTERM", syscall.SIGTERM},
		{"SIGINT", syscall.SIGINT},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), "PAUSE_TEST_BE_PAUSE=1")
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()

			// A child that ends must not stop pause: it only reaps it.
			select {
			case err := <-done:
				t.Fatalf("pause exited before any signal: %v", err)
			case <-time.After(300 * time.Millisecond):
			}
			if err := cmd.Process.Signal(syscall.SIGCHLD); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-done:
				t.Fatalf("pause exited on SIGCHLD: %v", err)
			case <-time.After(200 * time.Millisecond):
			}

			if err := cmd.Process.Signal(tt.sig); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-done:
				var exit *exec.ExitError
				if errors.As(err, &exit) {
					t.Fatalf("pause exit code on %v = %d, want 0", tt.sig, exit.ExitCode())
				} else if err != nil {
					t.Fatal(err)
				}
			case <-time.After(5 * time.Second):
				cmd.Process.Kill()
				t.Fatalf("pause still running 5s after %v", tt.sig)
			}
		})
	}
}
