package cli

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/cobra"
	"github.com/trellis-mesh/trellis/internal/model"
	"github.com/trellis-mesh/trellis/internal/source/local"
)

var update = flag.Bool("update", false, "rewrite docs/cli.md")

func walk(c *cobra.Command, f func(*cobra.Command)) {
	f(c)
	for _, sub := range c.Commands() {
		if sub.Name() == "help" || sub.Name() == "completion" {
			continue
		}
		walk(sub, f)
	}
}

// TestEveryCommandHasExample walks the command tree: every command a user can
// run shows an example in its help.
func TestEveryCommandHasExample(t *testing.T) {
	walk(NewRoot(&bytes.Buffer{}, &bytes.Buffer{}), func(c *cobra.Command) {
		if strings.TrimSpace(c.Example) == "" {
			t.Errorf("command %q has no example in its help", c.CommandPath())
		}
		if c.Short == "" {
			t.Errorf("command %q has no short description", c.CommandPath())
		}
	})
}

// TestCLIDoc keeps docs/cli.md equal to the commands' own help.
func TestCLIDoc(t *testing.T) {
	var b strings.Builder
	b.WriteString("# trellis command reference\n\nGenerated from the commands' help by `go test ./internal/cli -update`; do not edit by hand.\n")
	walk(NewRoot(&bytes.Buffer{}, &bytes.Buffer{}), func(c *cobra.Command) {
		if c.Hidden {
			return
		}
		fmt.Fprintf(&b, "\n## %s\n\n%s\n", c.CommandPath(), c.Short)
		if c.Long != "" {
			fmt.Fprintf(&b, "\n%s\n", c.Long)
		}
		fmt.Fprintf(&b, "\n```\n%s\n```\n", c.UseLine())
		if c.Example != "" {
			fmt.Fprintf(&b, "\nExamples:\n\n```\n%s\n```\n", c.Example)
		}
		if flags := c.NonInheritedFlags().FlagUsages(); flags != "" {
			fmt.Fprintf(&b, "\nFlags:\n\n```\n%s```\n", strings.ReplaceAll(flags, DefaultStateDir(), "~/.trellis"))
		}
	})
	got := b.String()
	path := filepath.Join("..", "..", "docs", "cli.md")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./internal/cli -update)", err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("docs/cli.md is out of date (-file +commands); run go test ./internal/cli -update:\n%s", diff)
	}
}

func TestParseServices(t *testing.T) {
	tests := []struct {
		in      []string
		port    int
		want    []model.ServiceMembership
		wantErr string
	}{
		{[]string{"bookstore", "bookstore-v1"}, 14001, []model.ServiceMembership{
			{Service: "bookstore", ServicePort: 14001, Protocol: model.ProtocolHTTP},
			{Service: "bookstore-v1", ServicePort: 14001, Protocol: model.ProtocolHTTP}}, ""},
		{[]string{"bookstore:14001", "mysql:3306/tcp-server-first"}, 15000, []model.ServiceMembership{
			{Service: "bookstore", ServicePort: 14001, Protocol: model.ProtocolHTTP},
			{Service: "mysql", ServicePort: 3306, Protocol: model.ProtocolTCPServerFirst}}, ""},
		{[]string{"web"}, 0, nil, "give the service port"},
		{[]string{"web:http"}, 0, nil, "is not a number"},
		{[]string{"web:80/quic"}, 0, nil, "unknown protocol"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.in, ","), func(t *testing.T) {
			got, err := parseServices(tt.in, tt.port)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got)\n%s", diff)
			}
		})
	}
}

func TestParseTCPForwards(t *testing.T) {
	tests := []struct {
		in      string
		want    []tcpForward
		wantErr string
	}{
		{in: "127.0.0.1:13306=mysql.shop:3306", want: []tcpForward{{"127.0.0.1:13306", "mysql.shop:3306"}}},
		{in: "localhost:7000=ledger.bookstore:7000", want: []tcpForward{{"localhost:7000", "ledger.bookstore:7000"}}},
		{in: "0.0.0.0:13306=mysql.shop:3306", wantErr: "on loopback"},
		{in: "13306=mysql.shop:3306", wantErr: "on loopback"},
		{in: "127.0.0.1:13306", wantErr: "want LISTEN=AUTHORITY"},
		{in: "127.0.0.1:13306=mysql.shop", wantErr: "needs a port"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseTCPForwards([]string{tt.in})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got, cmp.AllowUnexported(tcpForward{})); diff != "" {
				t.Errorf("(-want +got)\n%s", diff)
			}
		})
	}
}

