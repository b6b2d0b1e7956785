"""Where the workspace's binaries are, for every harness (tests/lib.sh calls this
file; the Python suites import it): the counterpart of `binary` in tests/lib.rs.

Found the way cargo puts them: under $CARGO_TARGET_DIR when it is set (relative
to the current directory, as cargo reads it), else under `cargo metadata`'s
`target_directory` (which also follows `build.target-dir` in .cargo/config.toml),
else under target/ in the repository (no cargo on the PATH).

    python3 tests/binaries.py NAME...   prints the path of each debug binary
"""

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@functools.cache
def target_dir():
    if os.environ.get("CARGO_TARGET_DIR"):
        return Path(os.environ["CARGO_TARGET_DIR"]).resolve()
    cargo = shutil.which("cargo")
    if cargo:
        result = subprocess.run([cargo, "metadata", "--format-version", "1", "--no-deps", "--offline"],
                                cwd=REPO, capture_output=True, text=True)
        if result.returncode == 0:
            return Path(json.loads(result.stdout)["target_directory"])
    return REPO / "target"


def binary(name, var=None):
    """The debug build of workspace binary `name`; the environment variable `var`,
    when set, names another (relative: to the repository)."""
    if var and os.environ.get(var):
        return REPO / os.environ[var]  # an absolute value stays as it is
    return target_dir() / "debug" / name


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(binary(name))
