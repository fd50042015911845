// Package kube holds Trellis's end-to-end tests on a real Kubernetes cluster
// (test/cluster): meshed pods that run Trellis's own images, injected by the
// control plane's webhook, talking mutual TLS through their sidecars. `make
// e2e-kube` brings the cluster up, imports the images and runs them.
package kube
