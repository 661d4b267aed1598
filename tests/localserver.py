"""Helpers for tests that start their own Prefect server (with its UI, or on PostgreSQL)."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from typing import Any

import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(base: str, path: str, body: dict | None = None) -> Any:
    """GET (no body) or POST (JSON body) one Prefect REST path; the decoded JSON reply."""
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)


def wait_healthy(base: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    """Wait until the server answers /health; fail the test if it exits or takes too long."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            api(base, "/health")
            return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail(f"the Prefect server at {base} did not start in {timeout:.0f} s")
            time.sleep(1)
