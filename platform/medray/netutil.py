"""Small network helpers shared by the CLI, the quickstart, the benchmarks and the tests."""

from __future__ import annotations

import socket
import time
from typing import Callable


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it; another process may still take
    it before it is bound again, so bind soon)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_healthy(url: str, timeout: float = 300, headers: dict | None = None,
                 alive: Callable[[], bool] | None = None, interval: float = 0.5) -> dict:
    """Poll ``URL/healthz`` until it answers 200 and return its JSON body.

    ``alive`` (e.g. "the server process is still running") ends the wait early when it turns false.
    Raises :class:`medray.errors.MedrayError` naming the last answer or connection error on timeout.
    """
    import requests

    from medray.errors import MedrayError

    t0, last = time.time(), None
    while time.time() - t0 < timeout:
        if alive is not None and not alive():
            raise MedrayError(f"{url}/healthz: the server stopped before it was healthy (last: {last})")
        try:
            r = requests.get(f"{url}/healthz", timeout=5, headers=headers or {})
            if r.status_code == 200:
                return r.json()
            last = r.status_code
        except requests.RequestException as e:
            last = e
        time.sleep(interval)
    raise MedrayError(f"{url}/healthz did not answer within {timeout:.0f}s (last: {last})")
