"""Static checks of the container images (docker/*.Dockerfile, .dockerignore).

Images cannot be built on these machines (no container runtime), so this
checks what can be checked without one: every Dockerfile parses with the
official BuildKit parser (PyPI `dockerfile`); it is multi-stage, builds in
rust:1.95-bookworm with nothing but cargo (no protoc), runs `cargo build --release --locked` for
binaries that exist in the workspace, copies exactly those into the final
stage, runs as a numeric non-root user and starts one of them; every
workspace binary but the crdgen tool has an image; and .dockerignore, read
with Docker's matching rules, lets in every file the workspace build needs
and nothing else.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import dockerfile
import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"

# image Dockerfile -> (cargo package, binaries, final base image, user)
IMAGES = {
    "token-server.Dockerfile": ("token-server", ["token-server"], "gcr.io/distroless/cc-debian12:nonroot", "65532:65532"),
    "operator.Dockerfile": ("tokenmesh-operator", ["tokenmesh-operator"], "gcr.io/distroless/cc-debian12:nonroot", "65532:65532"),
    # The webhook runs tokenmesh-capture from the sidecar image: iptables needed.
    "sidecar.Dockerfile": ("tokenmesh-sidecar", ["tokenmesh-sidecar", "tokenmesh-capture"], "debian:bookworm-slim", "1337:1337"),
    "capture.Dockerfile": ("tokenmesh-sidecar", ["tokenmesh-capture"], "debian:bookworm-slim", "65532:65532"),
}
# Binaries that are tools of the repository, not shipped.
NOT_SHIPPED = {"crdgen", "bare-signer", "bare-proxy"}  # build tools and the benchmark references


def workspace_binaries() -> dict[str, str]:
    """binary -> package, from cargo metadata."""
    if not shutil.which("cargo"):
        pytest.fail("no cargo on PATH: the workspace cannot be listed")
    out = subprocess.run(["cargo", "metadata", "--no-deps", "--format-version", "1", "--offline"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    bins = {}
    for package in json.loads(out)["packages"]:
        for target in package["targets"]:
            if "bin" in target["kind"]:
                bins[target["name"]] = package["name"]
    return bins


def stages(path: Path) -> list[list]:
    commands = dockerfile.parse_file(str(path))
    out: list[list] = []
    for command in commands:
        if command.cmd == "FROM":
            out.append([])
        assert out, f"{path.name}: {command.cmd} before FROM"
        out[-1].append(command)
    return out


def test_every_shipped_binary_has_an_image():
    shipped = {b for _, bins, _, _ in IMAGES.values() for b in bins}
    binaries = workspace_binaries()
    assert set(binaries) - NOT_SHIPPED <= shipped, f"binaries without an image: {set(binaries) - NOT_SHIPPED - shipped}"
    for name, (package, bins, _, _) in IMAGES.items():
        for binary in bins:
            assert binaries.get(binary) == package, f"{name}: no binary {binary} in package {package}"
    assert sorted(p.name for p in DOCKER.glob("*.Dockerfile")) == sorted(IMAGES)


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_dockerfile(name):
    package, bins, base, user = IMAGES[name]
    path = DOCKER / name
    text = path.read_text()
    assert text.startswith("# syntax=docker/dockerfile:1\n")
    assert f"docker build -f docker/{name} -t " in text, "the build command is documented in the file"
    builder, final = stages(path)

    assert builder[0].value == ("rust:1.95-bookworm", "AS", "builder")
    runs = [c for c in builder if c.cmd == "RUN"]
    assert not any("protobuf-compiler" in " ".join(c.value) for c in runs), "proto/build.rs needs no protoc (protox)"
    build = next(c for c in runs if "cargo build" in " ".join(c.value))
    command = " ".join(build.value)
    assert "--release" in command and "--locked" in command
    assert f"-p {package}" in command
    assert sorted(re.findall(r"--bin (\S+)", command)) == sorted(bins)
    built = set(re.findall(r"install -D -m 0755 target/release/(\S+) /out/\1", command))
    assert built == set(bins)

    assert final[0].value == (base,)
    copies = [c for c in final if c.cmd == "COPY"]
    assert all(c.flags == ("--from=builder",) for c in copies)
    copied = {Path(src).name for c in copies for src in c.value[:-1]}
    assert copied == set(bins)
    users = [c for c in final if c.cmd == "USER"]
    assert users and users[-1].value == (user,)
    uid = int(user.split(":")[0])
    assert uid != 0
    entrypoint = [c for c in final if c.cmd == "ENTRYPOINT"]
    assert len(entrypoint) == 1 and entrypoint[0].json, "exec-form ENTRYPOINT"
    assert entrypoint[0].value[0] == f"/usr/local/bin/{bins[0]}"
    if base.startswith("debian"):
        apt = " ".join(" ".join(c.value) for c in final if c.cmd == "RUN")
        assert "iptables" in apt and "rm -rf /var/lib/apt/lists/*" in apt


def dockerignore_matcher(text: str):
    """Docker's rules: patterns in order, the last one matching a path (or one
    of its parent folders) decides; `!` lets back in; `*` does not cross `/`,
    `**` does."""
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        pattern = pattern.strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                regex += ".*"
                i += 2
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        rules.append((re.compile(f"^{regex}$"), negate))

    def excluded(path: str) -> bool:
        parts = path.split("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        result = False
        for regex, negate in rules:
            if any(regex.match(c) for c in candidates):
                result = not negate
        return result

    return excluded


def test_dockerignore_keeps_the_workspace_and_nothing_else():
    excluded = dockerignore_matcher((REPO / ".dockerignore").read_text())
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    assert files
    if not shutil.which("cargo"):
        pytest.fail("no cargo on PATH: the workspace cannot be listed")
    meta = json.loads(subprocess.run(["cargo", "metadata", "--no-deps", "--format-version", "1", "--offline"],
                                     cwd=REPO, capture_output=True, text=True, check=True).stdout)
    needed = {"Cargo.toml", "Cargo.lock"}
    for package in meta["packages"]:
        manifest = Path(package["manifest_path"]).relative_to(REPO)
        needed.add(str(manifest))
        for target in package["targets"]:
            needed.add(str(Path(target["src_path"]).relative_to(REPO)))
    member_dirs = {str(Path(m).relative_to(REPO).parent) for m in (p["manifest_path"] for p in meta["packages"])}
    for path in files:
        top = path.split("/")[0]
        if path in needed:
            assert not excluded(path), f"{path} is needed by the build but .dockerignore leaves it out"
        elif top in member_dirs and top != "tests":
            # All of a member's folder: modules, build.rs, proto files.
            assert not excluded(path), f"{path} (workspace member {top}) is left out"
        elif top in {"charts", "docs", "examples", "bench", ".ci", "docker"} or path.startswith("tests/chart"):
            assert excluded(path), f"{path} needs not be in the build context"
    for junk in ["target/debug/token-server", "token-server/target/x", "token-server/data/tokenmesh.db",
                 ".git/config", "tests/interop/__pycache__/x.pyc", "bench/peer/node_modules/x/index.js"]:
        assert excluded(junk), junk


def cluster_images():
    """tests/cluster/images.py's IMAGES and BASES: the images built here without Docker."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("cluster_images", REPO / "tests" / "cluster" / "images.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.IMAGES, module.BASES


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_the_cluster_suite_builds_the_same_layout(name):
    """The images tests/cluster/ runs (built from the release binaries on Debian packages, no registry)
    promise what the Dockerfile's final stage does: binaries in /usr/local/bin, user, entrypoint, ports,
    and the base they stand for."""
    built, bases = cluster_images()
    (image,) = [i for i, spec in built.items() if spec["dockerfile"] == name]
    spec = built[image]
    _, final = stages(DOCKER / name)
    assert bases[spec["base"]] == final[0].value[0]
    copied = sorted(Path(src).name for c in final if c.cmd == "COPY" for src in c.value[:-1])
    destinations = {c.value[-1].rstrip("/") for c in final if c.cmd == "COPY"}
    assert destinations <= {"/usr/local/bin"} | {f"/usr/local/bin/{b}" for b in copied}
    assert sorted(spec["binaries"]) == copied
    assert [c.value[0] for c in final if c.cmd == "USER"][-1] == spec["user"]
    (entrypoint,) = [c for c in final if c.cmd == "ENTRYPOINT"]
    assert list(entrypoint.value) == spec["entrypoint"]
    assert [p for c in final if c.cmd == "EXPOSE" for p in c.value] == spec["ports"]