func TestFindWorkload(t *testing.T) {
	ws := []local.WorkloadStatus{
		{Workload: model.Workload{ID: "bookstore/bookstore-v1-aaaaaa", Name: "bookstore-v1", Identity: model.Identity{Namespace: "bookstore", Account: "bookstore"}}},
		{Workload: model.Workload{ID: "bookstore/bookstore-v1-bbbbbb", Name: "bookstore-v1", Identity: model.Identity{Namespace: "bookstore", Account: "bookstore"}}},
		{Workload: model.Workload{ID: "bookbuyer/bookbuyer-cccccc", Name: "bookbuyer", Identity: model.Identity{Namespace: "bookbuyer", Account: "bookbuyer"}}},
	}
	for _, tt := range []struct{ q, want, wantErr string }{
		{"bookbuyer", "bookbuyer/bookbuyer-cccccc", ""},
		{"bookbuyer/bookbuyer", "bookbuyer/bookbuyer-cccccc", ""},
		{"bookstore/bookstore-v1-bbbbbb", "bookstore/bookstore-v1-bbbbbb", ""},
		{"bookstore-v1", "", "matches several"},
		{"nope", "", "no workload"},
	} {
		got, err := findWorkload(ws, tt.q)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("findWorkload(%q) error = %v, want %q", tt.q, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got.ID != tt.want {
			t.Errorf("findWorkload(%q) = %q, %v; want %q", tt.q, got.ID, err, tt.want)
		}
	}
}

func TestDemoExpectations(t *testing.T) {
	for _, tt := range []struct {
		name       string
		buyer      *clientStats
		thief      *clientStats
		permissive bool
		want       []bool
	}{
		{"healthy strict", &clientStats{Total: 100, OK: 96}, &clientStats{Total: 50, Denied: 50}, false, []bool{true, true}},
		{"buyer under 95%", &clientStats{Total: 100, OK: 94}, &clientStats{Total: 50, Denied: 50}, false, []bool{false, true}},
		{"thief got through once", &clientStats{Total: 100, OK: 100}, &clientStats{Total: 50, Denied: 49, OK: 1}, false, []bool{true, false}},
		{"no traffic", &clientStats{}, nil, false, []bool{false, false}},
		{"permissive thief served", &clientStats{Total: 10, OK: 10}, &clientStats{Total: 10, OK: 10}, true, []bool{true, true}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			stats := map[string]*clientStats{"bookbuyer": tt.buyer}
			if tt.thief != nil {
				stats["bookthief"] = tt.thief
			}
			var got []bool
			for _, e := range demoExpectations(stats, tt.permissive) {
				got = append(got, e.Passed)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("passed (-want +got)\n%s", diff)
			}
		})
	}
}

func TestApplyWithoutControlPlane(t *testing.T) {
	var out, errb bytes.Buffer
	f := filepath.Join(t.TempDir(), "x.yaml")
	os.WriteFile(f, []byte("kind: TrafficSplit\n"), 0o644)
	code := Main(t.Context(), []string{"--state-dir", t.TempDir(), "apply", "-f", f}, &out, &errb)
	if code == 0 || !strings.Contains(errb.String(), "no control plane is running") {
		t.Errorf("exit %d, stderr %q; want non-zero and a hint to start the control plane", code, errb.String())
	}
}

func TestBadOutputFormat(t *testing.T) {
	if err := output(&bytes.Buffer{}, "xml", nil, nil); err == nil || !strings.Contains(err.Error(), "json or yaml") {
		t.Errorf("output -o xml: error = %v, want one naming json or yaml", err)
	}
}

func TestRunBadProxyConcurrency(t *testing.T) {
	_, errb, code := trellisMain(t, t.TempDir(), "run", "--account", "bookbuyer", "--proxy-concurrency", "-1", "--", "true")
	if code == 0 || !strings.Contains(errb, "--proxy-concurrency: want 0 or more threads") {
		t.Errorf("exit %d, stderr %q; want non-zero and the flag named", code, errb)
	}
}
