package arch

import (
	"encoding/json"
	"go/parser"
	"go/token"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const module = "github.com/trellis-mesh/trellis"

type pkg struct {
	ImportPath string
	Dir        string
	Deps       []string
}

// list runs `go list -deps=false -json` with deps for the patterns.
func list(t *testing.T, patterns ...string) []pkg {
	t.Helper()
	cmd := exec.Command("go", append([]string{"list", "-json"}, patterns...)...)
	cmd.Dir = repoRoot(t)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	var ps []pkg
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		ps = append(ps, p)
	}
	return ps
}

func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
		t.Fatalf("repository root not found from %s", dir)
	}
	return dir
}

// TestImportRules enforces DESIGN.md's dependency rules.
func TestImportRules(t *testing.T) {
	controlPlane := []string{
		module + "/internal/model", module + "/internal/compile", module + "/internal/serve",
		module + "/internal/source/", module + "/internal/identity", module + "/internal/controlplane",
		module + "/internal/cli", module + "/internal/stat", module + "/internal/metrics", module + "/internal/cpbench",
	}
	rules := []struct {
		pattern string
		banned  []string
		why     string
	}{
		{"./cmd/trellis-proxy", append([]string{"k8s.io/client-go", "google.golang.org/grpc", "github.com/prometheus/client_golang"}, controlPlane...),
			"the sidecar is its own lean binary: no client-go, no grpc-go, no control-plane packages"},
		{"./internal/proxy/...", append([]string{"k8s.io/client-go", "google.golang.org/grpc"}, controlPlane...),
			"the proxy never imports client-go or control-plane packages"},
		{"./internal/model", []string{"k8s.io/client-go", module + "/api/proxy", "google.golang.org/grpc", module + "/internal/source"},
			"the model imports neither client-go nor wire types"},
		{"./internal/compile", []string{module + "/internal/source", "k8s.io/client-go", module + "/internal/serve"},
			"compile imports no source"},
		{"./internal/spiffe", []string{module + "/internal/identity", module + "/internal/model"},
			"spiffe is shared by the sidecar and stays stdlib-only"},
	}
	for _, r := range rules {
		for _, p := range list(t, "-deps=false", r.pattern) {
			deps := list(t, "-deps", p.ImportPath)
			for _, d := range deps {
				for _, b := range r.banned {
					if d.ImportPath == b || strings.HasPrefix(d.ImportPath, strings.TrimSuffix(b, "/")+"/") || (strings.HasSuffix(b, "/") && strings.HasPrefix(d.ImportPath, b)) {
						t.Errorf("%s depends on %s: %s", p.ImportPath, d.ImportPath, r.why)
					}
				}
			}
		}
	}
}

// TestPackageComments checks that every package says what it owns.
func TestPackageComments(t *testing.T) {
	for _, p := range list(t, "./...") {
		fset := token.NewFileSet()
		pkgs, err := parser.ParseDir(fset, p.Dir, func(fi os.FileInfo) bool { return !strings.HasSuffix(fi.Name(), "_test.go") }, parser.PackageClauseOnly|parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		docs := 0
		for _, ap := range pkgs {
			for _, f := range ap.Files {
				if f.Doc != nil && strings.TrimSpace(f.Doc.Text()) != "" {
					docs++
				}
			}
		}
		switch {
		case docs == 0:
			t.Errorf("package %s has no package comment: say what it owns and who may import it", p.ImportPath)
		case docs > 1 && !strings.HasPrefix(p.ImportPath, module+"/cmd/"):
			t.Errorf("package %s has %d package comments: keep one", p.ImportPath, docs)
		}
	}
}
