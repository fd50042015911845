#!/usr/bin/env bash
# Installs what the benchmark harness needs, only what is missing:
#   - nginx and haproxy from Debian's packages (apt-get update runs only when installing);
#   - fortio, pinned, built from the Go module proxy into bench/.bin.
# Safe to run again: a second run installs nothing.
set -euo pipefail
cd "$(dirname "$0")"

FORTIO_VERSION=v1.68.2
GOBIN_DIR="$(pwd)/.bin"

missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: ${missing[*]} missing; install them (apt-get install ${missing[*]}) or run as root" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]} from Debian's packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # nginx-light is gone from newer Debian releases; fall back to nginx.
  if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
    pkgs=("${missing[@]/nginx-light/nginx}")
    apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  fi
fi

if ! { [ -x "$GOBIN_DIR/fortio" ] && "$GOBIN_DIR/fortio" version 2>/dev/null | grep -q "^${FORTIO_VERSION#v}"; }; then
  echo "setup: building fortio ${FORTIO_VERSION} into bench/.bin" >&2
  mkdir -p "$GOBIN_DIR"
  # Outside the module so that fortio's requirements stay out of go.mod.
  (cd / && GOBIN="$GOBIN_DIR" GOFLAGS=-mod=mod go install "fortio.org/fortio@${FORTIO_VERSION}")
fi
echo "setup: ok (fortio ${FORTIO_VERSION}, $(/usr/sbin/nginx -v 2>&1 | sed 's/.*: //'), $(/usr/sbin/haproxy -v 2>/dev/null | head -1 | awk '{print $1, $3}'))" >&2
