#!/bin/sh
# Copies the Gateway API's own HTTPRoute and GRPCRoute CRDs (standard channel)
# from the module go.mod pins into internal/manifests/gateway, which trellis
# install applies. Run it (or `go generate ./internal/manifests`) after
# changing the sigs.k8s.io/gateway-api version; TestGatewayCRDsMatchModule
# fails until the copies match.
set -eu
cd "$(dirname "$0")/.."
go mod download sigs.k8s.io/gateway-api
dir=$(go list -m -f '{{.Dir}}' sigs.k8s.io/gateway-api)
if [ -z "$dir" ]; then
	echo "gateway-crds.sh: sigs.k8s.io/gateway-api is not in the module cache" >&2
	exit 1
fi
for kind in httproutes grpcroutes; do
	f=gateway.networking.k8s.io_$kind.yaml
	# install, not cp: the module cache is read-only, the copies are not.
	install -m 0644 "$dir/config/crd/standard/$f" "internal/manifests/gateway/$f"
done
