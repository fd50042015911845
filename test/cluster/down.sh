#!/usr/bin/env bash
# Tears down the cluster that up.sh started and leaves nothing behind: it
# stops only the processes up.sh recorded (and what they started: container
# shims and pod processes), unmounts what the cluster mounted, deletes the cni0
# bridge and the KUBE-*/CNI-* iptables chains, puts back the kernel settings
# it changed and removes the run directory. Idempotent; exits non-zero if
# something could not be removed.
#
# Usage: down.sh          (as root)
set -euo pipefail
LOG_TAG=down
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need_root
lock

# --- state ------------------------------------------------------------------

declare -A PID_OF START_OF SYSCTL_WAS TABLES_WERE
ABSENT=()
read_state() {
	[[ -f $STATE ]] || return 0
	local kind a b c
	while read -r kind a b c; do
		case $kind in
		pid) PID_OF[$a]=$b START_OF[$a]=$c ;;
		sysctl) SYSCTL_WAS[$a]=$b ;;
		absent) ABSENT+=("$a") ;;
		tables) TABLES_WERE[$a]="$b $c" ;;
		esac
	done <"$STATE"
}

# --- processes --------------------------------------------------------------

# recorded_alive prints the PIDs of the named recorded processes still alive.
recorded_alive() {
	local name
	for name in "$@"; do
		[[ -n ${PID_OF[$name]:-} ]] || continue
		if alive "${PID_OF[$name]}" "${START_OF[$name]}"; then echo "${PID_OF[$name]}"; fi
	done
}

# descendants prints every descendant of the given PIDs.
descendants() {
	(($# > 0)) || return 0
	ps -e -o pid=,ppid= | awk -v roots="$*" '
		BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) keep[r[i]] = 1 }
		{ parent[$1] = $2 }
		END {
			do {
				changed = 0
				for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; out[p] = 1; changed = 1 }
			} while (changed)
			for (p in out) print p
		}'
}

