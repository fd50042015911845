// Command trellis is the Trellis CLI and control plane.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/trellis-mesh/trellis/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
