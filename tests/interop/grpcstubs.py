"""Python stubs for the checked-in protos (proto/tokenmesh/v1/*.proto), made at test time.

grpcio-tools compiles the protos into a cache folder named by a hash of the
protos and of the compiler and runtime versions; nothing generated is ever
checked in. A changed proto, or a new grpcio-tools/protobuf pin, gives a new
folder. Import through `load()`:

    stubs = load()
    stubs.token_pb2.ExchangeRequest(...), stubs.token_pb2_grpc.TokenServiceStub(channel)
"""

import hashlib
import importlib
import os
import shutil
import sys
import tempfile
from importlib import metadata, resources
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO / "proto"
PACKAGE = "tokenmesh/v1"
MODULES = ("token", "control")
CACHE = Path(os.environ.get("TOKENMESH_CACHE") or Path.home() / ".cache" / "tokenmesh") / "grpc-stubs"


def proto_files():
    return sorted((PROTO_ROOT / PACKAGE).glob("*.proto"))


def cache_key():
    digest = hashlib.sha256()
    for dist in ("grpcio-tools", "protobuf"):
        digest.update(f"{dist}=={metadata.version(dist)}\n".encode())
    for path in proto_files():
        digest.update(f"{path.relative_to(PROTO_ROOT)}\n".encode())
        digest.update(path.read_bytes())
        digest.update(b"\n")
    return digest.hexdigest()[:24]


def generate(out: Path):
    """Run protoc (the one inside grpcio-tools) on every proto into `out`."""
    from grpc_tools import protoc

    well_known = resources.files("grpc_tools") / "_proto"
    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    args = ["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{well_known}", f"--python_out={out}",
            f"--pyi_out={out}", f"--grpc_python_out={out}", *files]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {files}")


def stub_dir() -> Path:
    """The folder holding the stubs for the protos as they are now; made when missing."""
    target = CACHE / cache_key()
    if (target / ".complete").exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".gen-", dir=CACHE))
    try:
        generate(tmp)
        tmp.chmod(0o755)
        (tmp / ".complete").write_text("")
        try:
            tmp.rename(target)
        except OSError:  # another run got there first, or a partial leftover
            if not (target / ".complete").exists():
                shutil.rmtree(target, ignore_errors=True)
                tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load() -> SimpleNamespace:
    """Generate if needed, then import tokenmesh.v1.{token,control}_pb2[_grpc]."""
    path = str(stub_dir())
    if path not in sys.path:
        sys.path.insert(0, path)
    mods = {}
    for name in MODULES:
        for suffix in ("_pb2", "_pb2_grpc"):
            mods[name + suffix] = importlib.import_module(f"tokenmesh.v1.{name}{suffix}")
    return SimpleNamespace(dir=Path(path), **mods)
