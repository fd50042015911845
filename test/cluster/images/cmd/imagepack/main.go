// Command imagepack packs local files into a single-layer container image and
// writes it as an archive in the `docker save` format, which
// `ctr images import` accepts. The test cluster builds every image it runs
// this way, so no registry is needed. Only test/cluster's scripts run it.
//
// Example:
//
//	imagepack -ref localhost/trellis/pause:1.0 -out pause.tar -entrypoint /pause ./pause
//
// Each FILE argument is SRC or SRC=DEST; DEST defaults to /basename(SRC).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:])
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "imagepack:", err)
		os.Exit(1)
	}
}