# shims prints the PIDs of the containerd shims that serve this cluster's
# containerd: they detach from it, so only their -address argument ties them
# to it.
shims() {
	local f pid
	for f in /proc/[0-9]*/cmdline; do
		pid=${f#/proc/}
		pid=${pid%/cmdline}
		[[ $(readlink "/proc/$pid/exe" 2>/dev/null) == *containerd-shim* ]] || continue
		if tr '\0' '\n' <"$f" 2>/dev/null | grep -qxF -- "$CONTAINERD_SOCK"; then echo "$pid"; fi
	done
}

# pod_processes prints the PIDs in the kubelet's pod cgroups.
pod_processes() {
	local d
	for d in /sys/fs/cgroup/*/kubepods; do
		if [[ -d $d ]]; then find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null || true; fi
	done | sort -u
}

# live succeeds while PID runs. An exited process that init has not reaped yet
# (a zombie) holds nothing and counts as gone.
live() {
	local stat
	{ read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
	stat=${stat##*) }
	[[ ${stat:0:1} != Z ]]
}

# stop SIGNAL GRACE WHAT PID... signals the PIDs, waits up to GRACE seconds
# for them to exit, then kills what is left. The cluster is thrown away, so a
# short grace is enough.
stop() {
	local sig=$1 grace=$2 what=$3
	shift 3
	(($# > 0)) || return 0
	log "stopping $what"
	kill "-$sig" "$@" 2>/dev/null || true
	local tries=$((grace * 10)) pid left
	while :; do
		left=()
		for pid in "$@"; do if live "$pid"; then left+=("$pid"); fi; done
		((${#left[@]} == 0)) && return 0
		((tries-- <= 0)) && break
		sleep 0.1
	done
	log "killing ${#left[@]} of them still stopping after ${grace}s (${left[*]})"
	kill -KILL "${left[@]}" 2>/dev/null || true
	tries=50
	for pid in "${left[@]}"; do
		while live "$pid" && ((tries-- > 0)); do sleep 0.1; done
	done
}

stop_processes() {
	local pids
	# The node agents first, so nothing restarts pods while they go.
	mapfile -t pids < <(recorded_alive kubelet kube-proxy kube-controller-manager kube-scheduler clusterdns)
	stop TERM 2 "kubelet, kube-proxy, controller-manager, scheduler and clusterdns" "${pids[@]}"

	local deadline=$((SECONDS + 10))
	mapfile -t pids < <(pod_processes)
	while ((${#pids[@]} > 0)); do
		kill -KILL "${pids[@]}" 2>/dev/null || true
		((SECONDS >= deadline)) && break
		sleep 0.1
		mapfile -t pids < <(pod_processes)
	done
	mapfile -t pids < <(shims)
	stop KILL 5 "container shims" "${pids[@]}"

	local roots
	mapfile -t roots < <(recorded_alive containerd kube-apiserver socat etcd)
	mapfile -t pids < <(descendants "${roots[@]}")
	stop TERM 2 "containerd, kube-apiserver, socat and etcd" "${roots[@]}" "${pids[@]}"
}

# --- mounts, cgroups, network -----------------------------------------------

# mounts_under prints the mount points at or under the run directory, deepest
# first.
mounts_under() {
	awk -v dir="$RUN_DIR" '$5 == dir || index($5, dir "/") == 1 { print length($5), $5 }' /proc/self/mountinfo |
		sort -rn | cut -d' ' -f2-
}

unmount_all() {
	local round m mounts
	for round in 1 2 3 4 5; do
		mapfile -t mounts < <(mounts_under)
		((${#mounts[@]} == 0)) && return 0
		((round == 1)) && log "unmounting ${#mounts[@]} mounts under $RUN_DIR"
		for m in "${mounts[@]}"; do
			umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
		done
	done
}

remove_cgroups() {
	local d
	for d in /sys/fs/cgroup/*/kubepods; do
		[[ -d $d ]] || continue
		find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
	done
}

remove_network() {
	local veth
	for veth in $(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{ print $2 }' | cut -d@ -f1); do
		ip link del "$veth" 2>/dev/null || true
	done
	if ip link show "$BRIDGE" >/dev/null 2>&1; then
		ip link del "$BRIDGE"
		log "deleted bridge $BRIDGE"
	fi
	# Forget the cluster's connections so no stale NAT entry outlives it.
	conntrack -D -s "$POD_CIDR" >/dev/null 2>&1 || true
	conntrack -D -d "$POD_CIDR" >/dev/null 2>&1 || true
	conntrack -D -d "$SERVICE_CIDR" >/dev/null 2>&1 || true
}

# clean_iptables deletes, in every table, the rules that jump to the cluster's
# chains (KUBE-*, CNI-*, TRELLIS-*), then those chains, then the tables the
# cluster created.
clean_iptables() {
	local t=$1 family=$2 table rule chain chains removed=0
	command -v "$t" >/dev/null || return 0
	for table in $("$t-save" 2>/dev/null | sed -n 's/^\*//p'); do
		while IFS= read -r rule; do
			eval "set -- $rule"
			chain=$2
			shift 2
			"$t" -w -t "$table" -D "$chain" "$@" 2>/dev/null || true
			removed=$((removed + 1))
		done < <("$t" -w -t "$table" -S | grep -E "^-A [A-Z]+ .*-[jg] $CHAIN_PATTERN" || true)
		mapfile -t chains < <("$t" -w -t "$table" -S | sed -nE "s/^-N (${CHAIN_PATTERN}[^ ]+)\$/\1/p")
		for chain in "${chains[@]}"; do "$t" -w -t "$table" -F "$chain"; done
		for chain in "${chains[@]}"; do "$t" -w -t "$table" -X "$chain"; done
		removed=$((removed + ${#chains[@]}))
		# A table that did not exist before up.sh and is now empty goes too.
		if [[ -n ${TABLES_WERE[$t]+set} && " ${TABLES_WERE[$t]} " != *" $table "* ]] &&
			! "$t" -w -t "$table" -S | grep -qvE '^-P [A-Z]+ ACCEPT$' &&
			command -v nft >/dev/null; then
			nft delete table "$family" "$table" 2>/dev/null || true
		fi
	done
	((removed == 0)) || log "$t: removed $removed cluster rules and chains"
}

# --- host paths and kernel settings -----------------------------------------

restore_host() {
	local k
	for k in "${!SYSCTL_WAS[@]}"; do
		sysctl -qw "$k=${SYSCTL_WAS[$k]}" 2>/dev/null || log "could not restore $k to ${SYSCTL_WAS[$k]}"
	done
	# The kubelet links container logs from here whatever podLogsDir says.
	if [[ -d /var/log/containers ]]; then
		find /var/log/containers -maxdepth 1 -type l -lname "$RUN_DIR/*" -delete
	fi
	# libcni caches results here whatever the CRI plugin is told.
	rm -rf /var/lib/cni/results/trellis-* 2>/dev/null || true
	local p
	for p in "${ABSENT[@]}"; do
		if [[ $p == /run/mount ]]; then
			rmdir "$p" 2>/dev/null || true
		else
			rm -rf "$p"
		fi
	done
}

# --- verification -----------------------------------------------------------

leftovers() {
	local found=0 name
	for name in "${!PID_OF[@]}"; do
		if alive "${PID_OF[$name]}" "${START_OF[$name]}"; then log "left behind: process $name (${PID_OF[$name]})"; found=1; fi
	done
	if [[ -n $(shims) ]]; then log "left behind: containerd shims $(shims | tr '\n' ' ')"; found=1; fi
	if [[ -n $(pod_processes) ]]; then log "left behind: pod processes $(pod_processes | tr '\n' ' ')"; found=1; fi
	if [[ -n $(mounts_under) ]]; then log "left behind: mounts $(mounts_under | tr '\n' ' ')"; found=1; fi
	if ip link show "$BRIDGE" >/dev/null 2>&1; then log "left behind: interface $BRIDGE"; found=1; fi
	local t
	for t in iptables ip6tables; do
		if "$t-save" 2>/dev/null | grep -qE "^:$CHAIN_PATTERN|-[jg] $CHAIN_PATTERN"; then log "left behind: $t cluster chains or rules"; found=1; fi
	done
	ls -d /sys/fs/cgroup/*/kubepods >/dev/null 2>&1 && { log "left behind: kubepods cgroups"; found=1; }
	[[ -e $RUN_DIR ]] && { log "left behind: $RUN_DIR"; found=1; }
	return "$found"
}

main() {
	if [[ ! -e $RUN_DIR ]]; then
		log "no cluster in $RUN_DIR; nothing to do"
		return
	fi
	# Never empty a directory that up.sh did not make.
	if [[ ! -f $STATE && -n $(ls -A "$RUN_DIR") ]]; then
		die "$RUN_DIR has no state file, so it is not a cluster that up.sh started; set TRELLIS_CLUSTER_DIR to the cluster's run directory, or remove it yourself"
	fi
	read_state
	stop_processes
	unmount_all
	remove_cgroups
	remove_network
	clean_iptables iptables ip
	clean_iptables ip6tables ip6
	restore_host
	rm -rf "$RUN_DIR"
	if ! leftovers; then
		die "tear-down incomplete: see the lines above"
	fi
	log "cluster down in $(elapsed)s; nothing left behind"
}

main "$@"
