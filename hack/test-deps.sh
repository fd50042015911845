#!/usr/bin/env bash
# Installs the Debian packages that `make test-unit` needs beyond Go, only what
# is missing (apt-get update runs only when installing), and keeps their own
# services from starting: the tests start what they need themselves.
#   mariadb-server   mariadbd and mariadb-install-db, for the MariaDB test in
#                    internal/proxy (a server-first protocol behind two sidecars)
# Safe to run again: a second run installs nothing. `make test-deps` runs it;
# `make test-unit` runs that first. Not root, it only warns.
set -euo pipefail

# Each command the tests run and the Debian package that provides it.
declare -A PACKAGE_OF=(
	[mariadbd]=mariadb-server [mariadb-install-db]=mariadb-server
)

missing=()
for cmd in "${!PACKAGE_OF[@]}"; do
	command -v "$cmd" >/dev/null 2>&1 || [[ -x /usr/sbin/$cmd ]] || [[ -x /usr/bin/$cmd ]] || missing+=("${PACKAGE_OF[$cmd]}")
done
if ((${#missing[@]} == 0)); then
	echo "test-deps: present (mariadb-server)" >&2
	exit 0
fi
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
if [[ $(id -u) -ne 0 ]]; then
	# Not root: nothing can be installed. The tests that need these skip and
	# say so; as root (CI) they are installed, and a test fails without them.
	echo "test-deps: ${missing[*]} missing and not root, so not installed; the tests that need them will skip (apt-get install ${missing[*]}, or run make test as root)" >&2
	exit 0
fi
echo "test-deps: installing ${missing[*]} from Debian's packages" >&2
# Keep the packages' own services (mariadb) from starting on install.
policy=/usr/sbin/policy-rc.d
own_policy=0
if [[ ! -e $policy ]]; then
	printf '#!/bin/sh\nexit 101\n' >"$policy"
	chmod 755 "$policy"
	own_policy=1
fi
rc=0
out=$(mktemp)
{
	apt-get update -qq &&
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
} >"$out" 2>&1 || rc=$?
((own_policy)) && rm -f "$policy"
if ((rc != 0)); then
	tail -n 20 "$out" >&2
	rm -f "$out"
	echo "test-deps: installing ${missing[*]} failed (apt-get exit $rc); see the output above" >&2
	exit 1
fi
rm -f "$out"
echo "test-deps: installed ${missing[*]}" >&2
