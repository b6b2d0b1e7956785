#!/usr/bin/env python3
"""Builds tokenmesh's four images here, without a container registry, and loads
them into containerd (namespace k8s.io), for the local cluster (tests/cluster/).

The shipped Dockerfiles (docker/*.Dockerfile) build the binaries in a Rust
container and copy them onto gcr.io/distroless/cc-debian12:nonroot or
debian:bookworm-slim; neither base can be pulled here. This script takes the
release binaries cargo already built (`cargo build --release --bins`) and puts
them, with the same paths, users, entrypoints and ports (IMAGES below, which
tests/chart/test_images.py checks against the Dockerfiles), on a root
filesystem made from Debian packages (`apt-get download`, `dpkg-deb -x`):

  cc        what distroless/cc-debian12:nonroot holds for a Rust binary: glibc,
            libgcc, libssl, libstdc++, netbase, the CA bundle, users root,
            nonroot (65532) and nobody, /tmp and /home/nonroot
  iptables  cc's libraries plus iptables (nft and legacy backends, Debian's
            default alternative iptables -> iptables-nft) and user tokenmesh (1337)

buildah (storage driver vfs, no daemon) commits each image, pushes it to an OCI
archive, and `ctr -n k8s.io images import` loads it. The test images are built
the same way: the pod sandbox ("pause": busybox sleeping, signals end it) and
the shop example's Python (Debian's python3.11 in place of python:3.13-alpine)
and CoreDNS (tests/cluster/build-k8s.sh's binary on the cc base).

  tests/cluster/images.py [--profile release|debug] [--out DIR] [--no-import]
  tests/cluster/images.py --load-only      # import the archives built before
Archives go to $TOKENMESH_CACHE/cluster/images; ctr uses $CONTAINERD_ADDRESS.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

REGISTRY = "ghcr.io/tokenmesh"
TEST_REGISTRY = "localhost/tokenmesh-test"
PAUSE_IMAGE = f"{TEST_REGISTRY}/pause:local"
PYTHON_IMAGE = f"{TEST_REGISTRY}/python:3.11"
COREDNS_IMAGE = f"{TEST_REGISTRY}/coredns:local"
TEST_IMAGES = [PAUSE_IMAGE, COREDNS_IMAGE, PYTHON_IMAGE]

# image -> final stage as the Dockerfile promises it: binaries (copied to
# /usr/local/bin), base, user, entrypoint, ports.
IMAGES = {
    "token-server": {
        "dockerfile": "token-server.Dockerfile",
        "binaries": ["token-server"],
        "base": "cc",
        "user": "65532:65532",
        "entrypoint": ["/usr/local/bin/token-server"],
        "ports": ["8080", "8081"],
    },
    "operator": {
        "dockerfile": "operator.Dockerfile",
        "binaries": ["tokenmesh-operator"],
        "base": "cc",
        "user": "65532:65532",
        "entrypoint": ["/usr/local/bin/tokenmesh-operator"],
        "ports": ["8080", "9443"],
    },
    "sidecar": {
        "dockerfile": "sidecar.Dockerfile",
        "binaries": ["tokenmesh-sidecar", "tokenmesh-capture"],
        "base": "iptables",
        "user": "1337:1337",
        "entrypoint": ["/usr/local/bin/tokenmesh-sidecar"],
        "ports": ["15006", "15020"],
    },
    "capture": {
        "dockerfile": "capture.Dockerfile",
        "binaries": ["tokenmesh-capture"],
        "base": "iptables",
        "user": "65532:65532",
        "entrypoint": ["/usr/local/bin/tokenmesh-capture"],
        "ports": [],
    },
}
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Which shipped base each of ours stands for.
BASES = {"cc": "gcr.io/distroless/cc-debian12:nonroot", "iptables": "debian:bookworm-slim"}

LIBS = ["libc6", "libgcc-s1", "gcc-12-base", "libssl3", "libstdc++6", "netbase"]
PACKAGES = {
    "cc": LIBS,
    "iptables": LIBS + ["iptables", "libip4tc2", "libip6tc2", "libxtables12", "libnftnl11", "libmnl0",
                        "libnetfilter-conntrack3", "libnfnetlink0"],
    "busybox": ["busybox-static"],
    "python": LIBS + ["python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libexpat1", "zlib1g",
                      "libffi8", "libbz2-1.0", "liblzma5", "libcrypt1", "libuuid1", "libncursesw6", "libtinfo6",
                      "libreadline8", "libsqlite3-0", "libdb5.3", "libgdbm6", "libnsl2", "libtirpc3",
                      "libtirpc-common", "media-types", "libgssapi-krb5-2", "libkrb5-3", "libk5crypto3",
                      "libkrb5support0", "libkeyutils1", "libcom-err2"],
}
PASSWD = {
    "cc": "root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
    "nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n",
    "iptables": "root:x:0:0:root:/root:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    "tokenmesh:x:1337:1337::/nonexistent:/usr/sbin/nologin\n",
}
GROUP = {
    "cc": "root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n",
    "iptables": "root:x:0:\nnogroup:x:65534:\ntokenmesh:x:1337:\n",
}
# Debian's alternatives (update-alternatives runs in postinst, which dpkg-deb -x does not run).
IPTABLES_LINKS = {
    "iptables": "xtables-nft-multi", "iptables-restore": "xtables-nft-multi", "iptables-save": "xtables-nft-multi",
    "ip6tables": "xtables-nft-multi", "ip6tables-restore": "xtables-nft-multi", "ip6tables-save": "xtables-nft-multi",
}


def log(msg: str) -> None:
    print(f"images.py: {msg}", file=sys.stderr, flush=True)


def run(*args: str, **kw) -> str:
    return subprocess.run(args, check=True, text=True, stdout=subprocess.PIPE, **kw).stdout.strip()


def buildah(*args: str) -> str:
    return run("buildah", "--storage-driver", "vfs", *args)


def debs(cache: Path, packages: list[str]) -> list[Path]:
    """The packages' .deb files, downloaded once into the cache."""
    cache.mkdir(parents=True, exist_ok=True)
    missing = [p for p in packages if not list(cache.glob(f"{p}_*.deb"))]
    if missing:
        log(f"apt-get download {' '.join(missing)}")
        subprocess.run(["apt-get", "download", "-q", *missing], cwd=cache, check=True, stdout=subprocess.DEVNULL)
    return [sorted(cache.glob(f"{p}_*.deb"))[-1] for p in packages]


