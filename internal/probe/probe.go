// Package probe owns the table of rewritten app health probes: for each probe
// the mutating webhook moved to the sidecar's admin port, the path the sidecar
// serves it at (/app-health/<container>/<livez|readyz|startupz>) and where the
// app answers it (scheme, port on localhost, path). The table travels as JSON
// in the sidecar's --app-probes flag. The webhook (internal/inject) writes it
// and the sidecar (internal/proxy) reads it; it uses the standard library only.
package probe

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
)

// PathPrefix starts every path the sidecar serves rewritten probes at.
const PathPrefix = "/app-health/"

// Kind names a probe in its sidecar path.
type Kind string

// The probe kinds of a container, as they appear in the sidecar's paths.
const (
	Liveness  Kind = "livez"
	Readiness Kind = "readyz"
	Startup   Kind = "startupz"
)

// Schemes a Target may have. HTTP and HTTPS are an HTTP GET of Path (HTTPS
// without certificate verification, as the kubelet probes); TCP is a
// connection that opens.
const (
	SchemeHTTP  = "HTTP"
	SchemeHTTPS = "HTTPS"
	SchemeTCP   = "TCP"
)

// Path is where the sidecar's admin port serves a container's probe.
func Path(container string, k Kind) string {
	return PathPrefix + container + "/" + string(k)
}

// Target is where the sidecar sends one probe: the app's own, as the pod
// declared it before injection.
type Target struct {
	Scheme string `json:"scheme"`         // HTTP, HTTPS or TCP
	Port   int    `json:"port"`           // on 127.0.0.1
	Path   string `json:"path,omitempty"` // HTTP(S): the path and query; default /
	// TimeoutSeconds bounds the sidecar's call to the app, as the probe's
	// timeoutSeconds bounds the kubelet's; default 1.
	TimeoutSeconds int32 `json:"timeoutSeconds,omitempty"`
}

// Table maps the sidecar paths to the app's probes.
type Table map[string]Target

// Parse reads a table from JSON and checks every entry.
func Parse(s string) (Table, error) {
	var t Table
	dec := json.NewDecoder(strings.NewReader(s))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&t); err != nil {
		return nil, fmt.Errorf("app probes: not a JSON object of path to {scheme, port, path, timeoutSeconds}: %w", err)
	}
	keys := make([]string, 0, len(t))
	for k := range t {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if err := t[k].check(k); err != nil {
			return nil, err
		}
	}
	return t, nil
}

func (tg Target) check(path string) error {
	rest, ok := strings.CutPrefix(path, PathPrefix)
	if container, kind, ok2 := strings.Cut(rest, "/"); !ok || !ok2 || container == "" || strings.Contains(kind, "/") ||
		(Kind(kind) != Liveness && Kind(kind) != Readiness && Kind(kind) != Startup) {
		return fmt.Errorf("app probe %q: want %s<container>/<livez|readyz|startupz>", path, PathPrefix)
	}
	switch tg.Scheme {
	case SchemeHTTP, SchemeHTTPS:
		if tg.Path != "" && !strings.HasPrefix(tg.Path, "/") {
			return fmt.Errorf("app probe %s: path %q must start with /", path, tg.Path)
		}
	case SchemeTCP:
	default:
		return fmt.Errorf("app probe %s: scheme %q: want HTTP, HTTPS or TCP", path, tg.Scheme)
	}
	if tg.Port < 1 || tg.Port > 65535 {
		return fmt.Errorf("app probe %s: port %d is not a TCP port", path, tg.Port)
	}
	if tg.TimeoutSeconds < 0 {
		return fmt.Errorf("app probe %s: timeoutSeconds %d is negative", path, tg.TimeoutSeconds)
	}
	return nil
}

// String is the table as JSON, keys sorted: the value of --app-probes.
func (t Table) String() string {
	b, _ := json.Marshal(t) // a map of plain structs always marshals
	return string(b)
}
