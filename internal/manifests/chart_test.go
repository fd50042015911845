package manifests

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// chartDir is the Helm chart, which carries the same manifests as `trellis
// install`: generated from them, and checked here.
var chartDir = filepath.Join("..", "..", "charts", "trellis")

// helmTemplate turns install.yaml's Go template fields into Helm values.
func helmTemplate() string {
	return strings.NewReplacer(
		"{{.Namespace}}", "{{ .Values.namespace }}",
		"{{.Image}}", "{{ .Values.image }}",
		"{{.ProxyImage}}", "{{ .Values.proxyImage }}",
		"{{.CaptureImage}}", "{{ .Values.captureImage }}",
		"{{.PullPolicy}}", "{{ .Values.pullPolicy }}",
		"{{.LogLevel}}", "{{ .Values.logLevel }}",
		"{{.SidecarKeyType}}", "{{ .Values.sidecarKeyType }}",
	).Replace(installYAML)
}

func TestChartMatchesInstall(t *testing.T) {
	files := map[string]string{
		filepath.Join(chartDir, "templates", "install.yaml"): "# Generated from internal/manifests/install.yaml by `go test ./internal/manifests -update`.\n" + helmTemplate(),
		filepath.Join(chartDir, "crds", "crds.yaml"):         "# Generated from internal/manifests by `go test ./internal/manifests -update`.\n" + string(CRDsYAML()),
	}
	for path, want := range files {
		if *update {
			if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (go test ./internal/manifests -update)", err)
		}
		if diff := cmp.Diff(want, string(got)); diff != "" {
			t.Errorf("%s differs from what trellis install applies (-want +got):\n%s", path, diff)
		}
	}
	if strings.Contains(helmTemplate(), "{{.") {
		t.Error("install.yaml has a template field the chart does not map to a value")
	}
}

// The chart's default values are install's.
func TestChartValues(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	d := DefaultValues()
	for k, v := range d.fields() {
		if !strings.Contains(string(b), "\n"+k+": "+*v+"\n") {
			t.Errorf("values.yaml does not set %s: %s", k, *v)
		}
	}
}

func TestValuesSet(t *testing.T) {
	v := DefaultValues()
	for _, ok := range []string{"image=registry.example/trellis:1", "pullPolicy=Never", "namespace=mesh-system", "logLevel=debug"} {
		if err := v.Set(ok); err != nil {
			t.Errorf("Set(%q) = %v", ok, err)
		}
	}
	if v.Image != "registry.example/trellis:1" || v.PullPolicy != "Never" || v.Namespace != "mesh-system" {
		t.Errorf("values after Set = %+v", v)
	}
	for _, bad := range []string{"image", "colour=blue", "pullPolicy=Sometimes", "namespace=Mesh_System", "image="} {
		if err := v.Set(bad); err == nil {
			t.Errorf("Set(%q) succeeded", bad)
		}
	}
}