def rootfs(cache: Path, base: str, into: Path) -> None:
    for deb in debs(cache / "debs", PACKAGES[base]):
        run("dpkg-deb", "-x", str(deb), str(into))
    # Only what a runtime needs: the documentation, manuals and locales go.
    for junk in ["usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/lintian"]:
        shutil.rmtree(into / junk, ignore_errors=True)
    (into / "tmp").mkdir(mode=0o1777, exist_ok=True)
    os.chmod(into / "tmp", 0o1777)
    certs = into / "etc/ssl/certs"
    certs.mkdir(parents=True, exist_ok=True)
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", certs / "ca-certificates.crt")
    if base in PASSWD:
        (into / "etc/passwd").write_text(PASSWD[base])
        (into / "etc/group").write_text(GROUP[base])
    if base == "cc":
        home = into / "home/nonroot"
        home.mkdir(parents=True, exist_ok=True)
        os.chown(home, 65532, 65532)
    if base == "iptables":
        for link, target in IPTABLES_LINKS.items():
            (into / "usr/sbin" / link).unlink(missing_ok=True)
            (into / "usr/sbin" / link).symlink_to(target)


def archive_of(name: str, out: Path) -> Path:
    """Where an image's OCI archive goes: ghcr.io/tokenmesh/sidecar:0.1.0 -> sidecar_0.1.0.tar."""
    return out / (name.rsplit("/", 1)[-1].replace(":", "_") + ".tar")


def commit(name: str, tree: Path, config: list[str], out: Path, load: bool) -> None:
    """An image of the tree's files alone, saved as an OCI archive and loaded into containerd."""
    ctr = buildah("from", "--quiet", "scratch")
    try:
        buildah("copy", "--quiet", ctr, f"{tree}/.", "/")
        # The PATH both shipped bases set (commands such as the capture init container's are looked up in it).
        buildah("config", "--env", f"PATH={PATH}", *config, ctr)
        buildah("commit", "--quiet", "--rm", ctr, name)
    except BaseException:
        subprocess.run(["buildah", "--storage-driver", "vfs", "rm", ctr], check=False, capture_output=True)
        raise
    archive = archive_of(name, out)
    archive.unlink(missing_ok=True)
    buildah("push", "--quiet", name, f"oci-archive:{archive}:{name}")
    buildah("rmi", name)
    if load:
        run("ctr", "-n", "k8s.io", "images", "import", str(archive))
    log(f"{name}: {archive.stat().st_size // 1024} KiB")


def k8s_bin() -> Path:
    cache = Path(os.environ.get("TOKENMESH_CACHE", Path.home() / ".cache/tokenmesh"))
    return cache / "k8s" / os.environ.get("TOKENMESH_K8S_VERSION", "v1.35.4") / "bin"


def load_all(out: Path) -> None:
    archives = sorted(out.glob("*.tar"))
    if not archives:
        sys.exit(f"images.py: no image archives in {out} (tests/cluster/images.py)")
    for archive in archives:
        run("ctr", "-n", "k8s.io", "images", "import", str(archive))


