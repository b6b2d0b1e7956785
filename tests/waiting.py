"""Polling for the Kubernetes suites (tests/e2e, tests/cluster): what a
controller does happens some time after the request that asked for it."""

import time
from typing import Callable

import pytest


def wait_until(check, timeout: float, what, interval: float = 0.25, diagnose: Callable[[], str] | None = None):
    """Calls check() until it returns something truthy and returns that; fails with `what` (a string or a
    callable) after timeout, followed by what diagnose() reports (the cluster's state, logs)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            report = f"\n{diagnose()}" if diagnose else ""
            pytest.fail(f"timed out after {timeout} s waiting for {what() if callable(what) else what}{report}")
        time.sleep(interval)
