"""Small network helpers shared by the CLI, the quickstart, the benchmarks and the tests."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it; another process may still take
    it before it is bound again, so bind soon)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