def build(cache: Path, bins: Path, out: Path, tag: str, load: bool, only: set[str]) -> None:
    for image, spec in IMAGES.items():
        if only and image not in only:
            continue
        with tempfile.TemporaryDirectory(prefix=f"tokenmesh-{image}-") as tmp:
            tree = Path(tmp)
            rootfs(cache, spec["base"], tree)
            (tree / "usr/local/bin").mkdir(parents=True, exist_ok=True)
            for binary in spec["binaries"]:
                source = bins / binary
                if not source.is_file():
                    sys.exit(f"images.py: no {source} (cargo build --release --bins)")
                shutil.copy(source, tree / "usr/local/bin" / binary)
                os.chmod(tree / "usr/local/bin" / binary, 0o755)
            config = ["--user", spec["user"], "--entrypoint", json_list(spec["entrypoint"]), "--cmd", ""]
            config += [a for port in spec["ports"] for a in ("--port", port)]
            commit(f"{REGISTRY}/{image}:{tag}", tree, config, out, load)
    if only and "test" not in only:
        return
    # The test images depend on nothing in the repository but this script (and the cached .deb files
    # and CoreDNS binary): built again only when it changed or an archive is missing.
    stamp = out / ".test-images"
    digest = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    archives = [archive_of(name, out) for name in TEST_IMAGES]
    if "test" not in only and all(a.is_file() for a in archives) and stamp.is_file() and stamp.read_text() == digest:
        log("test images unchanged (pause, CoreDNS, Python)")
        if load:
            for archive in archives:
                run("ctr", "-n", "k8s.io", "images", "import", str(archive))
        return
    stamp.unlink(missing_ok=True)
    build_test_images(cache, out, load)
    stamp.write_text(digest)


def build_test_images(cache: Path, out: Path, load: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="tokenmesh-pause-") as tmp:
        tree = Path(tmp)
        rootfs(cache, "busybox", tree)
        for applet in ("sh", "sleep"):
            (tree / "bin" / applet).symlink_to("busybox")
        # Sleeps until a signal ends it (PID 1 has no default signal handlers).
        script = 'trap "exit 0" TERM INT; while :; do sleep 3600 & wait $!; done'
        commit(PAUSE_IMAGE, tree, ["--user", "65535:65535", "--entrypoint", json_list(["/bin/sh", "-c", script]),
                                   "--cmd", ""], out, load)
    coredns = Path(os.environ.get("TOKENMESH_COREDNS_BIN", k8s_bin() / "coredns"))
    with tempfile.TemporaryDirectory(prefix="tokenmesh-coredns-") as tmp:
        tree = Path(tmp)
        rootfs(cache, "cc", tree)
        shutil.copy(coredns, tree / "coredns")
        commit(COREDNS_IMAGE, tree, ["--user", "65532:65532", "--entrypoint", json_list(["/coredns"]), "--cmd", ""],
               out, load)
    with tempfile.TemporaryDirectory(prefix="tokenmesh-python-") as tmp:
        tree = Path(tmp)
        rootfs(cache, "python", tree)
        (tree / "usr/bin/python3").unlink(missing_ok=True)
        (tree / "usr/bin/python3").symlink_to("python3.11")
        commit(PYTHON_IMAGE, tree, ["--entrypoint", json_list(["/usr/bin/python3"]), "--cmd", ""], out, load)


def json_list(items: list[str]) -> str:
    return json.dumps(items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default=os.environ.get("TOKENMESH_IMAGE_PROFILE", "release"))
    parser.add_argument("--tag", default=None, help="image tag (default: the chart's appVersion)")
    parser.add_argument("--out", type=Path, default=None, help="where the OCI archives go")
    parser.add_argument("--no-import", action="store_true", help="do not load the archives into containerd")
    parser.add_argument("--only", action="append", default=[],
                        help="build only this image (token-server, operator, sidecar, capture, or test: the test images)")
    parser.add_argument("--load-only", action="store_true", help="load the archives already built, build nothing")
    args = parser.parse_args()
    from binaries import target_dir  # noqa: E402 (tests/binaries.py)

    cache = Path(os.environ.get("TOKENMESH_CACHE", Path.home() / ".cache/tokenmesh")) / "cluster"
    tag = args.tag or chart_app_version()
    out = args.out or cache / "images"
    out.mkdir(parents=True, exist_ok=True)
    if args.load_only:
        load_all(out)
        return
    build(cache, target_dir() / args.profile, out, tag, not args.no_import, set(args.only))


def chart_app_version() -> str:
    for line in (REPO / "charts/tokenmesh/Chart.yaml").read_text().splitlines():
        if line.startswith("appVersion:"):
            return line.split(":", 1)[1].strip().strip('"')
    sys.exit("images.py: no appVersion in charts/tokenmesh/Chart.yaml")


if __name__ == "__main__":
    main()
