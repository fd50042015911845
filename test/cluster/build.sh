#!/usr/bin/env bash
# Builds what the test cluster runs, caching it by version:
#   - the Kubernetes components (k8s/) under $CACHE_ROOT/k8s-<version>/
#   - the pause image archive (images/) under $CACHE_ROOT/images/
# Usage: build.sh [k8s|images|all]   (default all)
set -euo pipefail
LOG_TAG=build
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

command -v go >/dev/null || die "go not found in PATH; install Go 1.26 or later"

# source_key hashes the inputs of a build so a changed go.mod or main
# rebuilds even when the version did not change.
source_key() {
	local dir=$1
	(
		cd "$dir"
		go version
		echo "$K8S_VERSION"
		find . -name '*.go' -o -name 'go.mod' -o -name 'go.sum' | LC_ALL=C sort | xargs sha256sum
	) | sha256sum | cut -c1-16
}

build_k8s() {
	local key stamp=$K8S_BIN/.source-key
	key=$(source_key "$CLUSTER_SRC/k8s")
	if [[ -f $stamp && $(<"$stamp") == "$key" ]]; then
		local missing=0 c
		for c in "${K8S_COMPONENTS[@]}"; do [[ -x $K8S_BIN/$c ]] || missing=1; done
		if ((missing == 0)); then
			log "kubernetes $K8S_VERSION: cached in $K8S_BIN"
			return
		fi
	fi
	log "kubernetes $K8S_VERSION: building ${K8S_COMPONENTS[*]} (cold: several minutes, about 2 GB of memory)"
	mkdir -p "$CACHE_ROOT"
	local tmp
	tmp=$(mktemp -d "$CACHE_ROOT/.k8s-build.XXXXXX")
	local minor=${K8S_VERSION#v1.}
	minor=${minor%%.*}
	local ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION"
	ldflags+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
	ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
	local pkgs=() c
	for c in "${K8S_COMPONENTS[@]}"; do pkgs+=("./cmd/$c"); done
	if ! (cd "$CLUSTER_SRC/k8s" && CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags "$ldflags" -o "$tmp/" "${pkgs[@]}"); then
		rm -rf "$tmp"
		die "building kubernetes $K8S_VERSION failed; see the go output above"
	fi
	echo "$key" >"$tmp/.source-key"
	chmod 755 "$tmp"
	rm -rf "$K8S_BIN"
	mv "$tmp" "$K8S_BIN"
	log "kubernetes $K8S_VERSION: built into $K8S_BIN"
}

build_images() {
	local key
	key=$(source_key "$CLUSTER_SRC/images")
	local out=$IMAGE_DIR/$key
	if [[ -f $out/pause.tar ]]; then
		log "pause image: cached in $out"
	else
		log "pause image: building $PAUSE_IMAGE"
		local tmp
		mkdir -p "$IMAGE_DIR"
		tmp=$(mktemp -d "$IMAGE_DIR/.build.XXXXXX")
		if ! (cd "$CLUSTER_SRC/images" &&
			CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags '-s -w' -o "$tmp/pause" ./cmd/pause &&
			go build -trimpath -buildvcs=false -o "$tmp/imagepack" ./cmd/imagepack &&
			"$tmp/imagepack" -ref "$PAUSE_IMAGE" -out "$tmp/pause.tar" "$tmp/pause=/pause"); then
			rm -rf "$tmp"
			die "building the pause image failed; see the output above"
		fi
		chmod 755 "$tmp"
		rm -rf "$out"
		mv "$tmp" "$out"
		log "pause image: built into $out"
	fi
	ln -sfn "$key" "$IMAGE_DIR/current"
}

case ${1:-all} in
k8s) build_k8s ;;
images) build_images ;;
all) build_k8s; build_images ;;
*) die "unknown target ${1}; use k8s, images or all" ;;
esac
