#!/usr/bin/env bash
# A single-node Kubernetes cluster from local processes, for tests/cluster/:
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy (iptables mode),
#   kubelet on Debian's containerd and runc, the bridge CNI plugin (containernetworking-plugins),
#   and CoreDNS as a Deployment behind the cluster DNS Service (10.96.0.10).
# Every binary comes from the cache tests/cluster/build-k8s.sh fills; the images from
# tests/cluster/images.py (loaded into this cluster's own containerd).
#
#   tests/cluster/cluster.sh deps           # Debian packages the node needs (idempotent; root)
#   eval "$(tests/cluster/cluster.sh start)"   # starts everything, prints the exports (KUBECONFIG, PATH, ...)
#   eval "$(tests/cluster/cluster.sh env)"     # the same exports for a running cluster
#   tests/cluster/cluster.sh stop           # tears everything down: pods (CNI DEL), processes, mounts,
#                                           # kube-proxy's iptables chains, the bridge, the state dir
#   tests/cluster/cluster.sh check-clean    # after stop: fails on any leftover mount, process, chain, link
#
# What the host must give the kubelet (docs/testing.md): root; cgroup v1 or v2 mounted under
# /sys/fs/cgroup (cgroupfs driver: no systemd runs here; cgroupsPerQOS off and no node-allocatable
# enforcement, so it never creates cgroup hierarchies of its own); overlayfs; the br_netfilter
# sysctls (bridged pod traffic through iptables, for Services); IPv4 forwarding (turned on while the
# cluster runs, restored by stop); no swap needed (failSwapOn off).
#
# Environment:
#   TOKENMESH_CACHE          cache root (default ~/.cache/tokenmesh)
#   TOKENMESH_K8S_VERSION    default v1.35.4
#   TOKENMESH_CLUSTER_DIR    state dir (default /tmp/tokenmesh-cluster-$UID)
#   TOKENMESH_CLUSTER_KEEP=1 stop keeps the state dir's logs
#   TOKENMESH_NODE_IP        the address the API server advertises and the kubelet reports
#                            (default: the source address of the default route)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${TOKENMESH_CACHE:-$HOME/.cache/tokenmesh}"
k8s_version="${TOKENMESH_K8S_VERSION:-v1.35.4}"
state="${TOKENMESH_CLUSTER_DIR:-/tmp/tokenmesh-cluster-$(id -u)}"
bin="$cache/k8s/$k8s_version/bin"
node=tokenmesh-node
pod_cidr=10.244.0.0/24
service_cidr=10.96.0.0/16
dns_ip=10.96.0.10
bridge=tmcni0
cni_bin=/usr/lib/cni

