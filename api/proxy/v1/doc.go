// Package proxyv1 holds the generated Go code of the control-plane ⇄ sidecar
// protocol, version 1 (proxy.proto). Both the control plane and the sidecar import
// it; nothing here is written by hand but this comment. Regenerate with `make proto`.
package proxyv1
