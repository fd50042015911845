package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"github.com/trellis-mesh/trellis/internal/controlplane"
	"github.com/trellis-mesh/trellis/internal/source/local"
	"sigs.k8s.io/yaml"
)

// readInputs reads -f arguments: files, directories (their .yaml, .yml and .json
// files, sorted) or "-" for stdin.
func readInputs(files []string, stdin io.Reader) (names []string, datas [][]byte, err error) {
	for _, f := range files {
		if f == "-" {
			b, err := io.ReadAll(stdin)
			if err != nil {
				return nil, nil, err
			}
			names, datas = append(names, "stdin"), append(datas, b)
			continue
		}
		st, err := os.Stat(f)
		if err != nil {
			return nil, nil, err
		}
		paths := []string{f}
		if st.IsDir() {
			paths = nil
			entries, err := os.ReadDir(f)
			if err != nil {
				return nil, nil, err
			}
			for _, e := range entries {
				switch strings.ToLower(filepath.Ext(e.Name())) {
				case ".yaml", ".yml", ".json":
					paths = append(paths, filepath.Join(f, e.Name()))
				}
			}
			sort.Strings(paths)
		}
		for _, p := range paths {
			b, err := os.ReadFile(p)
			if err != nil {
				return nil, nil, err
			}
			names, datas = append(names, p), append(datas, b)
		}
	}
	if len(names) == 0 {
		return nil, nil, fmt.Errorf("no input: pass -f FILE (or -f - for stdin)")
	}
	return names, datas, nil
}

type applyOptions struct {
	*globals
	files  []string
	output string
}

func newApplyCmd(g *globals) *cobra.Command {
	o := &applyOptions{globals: g}
	cmd := &cobra.Command{
		Use:   "apply -f FILE",
		Short: "Apply SMI, OSM and Trellis resources to the local mesh",
		Long: `Applies resources (TrafficSplit, TrafficTarget, HTTPRouteGroup, TCPRoute, MeshConfig, ...)
from YAML or JSON. Each file is validated as a whole against the mesh: if anything is wrong,
nothing in it is stored and the exit code is 1. Applying the same file twice changes nothing.`,
		Example: "  trellis apply -f examples/bookstore/traffic-access.yaml\n  cat split.yaml | trellis apply -f -",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd.Context(), cmd.InOrStdin(), cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringArrayVarP(&o.files, "filename", "f", nil, "`file`, directory or - (repeatable)")
	cmd.Flags().StringVarP(&o.output, "output", "o", "", "json or yaml")
	return cmd
}

func (o *applyOptions) run(ctx context.Context, stdin io.Reader, w io.Writer) error {
	names, datas, err := readInputs(o.files, stdin)
	if err != nil {
		return err
	}
	c, err := controlplane.Dial(o.stateDir)
	if err != nil {
		return err
	}
	var all []local.Result
	for i, name := range names {
		res, err := c.Apply(ctx, name, datas[i])
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		all = append(all, res)
		if o.output == "" {
			printResult(w, res)
		}
	}
	if o.output != "" {
		return output(w, o.output, all, nil)
	}
	return nil
}

func printResult(w io.Writer, res local.Result) {
	for _, c := range res.Changes {
		fmt.Fprintf(w, "%s %s\n", c.Object, c.Action)
	}
	for _, p := range res.Warnings {
		fmt.Fprintf(w, "warning: %s\n", p.Error())
	}
}

type getOptions struct {
	*globals
	namespace string
	output    string
}

func newGetCmd(g *globals) *cobra.Command {
	o := &getOptions{globals: g}
	cmd := &cobra.Command{
		Use:     "get [KIND|workloads|services|status]",
		Short:   "List stored resources, registered workloads, services or the mesh status",
		Example: "  trellis get\n  trellis get TrafficSplit -n bookstore -o yaml\n  trellis get workloads\n  trellis get services\n  trellis get status -o json",
		Args:    cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			kind := ""
			if len(args) == 1 {
				kind = args[0]
			}
			return o.run(cmd.Context(), cmd.OutOrStdout(), kind)
		},
	}
	cmd.Flags().StringVarP(&o.namespace, "namespace", "n", "", "only this `namespace`")
	cmd.Flags().StringVarP(&o.output, "output", "o", "", "json or yaml")
	return cmd
}