log() { printf 'cluster.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
source "$repo/tests/daemons.sh"
source "$repo/tests/pki.sh"

node_ip() {
    if [[ -n ${TOKENMESH_NODE_IP:-} ]]; then echo "$TOKENMESH_NODE_IP"; return; fi
    ip -4 route get 1.1.1.1 | awk '{for (i = 1; i < NF; i++) if ($i == "src") {print $(i + 1); exit}}'
}

cmd_deps() {
    local need=() p
    # ctr comes with containerd; curl, findmnt and pgrep are the scripts' own.
    for p in containerd runc containernetworking-plugins iptables conntrack iproute2 buildah busybox-static \
        curl util-linux procps openssl; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
    done
    if ((${#need[@]})); then
        log "installing ${need[*]}"
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
    fi
}

# ---------------------------------------------------------------------------------------------
# certificates

make_pki() {
    local ip=$1
    ca ca tokenmesh-cluster-ca
    cert apiserver ca /CN=kube-apiserver "$pki_server
subjectAltName=IP:127.0.0.1,IP:$ip,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    cert kubelet ca "/CN=$node" "$pki_server
subjectAltName=IP:$ip,DNS:$node"
    # Each component as the identity the default RBAC roles are bound to.
    cert admin ca /O=system:masters/CN=tokenmesh-cluster-admin "$pki_client"
    cert apiserver-kubelet-client ca /O=system:masters/CN=kube-apiserver-kubelet-client "$pki_client"
    cert controller-manager ca /CN=system:kube-controller-manager "$pki_client"
    cert scheduler ca /CN=system:kube-scheduler "$pki_client"
    cert proxy ca /CN=system:kube-proxy "$pki_client"
    cert node ca "/O=system:nodes/CN=system:node:$node" "$pki_client"
    sa_keys
}

# kubeconfig NAME SERVER: $state/NAME.kubeconfig with NAME's client certificate.
kubeconfig() {
    local b64='base64 -w0' p="$state/pki"
    cat >"$state/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: tokenmesh-cluster
  cluster:
    server: $2
    certificate-authority-data: $($b64 <"$p/ca.crt")
users:
- name: $1
  user:
    client-certificate-data: $($b64 <"$p/$1.crt")
    client-key-data: $($b64 <"$p/$1.key")
contexts:
- name: tokenmesh-cluster
  context: {cluster: tokenmesh-cluster, user: $1}
current-context: tokenmesh-cluster
EOF
    chmod 600 "$state/$1.kubeconfig"
}

# ---------------------------------------------------------------------------------------------
# configuration files

write_containerd_config() {
    local c="$state/containerd"
    mkdir -p "$c" "$state/cni/net.d"
    cat >"$c/config.toml" <<EOF
version = 2
root = "$c/root"
state = "$c/state"
[grpc]
  address = "$c/containerd.sock"
[ttrpc]
  address = "$c/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$c/opt"
[plugins."io.containerd.grpc.v1.cri"]
  # Built here by images.py: no registry is reachable.
  sandbox_image = "localhost/tokenmesh-test/pause:local"
  # Lowering oom_score_adj is denied here; without this runc fails to start the sandbox
  # ("can't get final child's PID from pipe").
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$cni_bin"
    conf_dir = "$state/cni/net.d"
EOF
    cat >"$state/cni/net.d/10-tokenmesh.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "tokenmesh",
  "plugins": [
    {"type": "bridge", "bridge": "$bridge", "isGateway": true, "ipMasq": true, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "$state/cni/ipam", "ranges": [[{"subnet": "$pod_cidr"}]],
              "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "loopback"}
  ]
}
EOF
}

write_kubelet_config() {
    local ip=$1 port=$2 healthz=$3
    cat >"$state/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$state/containerd/containerd.sock
# cgroup v1 here, and no systemd: the cgroupfs driver, no QoS or node-allocatable cgroups of its own.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
address: $ip
port: $port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $healthz
tlsCertFile: $state/pki/kubelet.crt
tlsPrivateKeyFile: $state/pki/kubelet.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $state/pki/ca.crt}
authorization: {mode: Webhook}
clusterDomain: cluster.local
clusterDNS: [$dns_ip]
resolvConf: /etc/resolv.conf
# The shared disk is fuller than the defaults allow, and the local images can never be pulled again.
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
registerNode: true
maxPods: 50
# Containers' logs under the state dir, not the host's /var/log/pods (the kubelet still links them
# from /var/log/containers; stop removes the links).
podLogsDir: $state/pod-logs
EOF
}

write_proxy_config() {
    cat >"$state/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: $state/proxy.kubeconfig}
hostnameOverride: $node
clusterCIDR: $pod_cidr
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:$1
metricsBindAddress: 127.0.0.1:$2
# The conntrack table is the host's: leave its size alone.
conntrack: {maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
}

# ---------------------------------------------------------------------------------------------
# start

sysctl_set() { # KEY VALUE: remembers the old value for stop
    local f="/proc/sys/${1//.//}"
    [[ -f $state/sysctl.$1 ]] || cat "$f" >"$state/sysctl.$1"
    echo "$2" >"$f"
}

cmd_start() {
    [[ $(id -u) == 0 ]] || die "the kubelet, containerd and kube-proxy need root"
    if [[ -e $state/.tokenmesh-cluster ]]; then die "a cluster runs in $state (stop it first)"; fi
    [[ ! -e $state ]] || die "$state exists and is not a cluster state dir: not touching it"
    local b
    for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl helm crictl; do
        [[ -x $bin/$b ]] || die "no $bin/$b (tests/cluster/build-k8s.sh)"
    done
    [[ -x $cni_bin/bridge ]] || die "no CNI plugins in $cni_bin (tests/cluster/cluster.sh deps)"
    # Bridged pod traffic through iptables (kube-proxy's Service rules) needs br_netfilter.
    [[ -e /proc/sys/net/bridge ]] || modprobe br_netfilter 2>/dev/null ||
        die "no /proc/sys/net/bridge: the node needs the br_netfilter module (modprobe br_netfilter)"
    local t0=$SECONDS ip etcd_port peer_port api_port server
    mkdir -p "$state"
    touch "$state/.tokenmesh-cluster"
    trap 'if (($?)); then TOKENMESH_CLUSTER_KEEP=1 cmd_stop; fi' EXIT
    ip="$(node_ip)"
    [[ -n $ip ]] || die "no node address (set TOKENMESH_NODE_IP)"
    echo "$ip" >"$state/node-ip"
    make_pki "$ip"
    local p="$state/pki"

    etcd_port=$(free_port)
    peer_port=$(free_port)
    api_port=$(free_port)
    server="https://$ip:$api_port"
    echo "$server" >"$state/server"
    # etcd on loopback only, without TLS: nothing but the API server on this host talks to it.
    start_daemon etcd "$bin/etcd" --name cluster --data-dir "$state/etcd" \
        --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
        --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
        --initial-cluster "cluster=http://127.0.0.1:$peer_port" --listen-metrics-urls "" \
        --unsafe-no-fsync --quota-backend-bytes 1073741824
    wait_ready etcd 60 curl -sf --max-time 5 "http://127.0.0.1:$etcd_port/health"

    log "starting kube-apiserver $k8s_version on $ip:$api_port"
    start_daemon apiserver "$bin/kube-apiserver" \
        --etcd-servers "http://127.0.0.1:$etcd_port" \
        --bind-address "$ip" --advertise-address "$ip" --secure-port "$api_port" \
        --cert-dir "$state/apiserver-certs" \
        --tls-cert-file "$p/apiserver.crt" --tls-private-key-file "$p/apiserver.key" \
        --client-ca-file "$p/ca.crt" \
        --kubelet-client-certificate "$p/apiserver-kubelet-client.crt" \
        --kubelet-client-key "$p/apiserver-kubelet-client.key" \
        --kubelet-preferred-address-types InternalIP \
        --authorization-mode Node,RBAC \
        --enable-admission-plugins NodeRestriction \
        --service-account-issuer https://kubernetes.default.svc \
        --service-account-key-file "$p/sa.pub" --service-account-signing-key-file "$p/sa.key" \
        --service-cluster-ip-range "$service_cidr" \
        --allow-privileged=true --profiling=false --v 1
    wait_ready apiserver 180 curl -sf --max-time 5 --cacert "$p/ca.crt" \
        --cert "$p/admin.crt" --key "$p/admin.key" "$server/readyz"
    for b in admin controller-manager scheduler proxy node; do kubeconfig "$b" "$server"; done
    cp "$state/admin.kubeconfig" "$state/kubeconfig"

    start_daemon controller-manager "$bin/kube-controller-manager" \
        --kubeconfig "$state/controller-manager.kubeconfig" \
        --authentication-kubeconfig "$state/controller-manager.kubeconfig" \
        --authorization-kubeconfig "$state/controller-manager.kubeconfig" \
        --bind-address 127.0.0.1 --secure-port "$(free_port)" --cert-dir "$state/controller-manager-certs" \
        --leader-elect=false --use-service-account-credentials \
        --service-account-private-key-file "$p/sa.key" --root-ca-file "$p/ca.crt" \
        --cluster-signing-cert-file "$p/ca.crt" --cluster-signing-key-file "$p/ca.key" \
        --service-cluster-ip-range "$service_cidr" --allocate-node-cidrs=false \
        --controllers '*,-bootstrapsigner,-tokencleaner' --v 1
    start_daemon scheduler "$bin/kube-scheduler" \
        --kubeconfig "$state/scheduler.kubeconfig" \
        --authentication-kubeconfig "$state/scheduler.kubeconfig" \
        --authorization-kubeconfig "$state/scheduler.kubeconfig" \
        --bind-address 127.0.0.1 --secure-port "$(free_port)" --cert-dir "$state/scheduler-certs" \
        --leader-elect=false --v 1

    # The node: forwarding and bridged traffic through iptables (kube-proxy's Service rules).
    sysctl_set net.ipv4.ip_forward 1
    sysctl_set net.bridge.bridge-nf-call-iptables 1
    write_containerd_config
    log "starting containerd ($(containerd --version | awk '{print $3}'))"
    start_daemon containerd containerd --config "$state/containerd/config.toml"
    export CONTAINER_RUNTIME_ENDPOINT="unix://$state/containerd/containerd.sock"
    wait_ready containerd 60 "$bin/crictl" --timeout 5s info
    log "loading the images"
    CONTAINERD_ADDRESS="$state/containerd/containerd.sock" "$here/images.py" --load-only

    write_proxy_config "$(free_port)" "$(free_port)"
    start_daemon proxy "$bin/kube-proxy" --config "$state/kube-proxy.yaml" --v 1
    local kport healthz
    kport=$(free_port)
    healthz=$(free_port)
    write_kubelet_config "$ip" "$kport" "$healthz"
    log "starting kubelet $k8s_version"
    start_daemon kubelet "$bin/kubelet" --config "$state/kubelet.yaml" --kubeconfig "$state/node.kubeconfig" \
        --root-dir "$state/kubelet" --cert-dir "$state/kubelet/pki" \
        --hostname-override "$node" --node-ip "$ip" --v 1
    export KUBECONFIG="$state/kubeconfig"
    wait_ready kubelet 120 "$bin/kubectl" wait --for=condition=Ready "node/$node" --timeout 5s
    wait_ready controller-manager 60 "$bin/kubectl" -n default get serviceaccount default

    log "starting cluster DNS (CoreDNS)"
    sed -e "s/@DNS_IP@/$dns_ip/" -e "s/@CLUSTER_DOMAIN@/cluster.local/" "$here/coredns.yaml" |
        "$bin/kubectl" apply -f - >&2
    wait_ready - 120 "$bin/kubectl" -n kube-system rollout status deployment/coredns --timeout 5s
    trap - EXIT
    log "cluster ready in $((SECONDS - t0)) s (state and logs in $state)"
    cmd_env
}

cmd_env() {
    [[ -f $state/kubeconfig ]] || die "no cluster in $state (start it first)"
    echo "export TOKENMESH_CLUSTER_DIR=$state"
    echo "export KUBECONFIG=$state/kubeconfig"
    echo "export CONTAINER_RUNTIME_ENDPOINT=unix://$state/containerd/containerd.sock"
    echo "export CONTAINERD_ADDRESS=$state/containerd/containerd.sock"
    echo "export TOKENMESH_KUBECTL=$bin/kubectl"
    echo "export TOKENMESH_HELM=$bin/helm"
    echo "export PATH=$bin:\$PATH"
}

# ---------------------------------------------------------------------------------------------
# stop

# drop_kube_chains IPTABLES: every KUBE-* chain of each table, with the rules that jump to it. Only
# this cluster makes them: no other kubelet or kube-proxy runs on a test host.
drop_kube_chains() {
    local ipt=$1 table chain rule
    command -v "$ipt" >/dev/null || return 0
    for table in filter nat mangle; do
        for chain in $("$ipt" -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ {print $2}'); do
            while read -r rule; do
                [[ -z $rule ]] || eval "\"\$ipt\" -t \"\$table\" -D ${rule#-A }" 2>/dev/null || true
            done < <("$ipt" -t "$table" -S 2>/dev/null | grep -E -- "^-A [^ ]+ .*-j $chain( |\$)" || true)
        done
        for chain in $("$ipt" -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ {print $2}'); do
            "$ipt" -t "$table" -F "$chain" 2>/dev/null || true
        done
        for chain in $("$ipt" -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ {print $2}'); do
            "$ipt" -t "$table" -X "$chain" 2>/dev/null || true
        done
    done
}

cmd_stop() {
    [[ -e $state ]] || return 0
    [[ -e $state/.tokenmesh-cluster ]] || die "$state is not a cluster state dir: not touching it"
    export CONTAINER_RUNTIME_ENDPOINT="unix://$state/containerd/containerd.sock"
    # Nothing may start pods again while they go.
    stop_one scheduler
    stop_one controller-manager
    stop_one kubelet
    if alive containerd; then
        # Through the CRI, so the CNI plugins undo what they did (netns, veth, iptables, IPAM).
        "$bin/crictl" --timeout 30s stopp $("$bin/crictl" pods -q) >/dev/null 2>&1 || true
        "$bin/crictl" --timeout 30s rmp -f $("$bin/crictl" pods -q) >/dev/null 2>&1 || true
    fi
    stop_one containerd
    # The shims of this containerd (they outlive it by design).
    local pid
    for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $state/containerd/containerd.sock" || true); do
        kill -KILL "$pid" 2>/dev/null || true
    done
    stop_one proxy
    if [[ -f $state/kube-proxy.yaml ]]; then
        "$bin/kube-proxy" --cleanup --config "$state/kube-proxy.yaml" >>"$state/proxy.log" 2>&1 || true
    fi
    # The kubelet's own chains (KUBE-FIREWALL, KUBE-KUBELET-CANARY, KUBE-IPTABLES-HINT), which
    # kube-proxy --cleanup leaves alone.
    drop_kube_chains iptables
    drop_kube_chains ip6tables
    stop_one apiserver
    stop_one etcd
    ip link delete "$bridge" 2>/dev/null || true
    find /var/log/containers -maxdepth 1 -lname "$state/*" -delete 2>/dev/null || true
    # The kubelet's volumes, containerd's snapshots and the sandboxes' shm, deepest first.
    local m
    while read -r m; do umount -l "$m" || true; done < <(findmnt -rn -o TARGET | grep -F "$state/" | sort -r || true)
    local f
    for f in "$state"/sysctl.*; do
        [[ -f $f ]] || continue
        f="${f##*/sysctl.}"
        cat "$state/sysctl.$f" >"/proc/sys/${f//.//}"
    done
    if [[ ${TOKENMESH_CLUSTER_KEEP:-0} == 1 ]]; then
        mkdir -p "$state.logs"
        cp "$state"/*.log "$state.logs/" 2>/dev/null || true
        log "logs kept in $state.logs"
    fi
    rm -rf "$state"
}

# What a stopped cluster must not leave behind; prints each leftover, fails if there is one.
cmd_check_clean() {
    local left=0 line
    while read -r line; do [[ -n $line ]] && { log "leftover mount: $line"; left=1; }; done \
        < <(findmnt -rn -o TARGET | grep -F "$state" || true)
    while read -r line; do [[ -n $line ]] && { log "leftover process: $line"; left=1; }; done \
        < <(pgrep -af -- "$state" | grep -v -e "cluster.sh" -e pgrep || true)
    while read -r line; do [[ -n $line ]] && { log "leftover iptables chain: $line"; left=1; }; done \
        < <({ iptables-save; ip6tables-save; } 2>/dev/null | grep -E '^:(KUBE-|CNI-)' || true)
    ip link show "$bridge" >/dev/null 2>&1 && { log "leftover bridge $bridge"; left=1; }
    while read -r line; do [[ -n $line ]] && { log "leftover log link: $line"; left=1; }; done \
        < <(find /var/log/containers -maxdepth 1 -lname "$state/*" 2>/dev/null || true)
    # containerd names its pod network namespaces cni-<uuid>.
    while read -r line; do [[ -n $line ]] && { log "leftover network namespace: $line"; left=1; }; done \
        < <(find /var/run/netns -maxdepth 1 -name 'cni-*' 2>/dev/null || true)
    [[ ! -e $state ]] || { log "leftover state dir $state"; left=1; }
    return "$left"
}

case "${1:-}" in
deps) cmd_deps ;;
check-clean) cmd_check_clean ;;
start) cmd_start ;;
stop) cmd_stop ;;
env) cmd_env ;;
*)
    echo "usage: $0 deps|start|stop|env|check-clean" >&2
    exit 2
    ;;
esac
