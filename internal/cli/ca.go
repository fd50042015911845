package cli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/trellis-mesh/trellis/internal/controlplane"
	"github.com/trellis-mesh/trellis/internal/identity"
)

func newCACmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ca",
		Short: "Inspect and rotate the built-in certificate authority (local mode)",
		Long: `The control plane's built-in CA keeps a root and an issuing intermediate in the state
directory's ca/. Its root can be rotated while the mesh serves: see "trellis ca rotate".`,
		Example: "  trellis ca status\n  trellis ca rotate",
		Args:    cobra.NoArgs,
	}
	cmd.AddCommand(newCAStatusCmd(g), newCARotateCmd(g))
	return cmd
}

type caStatusOptions struct {
	*globals
	output string
}

func newCAStatusCmd(g *globals) *cobra.Command {
	o := &caStatusOptions{globals: g}
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the CA's rotation phase, its roots and which issuer each sidecar's certificate is from",
		Long: `Shows the rotation phase (none, prepared, activated, finished), the roots of the trust
bundle and the intermediates with their SHA-256 fingerprints and expiry, and for every
registered workload which intermediate issued its sidecar's certificate and whether the
sidecar holds the CA's current trust version (bundle and issuer).`,
		Example: "  trellis ca status\n  trellis ca status -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := controlplane.Dial(o.stateDir)
			if err != nil {
				return err
			}
			st, err := c.CA(cmd.Context())
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			return output(w, o.output, st, func() error { return writeCAStatus(w, st) })
		},
	}
	cmd.Flags().StringVarP(&o.output, "output", "o", "", "json or yaml")
	return cmd
}

func short(fp string) string {
	if len(fp) > 16 {
		return fp[:16]
	}
	return fp
}

func writeCAStatus(w io.Writer, st controlplane.CAStatus) error {
	fmt.Fprintf(w, "phase: %s\ntrust version: %s\n\n", st.Phase, st.TrustVersion)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CERTIFICATE\tROLE\tFINGERPRINT\tEXPIRES\tSIGNING")
	for _, r := range st.Roots {
		fmt.Fprintf(tw, "root\t%s\t%s\t%s\t\n", r.Role, short(r.Fingerprint), r.NotAfter.UTC().Format(time.RFC3339))
	}
	for _, in := range st.Intermediates {
		signing := ""
		if in.Fingerprint == st.Signing {
			signing = "yes"
		}
		fmt.Fprintf(tw, "intermediate\t%s\t%s\t%s\t%s\n", in.Role, short(in.Fingerprint), in.NotAfter.UTC().Format(time.RFC3339), signing)
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "WORKLOAD\tCONNECTED\tISSUER\tTRUST VERSION\tCURRENT")
	for _, s := range st.Sidecars {
		issuer := "unknown"
		if s.Issuer != "" {
			issuer = short(s.Issuer)
			if s.IssuerRole != "" {
				issuer = s.IssuerRole + " " + issuer
			}
		}
		tv := s.TrustVersion
		if tv == "" {
			tv = "-"
		}
		fmt.Fprintf(tw, "%s\t%v\t%s\t%s\t%v\n", s.Workload, s.Connected, issuer, tv, s.Current)
	}
	return tw.Flush()
}

type caRotateOptions struct {
	*globals
	timeout time.Duration
	poll    time.Duration
}

