#!/usr/bin/env bash
# Brings up a single-node Kubernetes cluster on this machine for the project's
# Kubernetes tests: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, containerd, kubelet and kube-proxy, all state under one run
# directory ($TRELLIS_CLUSTER_DIR, default /tmp/trellis-cluster), traffic only on
# loopback and the cni0 bridge. Idempotent: a running cluster is checked and
# left alone; a broken one is torn down and started again. down.sh undoes it.
#
# Usage: up.sh            (as root)
# Then:  export KUBECONFIG=/tmp/trellis-cluster/kubeconfig
#
# Environment:
#   TRELLIS_CLUSTER_DIR   run directory (default /tmp/trellis-cluster)
#   TRELLIS_CACHE_DIR     build cache (default ~/.cache/trellis-test)
#   TRELLIS_CLUSTER_KEEP  1 keeps a cluster that failed to come up, for debugging
set -euo pipefail
LOG_TAG=up
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need_root
lock

# --- packages ---------------------------------------------------------------

# Each command the cluster runs and the Debian package that provides it.
declare -A PACKAGE_OF=(
	[etcd]=etcd-server [etcdctl]=etcd-client
	[containerd]=containerd [ctr]=containerd [containerd-shim-runc-v2]=containerd
	[runc]=runc [/usr/lib/cni/bridge]=containernetworking-plugins
	[iptables]=iptables [ip6tables]=iptables [conntrack]=conntrack [nft]=nftables
	[socat]=socat [openssl]=openssl [curl]=curl [ip]=iproute2 [ss]=iproute2
	[flock]=util-linux [setsid]=util-linux [findmnt]=util-linux [sysctl]=procps
)

