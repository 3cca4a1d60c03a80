"""Waiting on conditions, the one way tests wait: poll until something holds, fail after a deadline.

Tests never sleep a fixed time and hope: they wait for the event they need (a row in the database, a
marker file, a cell drawn) and give up only at a deadline generous enough for a loaded shared machine
(the suite passes with three CPU-bound processes beside it). A condition that holds costs no waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

DEFAULT_TIMEOUT_S = 60.0  # a deadline, not an expected time: reached only when something is wrong


def wait_for(condition: Callable[[], Any], timeout: float = DEFAULT_TIMEOUT_S, what: str = "condition",
             interval: float = 0.05) -> Any:
    """Call `condition` every `interval` seconds until it returns something truthy, and return that;
    fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:g} s waiting for {what}")


async def until(pilot: Any, condition: Callable[[], bool], timeout: float = DEFAULT_TIMEOUT_S) -> None:
    """In a Textual `run_test()`: let the app run (its poller works in its own thread) until
    `condition()` holds; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout:g} s")
        await pilot.pause(0.05)
