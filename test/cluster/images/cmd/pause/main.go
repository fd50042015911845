// Command pause is the pod sandbox process of the test cluster: it sleeps
// until SIGINT or SIGTERM, reaping any children it inherits as PID 1. It is
// built statically and packed into the pause image by test/cluster/build.sh;
// nothing else imports or runs it.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	os.Exit(run())
}

// run waits for a stop signal and returns the exit code.
func run() int {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range sigs {
		if sig == syscall.SIGCHLD {
			reap()
			continue
		}
		fmt.Fprintf(os.Stderr, "pause: shutting down on %v\n", sig)
		return 0
	}
	return 0
}

// reap collects every exited child so none stays a zombie.
func reap() {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}
