package manifests

import (
	"bytes"
	_ "embed"
	"fmt"
	"sort"
	"strings"
	"text/template"
)

//go:embed install.yaml
var installYAML string

var installTemplate = template.Must(template.New("install").Option("missingkey=error").Parse(installYAML))

// Values are the settings of an installation, each with its default.
type Values struct {
	Namespace  string // trellis-system
	Image      string // the trellis image (control plane)
	ProxyImage string // the sidecar image
	// CaptureImage holds trellis-capture, the init container that programs
	// transparent capture in meshed pods; empty: no capture.
	CaptureImage string
	PullPolicy   string // IfNotPresent
	LogLevel     string // info
	// SidecarKeyType is the key type injected sidecars use; ecdsa-p256.
	SidecarKeyType string
}

// DefaultValues returns the defaults of `trellis install`.
func DefaultValues() Values {
	return Values{
		Namespace:      "trellis-system",
		Image:          "localhost/trellis/trellis:dev",
		ProxyImage:     "localhost/trellis/proxy:dev",
		CaptureImage:   "localhost/trellis/capture:dev",
		PullPolicy:     "IfNotPresent",
		LogLevel:       "info",
		SidecarKeyType: "ecdsa-p256",
	}
}

// valueKeys maps the keys --set accepts to the fields they set.
func (v *Values) fields() map[string]*string {
	return map[string]*string{
		"namespace": &v.Namespace, "image": &v.Image, "proxyImage": &v.ProxyImage, "captureImage": &v.CaptureImage,
		"pullPolicy": &v.PullPolicy, "logLevel": &v.LogLevel, "sidecarKeyType": &v.SidecarKeyType,
	}
}

// Set applies one key=value setting.
func (v *Values) Set(kv string) error {
	k, val, ok := strings.Cut(kv, "=")
	f := v.fields()
	if !ok {
		return fmt.Errorf("--set %q: want key=value", kv)
	}
	p, known := f[k]
	if !known {
		keys := make([]string, 0, len(f))
		for k := range f {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		return fmt.Errorf("--set %q: unknown key %q; use one of %s", kv, k, strings.Join(keys, ", "))
	}
	if val == "" {
		return fmt.Errorf("--set %q: the value is empty", kv)
	}
	switch k {
	case "pullPolicy":
		if val != "Always" && val != "IfNotPresent" && val != "Never" {
			return fmt.Errorf("--set %q: use Always, IfNotPresent or Never", kv)
		}
	case "namespace":
		if len(val) > 63 || strings.Trim(val, "abcdefghijklmnopqrstuvwxyz0123456789-") != "" || strings.HasPrefix(val, "-") || strings.HasSuffix(val, "-") {
			return fmt.Errorf("--set %q: not a namespace name (lower-case letters, digits and '-')", kv)
		}
	case "logLevel":
		if val != "debug" && val != "info" && val != "warn" && val != "error" {
			return fmt.Errorf("--set %q: use debug, info, warn or error", kv)
		}
	}
	*p = val
	return nil
}

// InstallYAML renders everything `trellis install` applies after the CRDs:
// the namespace, the control plane's identity and RBAC, its Service and
// Deployment, and the injection webhook.
func InstallYAML(v Values) ([]byte, error) {
	var b bytes.Buffer
	if err := installTemplate.Execute(&b, v); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}