install_packages() {
	local missing=() cmd
	for cmd in "${!PACKAGE_OF[@]}"; do
		if [[ $cmd == /* ]]; then
			[[ -x $cmd ]] && continue
		elif command -v "$cmd" >/dev/null; then
			continue
		fi
		missing+=("${PACKAGE_OF[$cmd]}")
	done
	if ((${#missing[@]} == 0)); then
		log "packages: present"
		return
	fi
	mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
	log "packages: installing ${missing[*]}"
	# Keep the packages' own services (etcd, containerd) from starting on install.
	local policy=/usr/sbin/policy-rc.d own_policy=0
	if [[ ! -e $policy ]]; then
		printf '#!/bin/sh\nexit 101\n' >"$policy"
		chmod 755 "$policy"
		own_policy=1
	fi
	local rc=0 out
	out=$(mktemp)
	{
		apt-get update -qq &&
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
	} >"$out" 2>&1 || rc=$?
	((own_policy)) && rm -f "$policy"
	if ((rc != 0)); then
		tail -n 20 "$out" >&2
		rm -f "$out"
		die "installing ${missing[*]} failed (apt-get exit $rc); see the output above"
	fi
	rm -f "$out"
	log "packages: installed"
}

# --- an existing cluster --------------------------------------------------------

# cluster_running reports whether every process in the state file is alive,
# clusterdns among them (a cluster an older up.sh started has none, and its
# kubelet gives pods no DNS: it counts as broken, to be started again).
cluster_running() {
	[[ -f $STATE ]] || return 1
	local kind name pid start n=0 dns=0
	while read -r kind name pid start; do
		[[ $kind == pid ]] || continue
		alive "$pid" "$start" || return 1
		n=$((n + 1))
		[[ $name == clusterdns ]] && dns=1
	done <"$STATE"
	((n > 0 && dns))
}

# --- preflight --------------------------------------------------------------

preflight() {
	local port busy=()
	for port in "${PORTS[@]}"; do
		if ss -Hltn "sport = :$port" | grep -q .; then busy+=("$port"); fi
	done
	((${#busy[@]} == 0)) || die "in use: port ${busy[*]}; stop what listens there (ss -ltnp) or run down.sh if it is an old cluster"
	if ip link show "$BRIDGE" >/dev/null 2>&1; then
		die "network interface $BRIDGE already exists; another cluster may be using it (delete it with: ip link del $BRIDGE)"
	fi
	local d
	for d in /sys/fs/cgroup/*/kubepods; do
		[[ -d $d ]] && die "cgroup $d exists: another kubelet runs or ran here; stop it before starting this cluster"
	done
	local t
	for t in iptables ip6tables; do
		if "$t-save" 2>/dev/null | grep -qE "^:$CHAIN_PATTERN"; then
			die "$t has KUBE-*, CNI-* or TRELLIS-* chains from another cluster; run down.sh, or flush and delete those chains, before starting this one"
		fi
	done
}

# --- host state -------------------------------------------------------------

record_host() {
	local p s
	for p in "${HOST_PATHS[@]}"; do
		[[ -e $p ]] || echo "absent $p" >>"$STATE"
	done
	for s in "${SYSCTLS[@]}"; do
		local v
		v=$(sysctl -n "$s" 2>/dev/null) || continue
		echo "sysctl $s $v" >>"$STATE"
	done
	for t in iptables ip6tables; do
		local tables
		tables=$("$t-save" 2>/dev/null | sed -n 's/^\*//p' | tr '\n' ' ')
		echo "tables $t $tables" >>"$STATE"
	done
}

# --- certificates and kubeconfigs -------------------------------------------

# cert NAME SUBJECT EXTENSIONS writes NAME.key and NAME.crt signed by the CA.
cert() {
	local name=$1 subject=$2 ext=$3
	openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
		-keyout "$PKI/$name.key" -out "$PKI/$name.csr" -subj "$subject" 2>/dev/null
	openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
		-set_serial "0x$(openssl rand -hex 8)" -days 30 -out "$PKI/$name.crt" \
		-extfile <(printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n%s\n' "$ext") 2>/dev/null
	rm -f "$PKI/$name.csr"
}

make_pki() {
	mkdir -p "$PKI"
	chmod 700 "$PKI"
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
		-keyout "$PKI/ca.key" -out "$PKI/ca.crt" -subj "/CN=trellis-test-ca" \
		-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
	# The certificates are independent: make them in parallel.
	local client=extendedKeyUsage=clientAuth pids=()
	cert apiserver "/CN=kube-apiserver" "extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:$BRIDGE_ADDR,IP:$KUBERNETES_SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local" &
	pids+=($!)
	cert kubelet "/CN=$NODE_NAME" "extendedKeyUsage=serverAuth
subjectAltName=IP:$BRIDGE_ADDR,IP:127.0.0.1,DNS:$NODE_NAME" &
	pids+=($!)
	local spec name subject
	for spec in \
		"admin|/O=system:masters/CN=trellis-admin" \
		"apiserver-kubelet-client|/O=system:masters/CN=kube-apiserver-kubelet-client" \
		"front-proxy-client|/CN=front-proxy-client" \
		"controller-manager|/CN=system:kube-controller-manager" \
		"scheduler|/CN=system:kube-scheduler" \
		"kubelet-client|/O=system:nodes/CN=system:node:$NODE_NAME" \
		"kube-proxy|/CN=system:kube-proxy"; do
		name=${spec%%|*} subject=${spec#*|}
		cert "$name" "$subject" "$client" &
		pids+=($!)
	done
	{
		openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/sa.key" 2>/dev/null &&
			openssl ec -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
	} &
	pids+=($!)
	local pid
	for pid in "${pids[@]}"; do
		wait "$pid" || die "making the cluster certificates with openssl failed"
	done
}

# kubeconfig FILE CERT writes a kubeconfig that authenticates with CERT.
kubeconfig() {
	cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: trellis
  cluster:
    certificate-authority: $PKI/ca.crt
    server: https://127.0.0.1:6443
users:
- name: $2
  user:
    client-certificate: $PKI/$2.crt
    client-key: $PKI/$2.key
contexts:
- name: trellis
  context:
    cluster: trellis
    user: $2
current-context: trellis
EOF
}

# --- configuration files ----------------------------------------------------

write_configs() {
	mkdir -p "$RUN_DIR/etc" "$RUN_DIR/cni/net.d" "$RUN_DIR/pod-logs" "$RUN_DIR/kubelet"
	kubeconfig "$KUBECONFIG_FILE" admin
	ln -sf "$K8S_BIN/kubectl" "$RUN_DIR/kubectl" # the cluster's own kubectl, for tests
	kubeconfig "$RUN_DIR/etc/controller-manager.kubeconfig" controller-manager
	kubeconfig "$RUN_DIR/etc/scheduler.kubeconfig" scheduler
	kubeconfig "$RUN_DIR/etc/kubelet.kubeconfig" kubelet-client
	kubeconfig "$RUN_DIR/etc/kube-proxy.kubeconfig" kube-proxy

	# The CRI plugin keeps network namespaces under its state directory and
	# never pulls: the pause image is imported, and any pull is sent to a
	# proxy on a closed loopback port so it fails at once.
	cat >"$RUN_DIR/etc/containerd.toml" <<EOF
version = 2
root = "$RUN_DIR/containerd/root"
state = "$RUN_DIR/containerd/state"
disabled_plugins = [
  "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "$CONTAINERD_SOCK"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$RUN_DIR/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$RUN_DIR/cni/net.d"
    max_conf_num = 1
EOF

	cat >"$RUN_DIR/cni/net.d/10-trellis.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "trellis",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$RUN_DIR/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$BRIDGE_ADDR"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF

	# The kubelet serves on the bridge address, which is also the node's
	# InternalIP (a node IP cannot be a loopback address), so the API server
	# reaches it for logs, exec and port-forward without leaving the machine.
	# resolvConf "" gives pods no upstream DNS servers: no lookup leaves the
	# machine. Their one server is clusterdns, on the bridge address.
	cat >"$RUN_DIR/etc/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $BRIDGE_ADDR
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
podLogsDir: $RUN_DIR/pod-logs
volumePluginDir: $RUN_DIR/kubelet/volume-plugins
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: $PKI/ca.crt
authorization:
  mode: Webhook
tlsCertFile: $PKI/kubelet.crt
tlsPrivateKeyFile: $PKI/kubelet.key
rotateCertificates: false
serverTLSBootstrap: false
resolvConf: ""
clusterDNS: [$BRIDGE_ADDR]
clusterDomain: cluster.local
podCIDR: $POD_CIDR
maxPods: 110
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  imagefs.available: 1%
EOF

	cat >"$RUN_DIR/etc/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection:
  kubeconfig: $RUN_DIR/etc/kube-proxy.kubeconfig
hostnameOverride: $NODE_NAME
clusterCIDR: $POD_CIDR
bindAddress: $BRIDGE_ADDR
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["$BRIDGE_ADDR/32"]
iptables:
  localhostNodePorts: false
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
  udpTimeout: 0s
  udpStreamTimeout: 0s
EOF
}

# --- egress guard -----------------------------------------------------------

# guard_egress makes sure no packet of the cluster leaves the machine: pod
# traffic routed out of any interface but the bridge is dropped (in mangle, so
# before any ACCEPT of kube-proxy's), and host traffic to a service address
# that kube-proxy did not translate is rejected (filter OUTPUT runs after the
# NAT that translates the ones it knows).
guard_egress() {
	iptables -w -t mangle -N TRELLIS-EGRESS
	iptables -w -t mangle -A TRELLIS-EGRESS -j DROP
	iptables -w -t mangle -I FORWARD 1 -i "$BRIDGE" ! -o "$BRIDGE" -m comment --comment "trellis test cluster: pods stay on this machine" -j TRELLIS-EGRESS
	iptables -w -t filter -N TRELLIS-EGRESS
	iptables -w -t filter -A TRELLIS-EGRESS -j REJECT
	iptables -w -t filter -I OUTPUT 1 -d "$SERVICE_CIDR" -m comment --comment "trellis test cluster: untranslated service addresses stay on this machine" -j TRELLIS-EGRESS
}

# --- processes --------------------------------------------------------------

# start NAME COMMAND... runs COMMAND in its own session, logging to
# $LOGS/NAME.log, and records its PID in the state file.
start() {
	local name=$1
	shift
	# fd 9 holds the cluster lock; the daemons must not keep it.
	setsid "$@" >"$LOGS/$name.log" 2>&1 </dev/null 9<&- &
	local pid=$!
	echo "pid $name $pid $(start_time "$pid")" >>"$STATE"
}

# running NAME succeeds while the recorded process NAME is alive.
running() {
	local kind n pid start
	while read -r kind n pid start; do
		[[ $kind == pid && $n == "$1" ]] && alive "$pid" "$start" && return 0
	done <"$STATE"
	return 1
}

# await NAME TIMEOUT WHAT COMMAND... waits for COMMAND to succeed, failing
# early with the component's log if it exits.
await() {
	local name=$1 timeout=$2 what=$3
	shift 3
	local deadline=$((SECONDS + timeout))
	until "$@" >/dev/null 2>&1; do
		if ! running "$name"; then
			fail "$name exited while waiting for $what" "$name"
		fi
		if ((SECONDS >= deadline)); then
			fail "timed out after ${timeout}s waiting for $what" "$name"
		fi
		sleep 0.2
	done
}

# fail shows the tail of a component's log and stops; the EXIT trap tears the
# half-started cluster down.
fail() {
	local msg=$1 name=${2:-}
	if [[ -n $name && -f $LOGS/$name.log ]]; then
		log "last lines of $LOGS/$name.log:"
		tail -n 25 "$LOGS/$name.log" >&2
	fi
	die "$msg"
}

on_exit() {
	local rc=$?
	((rc == 0)) && return
	if [[ ${TRELLIS_CLUSTER_KEEP:-} == 1 ]]; then
		log "cluster left as it is for debugging (TRELLIS_CLUSTER_KEEP=1); logs in $LOGS; run down.sh to remove it"
	elif [[ -f $STATE ]]; then
		log "tearing down the half-started cluster (set TRELLIS_CLUSTER_KEEP=1 to keep it)"
		"$CLUSTER_SRC/down.sh" || true
	fi
	exit "$rc"
}

curl_api() {
	curl -sf --max-time 2 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" "https://127.0.0.1:6443$1"
}

# --- readiness --------------------------------------------------------------

node_ready() {
	[[ $(kctl get node "$NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]
}

# service_rule_ready succeeds once kube-proxy has programmed the kubernetes
# Service, so probing its ClusterIP stays on this machine.
service_rule_ready() {
	iptables-save -t nat | grep -q -- "-d $KUBERNETES_SERVICE_IP/32 .*-j KUBE-SVC-"
}

check_deployment() {
	kctl apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: Deployment
metadata:
  name: cluster-check
  namespace: default
  labels: {app: cluster-check}
spec:
  replicas: 1
  selector:
    matchLabels: {app: cluster-check}
  template:
    metadata:
      labels: {app: cluster-check}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: pause
        image: $PAUSE_IMAGE
        imagePullPolicy: Never
EOF
	if ! kctl rollout status deployment/cluster-check --timeout=60s >/dev/null 2>&1; then
		kctl describe pods -l app=cluster-check >&2 || true
		fail "Deployment default/cluster-check did not become Ready within 60s; see the pod description above" kubelet
	fi
	kctl delete deployment cluster-check --wait=false >/dev/null
}

# healthz URL succeeds when a component's health endpoint answers 200. The
# endpoints need no credentials; their serving certificates are self-signed.
healthz() {
	curl -skf --max-time 2 "$1" >/dev/null
}

readiness() {
	await kubelet 30 "kubelet /healthz" healthz http://127.0.0.1:10248/healthz
	await kube-proxy 30 "kube-proxy /healthz" healthz http://127.0.0.1:10256/healthz
	await kube-scheduler 30 "kube-scheduler /healthz" healthz https://127.0.0.1:10259/healthz
	await kube-controller-manager 30 "kube-controller-manager /healthz" healthz https://127.0.0.1:10257/healthz
	log "kubelet, kube-proxy, scheduler and controller-manager healthy"
	await kubelet 60 "node $NODE_NAME to register" kctl get node "$NODE_NAME"
	await kubelet 60 "node $NODE_NAME to be Ready" node_ready
	log "node $NODE_NAME Ready"
	await kube-controller-manager 60 "ServiceAccount default/default" kctl get serviceaccount default -n default
	log "ServiceAccount default/default exists"
	await kube-proxy 30 "kube-proxy to program the kubernetes Service" service_rule_ready
	await kube-apiserver 10 "the kubernetes Service ($KUBERNETES_SERVICE_IP:443) to answer" \
		curl -sf --max-time 2 --cacert "$PKI/ca.crt" "https://$KUBERNETES_SERVICE_IP/readyz"
	log "kubernetes Service answers on its ClusterIP"
	await clusterdns 20 "the cluster DNS ($BRIDGE_ADDR:53) to answer" dns_answers
	log "cluster DNS answers for kubernetes.default.svc.cluster.local"
}

# --- cluster DNS ------------------------------------------------------------

# build_clusterdns builds the cluster's DNS server from the project's module
# (a few seconds with a warm Go cache) into the run directory.
build_clusterdns() {
	mkdir -p "$RUN_DIR/bin"
	(cd "$CLUSTER_SRC/../.." && CGO_ENABLED=0 go build -trimpath -o "$RUN_DIR/bin/clusterdns" ./test/cluster/clusterdns) ||
		die "building test/cluster/clusterdns failed"
	log "clusterdns built"
}

dns_answers() {
	"$RUN_DIR/bin/clusterdns" --server "$BRIDGE_ADDR:53" --check "kubernetes.default.svc.cluster.local"
}

# --- main -------------------------------------------------------------------

main() {
	if cluster_running; then
		log "cluster already running in $RUN_DIR; checking it"
		readiness
		log "ready (already up) in $(elapsed)s; export KUBECONFIG=$KUBECONFIG_FILE"
		return
	fi
	if [[ -e $RUN_DIR ]]; then
		log "found a stopped or partial cluster in $RUN_DIR; tearing it down first"
		"$CLUSTER_SRC/down.sh"
	fi

	install_packages
	"$CLUSTER_SRC/build.sh" all
	local pause_tar=$IMAGE_DIR/current/pause.tar
	preflight

	mkdir -p "$RUN_DIR"
	: >"$STATE"
	mkdir -p "$LOGS"
	trap on_exit EXIT
	trap 'exit 130' INT TERM
	build_clusterdns
	record_host
	make_pki
	write_configs
	log "certificates and configuration written to $RUN_DIR"

	# The bridge comes first: the API server advertises its address, socat
	# forwards it to the loopback listener, and the kubelet serves on it.
	ip link add "$BRIDGE" type bridge
	ip addr add "$BRIDGE_ADDR/${POD_CIDR#*/}" dev "$BRIDGE"
	ip link set "$BRIDGE" up
	guard_egress
	sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1
	log "bridge $BRIDGE up with $BRIDGE_ADDR; egress from pods and to unknown service addresses blocked"

	start etcd etcd --name trellis --data-dir "$RUN_DIR/etcd" \
		--listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
		--listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
		--initial-cluster trellis=http://127.0.0.1:2380 --initial-cluster-state new
	start socat socat "TCP-LISTEN:6443,bind=$BRIDGE_ADDR,reuseaddr,fork" TCP:127.0.0.1:6443
	start containerd env HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY= \
		containerd --config "$RUN_DIR/etc/containerd.toml"
	await etcd 30 "etcd to be healthy" curl -sf --max-time 1 http://127.0.0.1:2379/health
	log "etcd healthy"

	start kube-apiserver "$K8S_BIN/kube-apiserver" \
		--etcd-servers=http://127.0.0.1:2379 \
		--bind-address=127.0.0.1 --secure-port=6443 --advertise-address="$BRIDGE_ADDR" \
		--tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
		--client-ca-file="$PKI/ca.crt" \
		--service-account-issuer=https://kubernetes.default.svc.cluster.local \
		--service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
		--api-audiences=https://kubernetes.default.svc.cluster.local \
		--service-cluster-ip-range="$SERVICE_CIDR" \
		--authorization-mode=Node,RBAC --allow-privileged=true \
		--kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
		--kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
		--kubelet-certificate-authority="$PKI/ca.crt" \
		--kubelet-preferred-address-types=InternalIP \
		--requestheader-client-ca-file="$PKI/ca.crt" --requestheader-allowed-names=front-proxy-client \
		--requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
		--requestheader-extra-headers-prefix=X-Remote-Extra- \
		--proxy-client-cert-file="$PKI/front-proxy-client.crt" --proxy-client-key-file="$PKI/front-proxy-client.key" \
		--profiling=false

	await containerd 30 "containerd to answer" ctr --address "$CONTAINERD_SOCK" version
	ctr --address "$CONTAINERD_SOCK" -n k8s.io images import "$pause_tar" >/dev/null
	ctr --address "$CONTAINERD_SOCK" -n k8s.io images label "$PAUSE_IMAGE" io.cri-containerd.pinned=pinned >/dev/null
	log "containerd up; imported $PAUSE_IMAGE"

	await kube-apiserver 60 "kube-apiserver /readyz" curl_api /readyz
	log "kube-apiserver ready"

	# The cluster's DNS, from the project's own module (test/cluster/clusterdns):
	# Services' names for pods, nothing else.
	start clusterdns "$RUN_DIR/bin/clusterdns" --kubeconfig "$KUBECONFIG_FILE" --listen "$BRIDGE_ADDR:53"

	start kube-controller-manager "$K8S_BIN/kube-controller-manager" \
		--kubeconfig="$RUN_DIR/etc/controller-manager.kubeconfig" \
		--authentication-kubeconfig="$RUN_DIR/etc/controller-manager.kubeconfig" \
		--authorization-kubeconfig="$RUN_DIR/etc/controller-manager.kubeconfig" \
		--bind-address=127.0.0.1 --leader-elect=false \
		--service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
		--cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
		--use-service-account-credentials=true \
		--service-cluster-ip-range="$SERVICE_CIDR" --profiling=false
	start kube-scheduler "$K8S_BIN/kube-scheduler" \
		--kubeconfig="$RUN_DIR/etc/scheduler.kubeconfig" \
		--authentication-kubeconfig="$RUN_DIR/etc/scheduler.kubeconfig" \
		--authorization-kubeconfig="$RUN_DIR/etc/scheduler.kubeconfig" \
		--bind-address=127.0.0.1 --leader-elect=false --profiling=false
	start kubelet "$K8S_BIN/kubelet" \
		--config="$RUN_DIR/etc/kubelet.yaml" \
		--kubeconfig="$RUN_DIR/etc/kubelet.kubeconfig" \
		--root-dir="$RUN_DIR/kubelet" \
		--hostname-override="$NODE_NAME" --node-ip="$BRIDGE_ADDR"
	start kube-proxy "$K8S_BIN/kube-proxy" --config="$RUN_DIR/etc/kube-proxy.yaml"
	log "controller-manager, scheduler, kubelet and kube-proxy started"

	readiness
	check_deployment
	log "Deployment default/cluster-check (image $PAUSE_IMAGE) Ready"
	trap - EXIT
	log "cluster up in $(elapsed)s; export KUBECONFIG=$KUBECONFIG_FILE"
}

main "$@"
