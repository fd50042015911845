package cli

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"github.com/trellis-mesh/trellis/internal/controlplane"
)

func newPolicyCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "policy",
		Short:   "Explain access policy",
		Example: "  trellis policy check bookbuyer bookstore.bookstore --path /books-bought -H 'client-app: bookbuyer'",
	}
	cmd.AddCommand(newPolicyCheckCmd(g))
	return cmd
}

type policyCheckOptions struct {
	*globals
	method, path, output string
	headers              []string
}

// Exit codes of `trellis policy check`.
const (
	exitDenied = 2 // at least one destination workload denies the request
)

func newPolicyCheckCmd(g *globals) *cobra.Command {
	o := &policyCheckOptions{globals: g}
	cmd := &cobra.Command{
		Use:   "check SOURCE DESTINATION",
		Short: "Say whether SOURCE may call DESTINATION, and which resource decided",
		Long: `Evaluates the request against the destination's inbound policy with the same code the
sidecar enforces with, and names the TrafficTarget and route rule that allowed it, or says why
nothing did. SOURCE is a workload (ID, namespace/name or name); DESTINATION is a workload or a
service (name.namespace), in which case every workload behind it (through its TrafficSplit)
is checked.

Exit code: 0 when every destination workload allows the request, 2 when any denies it, 1 on
error.`,
		Example: `  trellis policy check bookbuyer bookstore.bookstore --path /books-bought -H 'client-app: bookbuyer' -H 'user-agent: Go-http-client/1.1'
  trellis policy check bookthief/bookthief bookstore/bookstore-v1 -o json`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.run(cmd.Context(), cmd.OutOrStdout(), args[0], args[1])
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.method, "method", "GET", "request `method`")
	f.StringVar(&o.path, "path", "/", "request `path`")
	f.StringArrayVarP(&o.headers, "header", "H", nil, "request header, 'Name: value' (repeatable)")
	f.StringVarP(&o.output, "output", "o", "", "json or yaml")
	return cmd
}

func (o *policyCheckOptions) run(ctx context.Context, w io.Writer, src, dst string) error {
	h := http.Header{}
	for _, kv := range o.headers {
		k, v, ok := strings.Cut(kv, ":")
		if !ok || strings.TrimSpace(k) == "" {
			return fmt.Errorf("-H %q: want 'Name: value'", kv)
		}
		h.Add(strings.TrimSpace(k), strings.TrimSpace(v))
	}
	c, err := controlplane.Dial(o.stateDir)
	if err != nil {
		return err
	}
	res, err := c.CheckPolicy(ctx, controlplane.PolicyQuery{Source: src, Destination: dst, Method: o.method, Path: o.path, Header: h})
	if err != nil {
		return err
	}
	err = output(w, o.output, res, func() error {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "DESTINATION\tREQUEST\tRESULT\tDECIDED BY")
		for _, r := range res {
			verdict := "denied"
			if r.Allowed {
				verdict = "allowed"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Workload, r.Request, verdict, r.DecidedBy)
		}
		return tw.Flush()
	})
	if err != nil {
		return err
	}
	for _, r := range res {
		if !r.Allowed {
			return &exitError{code: exitDenied}
		}
	}
	return nil
}
