// Package bookstore owns the bookstore demo: the apps bookbuyer, bookthief,
// bookstore (v1 and v2) and bookwarehouse, modelled on Open Service Mesh's demo, and
// the demo's YAML (mesh configs, SMI access policy, traffic splits), embedded as
// Manifests.
//
// The apps know nothing of Trellis: they call each other by mesh name
// ("http://bookstore.bookstore:14001") through whatever proxy HTTP_PROXY names,
// which `trellis run` points at the app's sidecar. Only the CLI (`trellis demo`,
// `trellis demo-app`) and end-to-end tests import this package; it imports nothing
// of Trellis.
package bookstore
