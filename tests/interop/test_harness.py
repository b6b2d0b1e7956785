"""The harness's own promise: ports for children cannot be raced by outgoing connections."""

import socket
from pathlib import Path

from tokenserver import free_port


def test_free_ports_are_distinct_bindable_and_outside_the_ephemeral_range():
    first, last = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert not [port for port in ports if first <= port <= last]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports[-1]))
