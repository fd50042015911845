package bookstore

import "embed"

// Manifests holds the demo's YAML (mesh configs, access policy, splits), so that
// `trellis demo` runs from the binary alone.
//
//go:embed *.yaml
var Manifests embed.FS