func newCARotateCmd(g *globals) *cobra.Command {
	o := &caRotateOptions{globals: g, poll: 250 * time.Millisecond}
	cmd := &cobra.Command{
		Use:   "rotate",
		Short: "Rotate the CA's root with an overlap in which both roots are trusted",
		Long: `Rotates the built-in CA's root while the mesh serves, in three steps, waiting after each
until every connected sidecar has caught up (sidecars certify again, after a small random
delay, when the control plane announces a step):

  1. prepare:  a new root and intermediate; the trust bundle holds both roots
  2. activate: the new intermediate signs; both roots stay trusted
  3. finish:   the old root is dropped; the bundle holds the new root only

ca.pem in the state directory is rewritten with the bundle at each step. Each step is kept
in the CA's directory: if the command stops (timeout, Ctrl-C, a control-plane restart), run
it again to continue from the phase reached. Sidecars that are registered but not connected
are not waited for (the command names them): one that reconnects before the old root is
dropped catches up, one that reconnects after cannot verify the control plane any more and
must be started again (its "trellis run").

Exit code: 0 once finished, 1 on a refusal or timeout.`,
		Example: "  trellis ca rotate\n  trellis ca rotate --timeout 10m",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	cmd.Flags().DurationVar(&o.timeout, "timeout", 5*time.Minute, "give up if the rotation has not finished after this long")
	return cmd
}

func (o *caRotateOptions) run(ctx context.Context, stdout, stderr io.Writer) error {
	c, err := controlplane.Dial(o.stateDir)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	st, err := c.CA(ctx)
	if err != nil {
		return err
	}
	for _, s := range st.Sidecars {
		if !s.Connected {
			fmt.Fprintf(stderr, "warning: %s is registered but its sidecar is not connected: it is not waited for, and must be started again if it reconnects after the old root is dropped\n", s.Workload)
		}
	}
	step := func(name, done string) error {
		s, err := c.RotateStep(ctx, name)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		st = s
		if name == controlplane.StepPrepare {
			done = "new root " + short(newRole(s.Roots)) + "; " + done
		}
		fmt.Fprintf(stderr, "%s: %s (trust version %s)\n", name, done, s.TrustVersion)
		return nil
	}
	switch st.Phase {
	case identity.PhasePrepared:
		fmt.Fprintln(stderr, "continuing the rotation prepared earlier")
	case identity.PhaseActivated:
		fmt.Fprintln(stderr, "continuing the rotation activated earlier")
	default:
		if err := step(controlplane.StepPrepare, "sidecars now get a bundle with both roots"); err != nil {
			return err
		}
	}
	if st.Phase == identity.PhasePrepared {
		if err := o.wait(ctx, c, stderr, "the bundle with both roots"); err != nil {
			return err
		}
		if err := step(controlplane.StepActivate, "the new intermediate signs; sidecars now get leaves from it"); err != nil {
			return err
		}
	}
	if err := o.wait(ctx, c, stderr, "a leaf from the new intermediate"); err != nil {
		return err
	}
	if err := step(controlplane.StepFinish, "the old root is dropped from the bundle"); err != nil {
		return err
	}
	if err := o.wait(ctx, c, stderr, "the bundle with the new root only"); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "root rotated: the trust bundle is root %s only, every connected sidecar holds it\n", short(st.Roots[0].Fingerprint))
	return nil
}

func newRole(roots []identity.CertInfo) string {
	for _, r := range roots {
		if r.Role == "new" {
			return r.Fingerprint
		}
	}
	return ""
}

// wait polls until every connected sidecar holds the CA's current trust
// version, printing progress when the count of those behind changes.
func (o *caRotateOptions) wait(ctx context.Context, c *controlplane.Client, stderr io.Writer, what string) error {
	last := -1
	t := time.NewTicker(o.poll)
	defer t.Stop()
	for {
		st, err := c.CA(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return o.stopped(ctx, "", what, nil)
			}
			return err
		}
		var behind []string
		connected := 0
		for _, s := range st.Sidecars {
			if !s.Connected {
				continue
			}
			connected++
			if !s.Current {
				have := s.TrustVersion
				if have == "" {
					have = "nothing reported"
				}
				behind = append(behind, fmt.Sprintf("%s (holds %s)", s.Workload, have))
			}
		}
		if len(behind) == 0 {
			fmt.Fprintf(stderr, "  all %d connected sidecars hold %s\n", connected, what)
			return nil
		}
		if len(behind) != last {
			fmt.Fprintf(stderr, "  waiting for %d of %d connected sidecars to hold %s\n", len(behind), connected, what)
			last = len(behind)
		}
		select {
		case <-ctx.Done():
			return o.stopped(ctx, st.Phase.String(), what, behind)
		case <-t.C:
		}
	}
}

func (o *caRotateOptions) stopped(ctx context.Context, phase, what string, behind []string) error {
	why := "interrupted"
	if ctx.Err() == context.DeadlineExceeded {
		why = fmt.Sprintf("timed out after %s", o.timeout)
	}
	msg := fmt.Sprintf("%s waiting for sidecars to hold %s", why, what)
	if len(behind) > 0 {
		msg += ": " + strings.Join(behind, ", ")
	}
	if phase != "" {
		msg += fmt.Sprintf("; the rotation stays in phase %s: check those sidecars (trellis check, trellis ca status), then run `trellis ca rotate` again to continue", phase)
	}
	return &exitError{code: 1, msg: msg}
}
