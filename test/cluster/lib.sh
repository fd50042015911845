# shellcheck shell=bash
# shellcheck disable=SC2034 # the variables are for the scripts that source this file
# Shared settings and helpers for the single-node test cluster scripts.
# Sourced by build.sh, up.sh and down.sh; not meant to be run.

K8S_VERSION=v1.33.4
K8S_COMPONENTS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)

CLUSTER_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE_ROOT=${TRELLIS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/trellis-test}
K8S_BIN=$CACHE_ROOT/k8s-$K8S_VERSION
IMAGE_DIR=$CACHE_ROOT/images
RUN_DIR=${TRELLIS_CLUSTER_DIR:-/tmp/trellis-cluster}

# The pause image every pod sandbox runs; built by build.sh, never pulled.
PAUSE_IMAGE=localhost/trellis/pause:1.0

# Addresses. The bridge gateway doubles as the address pods reach the API
# server on (socat forwards it to the loopback listener).
POD_CIDR=10.244.0.0/24
BRIDGE=cni0
BRIDGE_ADDR=10.244.0.1
SERVICE_CIDR=10.96.0.0/16
KUBERNETES_SERVICE_IP=10.96.0.1
NODE_NAME=trellis-node

SCRIPT_START=${SCRIPT_START:-$EPOCHREALTIME}

# elapsed prints seconds since the script started, one decimal.
elapsed() {
	local now=$EPOCHREALTIME
	awk -v a="$SCRIPT_START" -v b="$now" 'BEGIN { printf "%.1f", b - a }'
}

# log prints a progress line with the elapsed time to stderr.
log() {
	printf '[%s %6ss] %s\n' "${LOG_TAG:-cluster}" "$(elapsed)" "$*" >&2
}

die() {
	log "ERROR: $*"
	exit 1
}

# need_root stops unless the script runs as root.
need_root() {
	[[ $(id -u) == 0 ]] || die "must run as root (it starts containerd, kubelet and programs iptables); rerun with sudo"
}

# wait_for runs a command until it succeeds or the timeout (seconds) passes.
wait_for() {
	local what=$1 timeout=$2
	shift 2
	local deadline=$((SECONDS + timeout))
	until "$@" >/dev/null 2>&1; do
		if ((SECONDS >= deadline)); then
			log "timed out after ${timeout}s waiting for $what"
			return 1
		fi
		sleep 0.2
	done
}

# Layout of the run directory. Everything the cluster writes lives here, except
# what the components hard-code elsewhere (see down.sh).
PKI=$RUN_DIR/pki
STATE=$RUN_DIR/state
LOGS=$RUN_DIR/logs
KUBECONFIG_FILE=$RUN_DIR/kubeconfig
CONTAINERD_SOCK=$RUN_DIR/containerd/containerd.sock

case $RUN_DIR in
/ | "" | *[[:space:]]*) die "TRELLIS_CLUSTER_DIR=$RUN_DIR is not usable: use an absolute path without spaces, such as /tmp/trellis-cluster" ;;
/*) ;;
*) die "TRELLIS_CLUSTER_DIR=$RUN_DIR must be an absolute path" ;;
esac

# Host paths that the components create outside the run directory whatever
# they are told. up.sh records which of them existed; down.sh removes the rest.
# /run/mount belongs to util-linux's mount(8), which the kubelet and down.sh
# run; it is removed only when empty.
HOST_PATHS=(/var/lib/cni /var/log/containers /run/containerd /run/mount)

# Kernel settings the cluster changes (up.sh, the bridge plugin, the kubelet).
# up.sh records them; down.sh puts them back.
SYSCTLS=(
	net.ipv4.ip_forward
	net.bridge.bridge-nf-call-iptables
	net.bridge.bridge-nf-call-ip6tables
	net.ipv4.conf.all.route_localnet
	vm.overcommit_memory
	vm.panic_on_oom
	kernel.panic
	kernel.panic_on_oops
	kernel.keys.root_maxkeys
	kernel.keys.root_maxbytes
)

# Chains the cluster's components and up.sh create, by prefix: KUBE- (kubelet,
# kube-proxy), CNI- (bridge and portmap plugins), TRELLIS- (up.sh's egress guard).
CHAIN_PATTERN='(KUBE|CNI|TRELLIS)-'

# Ports the cluster listens on; up.sh refuses to start when one is taken.
PORTS=(2379 2380 6443 10248 10249 10250 10256 10257 10259)

# lock takes the cluster lock (on this file, so nothing is left behind) unless
# the caller already holds it.
lock() {
	[[ ${TRELLIS_CLUSTER_LOCK_HELD:-} == 1 ]] && return
	exec 9<"$CLUSTER_SRC/lib.sh"
	if ! flock -n 9; then
		log "another up.sh or down.sh is running; waiting for it"
		flock 9
	fi
	export TRELLIS_CLUSTER_LOCK_HELD=1
}

# start_time prints the start time of a process (field 22 of /proc/PID/stat),
# which tells a live process from a later one that reused its PID.
start_time() {
	local stat
	{ read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
	stat=${stat##*) }
	# After the command name, field 22 is the 20th.
	awk '{ print $20 }' <<<"$stat"
}

# alive reports whether PID still is the process that started at START and
# has not exited (an exited process that init has not reaped yet is a zombie:
# it holds nothing and counts as gone).
alive() {
	local pid=$1 start=$2 stat
	{ read -r stat <"/proc/$pid/stat"; } 2>/dev/null || return 1
	stat=${stat##*) }
	[[ ${stat:0:1} != Z ]] || return 1
	[[ $(awk '{ print $20 }' <<<"$stat") == "$start" ]]
}

# kctl runs the cluster's kubectl with the admin kubeconfig.
kctl() {
	"$K8S_BIN/kubectl" --kubeconfig "$KUBECONFIG_FILE" "$@"
}
