#!/usr/bin/env bash
# The node side of the local cluster, built the way tests/e2e/control-plane.sh builds kube-apiserver
# (it runs first, so etcd, kube-apiserver, kubectl and helm are cached):
#   kube-controller-manager, kube-scheduler, kubelet, kube-proxy   from the same k8s.io/kubernetes module
#   coredns                                                        from github.com/coredns/coredns
#   crictl                                                         from sigs.k8s.io/cri-tools (teardown)
# into $TOKENMESH_CACHE/k8s/<version>/bin, outside the repository; cached binaries are not rebuilt.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${TOKENMESH_CACHE:-$HOME/.cache/tokenmesh}"
k8s_version="${TOKENMESH_K8S_VERSION:-v1.35.4}"
coredns_version="${TOKENMESH_COREDNS_VERSION:-v1.12.4}"
coredns_plugins=(cache errors forward health kubernetes ready)
# The newest cri-tools the module proxy serves (v1.35.0 is withheld); CRI v1 is the same.
crictl_version="${TOKENMESH_CRICTL_VERSION:-v1.34.0}"
kdir="$cache/k8s/$k8s_version"
bin="$kdir/bin"
node_bins=(kube-controller-manager kube-scheduler kubelet kube-proxy)

log() { printf 'build-k8s.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
lowprio() { nice -n 19 ionice -c3 "$@"; }

"$repo/tests/e2e/control-plane.sh" build

# go_tool NAME MODULE VERSION PACKAGE: builds PACKAGE of MODULE@VERSION through a wrapper module.
go_tool() {
    local name=$1 module=$2 version=$3 package=$4 src="$kdir/src/$1" gomod
    log "building $name $version ($module)"
    rm -rf "$src"
    mkdir -p "$src"
    (
        cd "$src"
        go mod init "tokenmesh.invalid/$name-build" >/dev/null 2>&1
        gomod="$(lowprio go mod download -json "$module@$version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
        go mod edit -go="$(go mod edit -json "$gomod" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Go"])')"
        go mod edit -require="$module@$version" -tool="$package"
        lowprio go mod tidy
        CGO_ENABLED=0 lowprio go build -trimpath -ldflags "-s -w" -o "$bin/$name.tmp" "$package"
        mv "$bin/$name.tmp" "$bin/$name"
    )
}

missing=()
for b in "${node_bins[@]}"; do [[ -x $bin/$b ]] || missing+=("$b"); done
[[ ${#missing[@]} -gt 0 || ! -x $bin/coredns || ! -x $bin/crictl ]] || exit 0

# A lock of its own: the e2e control plane's build lock must not wait for this long build.
exec 8>"$kdir/.build-node.lock"
flock 8
export GOCACHE="$kdir/.go-build-node"
t0=$SECONDS

if [[ ${#missing[@]} -gt 0 ]]; then
    # control-plane.sh's wrapper module already pins every staging module; a copy of it gains the node tools.
    src="$kdir/src/kubernetes-node"
    [[ -f $kdir/src/kubernetes/go.mod ]] || die "no wrapper module in $kdir/src/kubernetes (control-plane.sh build)"
    rm -rf "$src"
    mkdir -p "$src"
    cp "$kdir/src/kubernetes/go.mod" "$kdir/src/kubernetes/go.sum" "$src/"
    [[ $k8s_version =~ ^v1\.([0-9]+)\. ]] || die "bad version $k8s_version"
    minor="${BASH_REMATCH[1]}"
    pkg=k8s.io/component-base/version
    ldflags="-s -w -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    (
        cd "$src"
        for b in "${missing[@]}"; do go mod edit -tool="k8s.io/kubernetes/cmd/$b"; done
        lowprio go mod tidy
        # One build for all of them: they share most packages, and the compiler runs more of them at once.
        log "building ${missing[*]} $k8s_version"
        rm -rf "$bin/.node.tmp"
        mkdir -p "$bin/.node.tmp"
        CGO_ENABLED=0 lowprio go build -trimpath -ldflags "$ldflags" -o "$bin/.node.tmp/" \
            "${missing[@]/#/k8s.io/kubernetes/cmd/}"
        for b in "${missing[@]}"; do mv "$bin/.node.tmp/$b" "$bin/$b"; done
        rmdir "$bin/.node.tmp"
    )
fi

if [[ ! -x $bin/coredns ]]; then
    # Cluster DNS: CoreDNS, the DNS server kubeadm installs, with only the plugins coredns.yaml's
    # Corefile uses (its own main, as CoreDNS documents for custom builds): the cloud DNS plugins
    # would add several hundred packages to the build.
    log "building coredns $coredns_version (plugins: ${coredns_plugins[*]})"
    src="$kdir/src/coredns"
    rm -rf "$src"
    mkdir -p "$src"
    (
        cd "$src"
        go mod init tokenmesh.invalid/coredns-build >/dev/null 2>&1
        {
            echo 'package main'
            echo 'import ('
            echo '    "github.com/coredns/coredns/coremain"'
            for p in "${coredns_plugins[@]}"; do echo "    _ \"github.com/coredns/coredns/plugin/$p\""; done
            echo ')'
            echo 'func main() { coremain.Run() }'
        } >main.go
        gomod="$(lowprio go mod download -json "github.com/coredns/coredns@$coredns_version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
        go mod edit -go="$(go mod edit -json "$gomod" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Go"])')"
        go mod edit -require="github.com/coredns/coredns@$coredns_version"
        lowprio go mod tidy
        CGO_ENABLED=0 lowprio go build -trimpath -ldflags "-s -w" -o "$bin/coredns.tmp" .
        mv "$bin/coredns.tmp" "$bin/coredns"
    )
fi
[[ -x $bin/crictl ]] || go_tool crictl sigs.k8s.io/cri-tools "$crictl_version" sigs.k8s.io/cri-tools/cmd/crictl
rm -rf "$GOCACHE"
flock -u 8
log "node binaries built in $((SECONDS - t0)) s"
