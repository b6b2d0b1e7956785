"""Loopback ports for child processes, shared by the Python harnesses
(interop, chart, e2e): the counterpart of `free_port` in tests/lib.rs."""

import itertools
import os
import socket
from pathlib import Path


def _outside_ephemeral_range():
    """Ports the kernel does not pick for outgoing connections (as tests/lib.rs)."""
    try:
        first, last = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return 20_000, 32_768
    if first >= 21_000:
        return 20_000, first
    if last <= 64_000:
        return last + 1, 65_535
    return 20_000, 32_768


_handed_out = itertools.count()


def free_port():
    """A loopback port for a child to listen on: free now, outside the ephemeral
    range (a port-0 answer can be taken by an outgoing connection before the
    child binds it) and handed out once per process."""
    low, high = _outside_ephemeral_range()
    span = high - low
    start = os.getpid() * 7919
    for _ in range(span):
        port = low + (start + next(_handed_out)) % span
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {low}..{high}")
