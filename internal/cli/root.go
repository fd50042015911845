// Package cli holds the trellis command: each command an options struct, a
// constructor and a run function that writes to the command's output, so that
// commands are testable without a terminal. Data goes to stdout, diagnostics to
// stderr; read commands take -o json|yaml.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"
)

// Version is set at build time with -ldflags "-X .../internal/cli.Version=...".
var Version = "dev"

// StateDirEnv overrides the default state directory.
const StateDirEnv = "TRELLIS_STATE_DIR"

// globals are flags every command shares.
type globals struct {
	stateDir string
}

// DefaultStateDir is $TRELLIS_STATE_DIR, else ~/.trellis.
func DefaultStateDir() string {
	if d := os.Getenv(StateDirEnv); d != "" {
		return d
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return ".trellis"
	}
	return filepath.Join(home, ".trellis")
}

// Main runs the trellis command with args and returns the exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := NewRoot(stdout, stderr)
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		var ee *exitError
		if errors.As(err, &ee) {
			if ee.msg != "" {
				fmt.Fprintln(stderr, "trellis:", ee.msg)
			}
			return ee.code
		}
		fmt.Fprintln(stderr, "trellis:", err)
		return 1
	}
	return 0
}

// exitError ends the command with a specific exit code.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

// NewRoot builds the command tree.
func NewRoot(stdout, stderr io.Writer) *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "trellis",
		Short: "Trellis: a featherweight service mesh",
		Long: `Trellis gives services mutual TLS with workload identities, identity-based
access policy, traffic splitting and golden metrics, with no change to their code.
It accepts the SMI and Open Service Mesh YAML users already have.`,
		Example:       "  trellis demo\n  trellis apply -f examples/bookstore/traffic-split-v2.yaml\n  trellis stat -n bookstore",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.PersistentFlags().StringVar(&g.stateDir, "state-dir", DefaultStateDir(), "local-mode state `directory` (env "+StateDirEnv+")")
	root.AddCommand(
		newControlPlaneCmd(g),
		newInstallCmd(g),
		newNamespaceCmd(g),
		newMetricsCmd(g),
		newUninstallCmd(g),
		newApplyCmd(g),
		newGetCmd(g),
		newDeleteCmd(g),
		newRunCmd(g),
		newDemoCmd(g),
		newStatCmd(g),
		newProxyCmd(g),
		newPolicyCmd(g),
		newCheckCmd(g),
		newCACmd(g),
		newBenchCmd(),
		newDemoAppCmd(),
		newVersionCmd(),
	)
	return root
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "version",
		Short:   "Print the version",
		Example: "  trellis version",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintln(cmd.OutOrStdout(), "trellis", Version)
			return nil
		},
	}
}

// output writes v as JSON or YAML, or calls table for the default format.
func output(w io.Writer, format string, v any, table func() error) error {
	switch format {
	case "", "table", "wide":
		return table()
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "yaml":
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		y, err := yaml.JSONToYAML(b)
		if err != nil {
			return err
		}
		_, err = w.Write(y)
		return err
	}
	return fmt.Errorf("-o %q: want json or yaml", format)
}
