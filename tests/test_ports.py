"""cluster.procs.free_port, which the tests, the bench and `make cluster` start servers on."""

from __future__ import annotations

import socket

from cluster.procs import free_port


def test_free_port_never_hands_out_a_port_twice() -> None:
    # The kernel gives a just-closed port again: over this many draws, dozens of times.
    ports = [free_port() for _ in range(2000)]
    assert len(set(ports)) == len(ports)
    for port in ports[:20]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))  # and each is free to bind