func (o *getOptions) run(ctx context.Context, w io.Writer, kind string) error {
	c, err := controlplane.Dial(o.stateDir)
	if err != nil {
		return err
	}
	switch strings.ToLower(kind) {
	case "workloads", "workload", "wl":
		keep, err := workloadsIn(ctx, c, o.namespace)
		if err != nil {
			return err
		}
		return output(w, o.output, keep, func() error {
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tACCOUNT\tSERVICES\tADDRESS\tREADY\tCONNECTED")
			for _, wl := range keep {
				var svcs []string
				for _, m := range wl.Services {
					svcs = append(svcs, fmt.Sprintf("%s:%d", m.Service, m.ServicePort))
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\t%v\n", wl.ID, wl.Identity.Account, strings.Join(svcs, ","), wl.Address, wl.Ready, wl.Connected)
			}
			return tw.Flush()
		})
	case "services", "service", "svc":
		svcs, err := c.Services(ctx)
		if err != nil {
			return err
		}
		keep := svcs[:0]
		for _, s := range svcs {
			if o.namespace == "" || s.Key.Namespace == o.namespace {
				keep = append(keep, s)
			}
		}
		return output(w, o.output, keep, func() error {
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SERVICE\tPORTS\tADDRESSES")
			for _, s := range keep {
				var ports, addrs []string
				for _, p := range s.Ports {
					ports = append(ports, fmt.Sprintf("%d/%s", p.Port, p.Protocol))
				}
				for _, a := range s.Addresses {
					addrs = append(addrs, a.String())
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\n", s.Key, strings.Join(ports, ","), strings.Join(addrs, ","))
			}
			return tw.Flush()
		})
	case "status":
		st, err := c.Status(ctx)
		if err != nil {
			return err
		}
		return output(w, o.output, st, func() error {
			fmt.Fprintf(w, "snapshot %s, %d workloads, permissive=%v egress=%v, %d sidecar streams\n", st.Snapshot, st.Workloads, st.Mesh.Permissive, st.Mesh.Egress, st.Server.Streams)
			for _, p := range st.Problems {
				fmt.Fprintln(w, "problem:", p.Error())
			}
			return nil
		})
	}
	var rs []struct {
		APIVersion string          `json:"apiVersion"`
		Kind       string          `json:"kind"`
		Namespace  string          `json:"namespace"`
		Name       string          `json:"name"`
		Raw        json.RawMessage `json:"raw"`
	}
	if err := c.Resources(ctx, kind, o.namespace, &rs); err != nil {
		return err
	}
	if o.output != "" {
		objs := make([]json.RawMessage, len(rs))
		for i, r := range rs {
			objs[i] = r.Raw
		}
		if o.output == "yaml" {
			for i, obj := range objs {
				y, err := yaml.JSONToYAML(obj)
				if err != nil {
					return err
				}
				if i > 0 {
					fmt.Fprintln(w, "---")
				}
				w.Write(y)
			}
			return nil
		}
		return output(w, o.output, objs, nil)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KIND\tNAMESPACE\tNAME\tAPIVERSION")
	for _, r := range rs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Kind, r.Namespace, r.Name, r.APIVersion)
	}
	return tw.Flush()
}

type deleteOptions struct {
	*globals
	files     []string
	namespace string
}

func newDeleteCmd(g *globals) *cobra.Command {
	o := &deleteOptions{globals: g}
	cmd := &cobra.Command{
		Use:     "delete (-f FILE | KIND NAME)",
		Short:   "Delete resources from the local mesh",
		Example: "  trellis delete -f examples/bookstore/traffic-split-v2.yaml\n  trellis delete TrafficSplit bookstore-split -n bookstore",
		Args:    cobra.MaximumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.run(cmd.Context(), cmd.InOrStdin(), cmd.OutOrStdout(), args)
		},
	}
	cmd.Flags().StringArrayVarP(&o.files, "filename", "f", nil, "`file`, directory or - (repeatable)")
	cmd.Flags().StringVarP(&o.namespace, "namespace", "n", "default", "`namespace` of KIND NAME")
	return cmd
}

func (o *deleteOptions) run(ctx context.Context, stdin io.Reader, w io.Writer, args []string) error {
	c, err := controlplane.Dial(o.stateDir)
	if err != nil {
		return err
	}
	var reqs []controlplane.DeleteRequest
	switch {
	case len(args) == 2 && len(o.files) == 0:
		reqs = append(reqs, controlplane.DeleteRequest{Objects: []string{args[0] + " " + o.namespace + "/" + args[1]}})
	case len(args) == 0 && len(o.files) > 0:
		names, datas, err := readInputs(o.files, stdin)
		if err != nil {
			return err
		}
		for i := range names {
			reqs = append(reqs, controlplane.DeleteRequest{Apply: controlplane.ApplyRequest{Source: names[i], Data: string(datas[i])}})
		}
	default:
		return fmt.Errorf("give either -f FILE or KIND NAME")
	}
	for _, req := range reqs {
		res, err := c.Delete(ctx, req)
		if err != nil {
			return err
		}
		printResult(w, res)
	}
	return nil
}

// workloadsIn lists the registered workloads in namespace ns, or in all
// namespaces when ns is empty.
func workloadsIn(ctx context.Context, c *controlplane.Client, ns string) ([]local.WorkloadStatus, error) {
	ws, err := c.Workloads(ctx)
	if err != nil {
		return nil, err
	}
	keep := ws[:0]
	for _, wl := range ws {
		if ns == "" || wl.Identity.Namespace == ns {
			keep = append(keep, wl)
		}
	}
	return keep, nil
}
