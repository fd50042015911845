#!/usr/bin/env bash
# Builds Trellis's own images from this checkout and imports them into the
# running test cluster's containerd, so pods run them with imagePullPolicy
# IfNotPresent or Never and nothing is pulled:
#   localhost/trellis/proxy:dev     /trellis-proxy, the sidecar
#   localhost/trellis/trellis:dev   /trellis, the control plane and the demo apps
#   localhost/trellis/capture:dev   /trellis-capture, the init container that programs capture
# Usage: images.sh   (root; the cluster must be up)
set -euo pipefail
LOG_TAG=images
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root
[[ -S $CONTAINERD_SOCK ]] || die "no containerd at $CONTAINERD_SOCK: run up.sh first"

repo=$(cd "$CLUSTER_SRC/../.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$repo" &&
	CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$tmp/trellis" ./cmd/trellis &&
	CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$tmp/trellis-proxy" ./cmd/trellis-proxy &&
	CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$tmp/trellis-capture" ./cmd/trellis-capture)
(cd "$CLUSTER_SRC/images" && go build -trimpath -buildvcs=false -o "$tmp/imagepack" ./cmd/imagepack)
"$tmp/imagepack" -ref localhost/trellis/proxy:dev -out "$tmp/proxy.tar" -entrypoint /trellis-proxy "$tmp/trellis-proxy=/trellis-proxy"
"$tmp/imagepack" -ref localhost/trellis/trellis:dev -out "$tmp/trellis.tar" -entrypoint /trellis "$tmp/trellis=/trellis"
"$tmp/imagepack" -ref localhost/trellis/capture:dev -out "$tmp/capture.tar" -entrypoint /trellis-capture "$tmp/trellis-capture=/trellis-capture"
for t in proxy trellis capture; do
	ctr --address "$CONTAINERD_SOCK" -n k8s.io images import "$tmp/$t.tar" >/dev/null
done
log "imported localhost/trellis/proxy:dev, localhost/trellis/trellis:dev and localhost/trellis/capture:dev"
