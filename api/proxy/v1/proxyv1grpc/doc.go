// Package proxyv1grpc holds the generated grpc-go stubs of the control-plane ⇄
// sidecar services, version 1 (services.proto). Only the control plane imports
// it; the sidecar calls the same procedures through connect-go and never links
// grpc-go. Regenerate with `make proto`.
package proxyv1grpc
