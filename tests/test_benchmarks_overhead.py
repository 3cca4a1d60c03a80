"""benchmarks/overhead.py `--inside`: its clocks wrap the loop's parts and put them back (no timing asserted)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from overhead import PARTS, WINDOW, PartClocks

from scaletui.engine import loop


def test_the_clocks_wrap_each_part_while_in_use_and_put_it_back() -> None:
    before = loop._send_losses, loop.half_gradients, loop.LayerProbe.after_step
    with PartClocks():
        assert loop._send_losses is not before[0]
        assert loop.half_gradients is not before[1]
        assert loop.LayerProbe.after_step is not before[2]
    assert (loop._send_losses, loop.half_gradients, loop.LayerProbe.after_step) == before


def test_a_wrapped_function_still_returns_and_its_time_is_counted() -> None:
    clocks = PartClocks()
    with clocks:
        assert loop.squared_norms([3.0, 4.0], batch_size=3) == (9.0, 16.0)  # odd batch: two parts
    assert clocks.seconds["squared_norms"] > 0


def test_the_window_part_excludes_what_it_calls_of_the_other_parts() -> None:
    clocks = PartClocks()
    clocks.seconds.update({"_send_losses": 10.0, "LayerProbe.layer_stats": 2.0, "squared_norms": 1.0,
                           "record_noise": 0.5, "LayerProbe.after_step": 3.0, "half_gradients": 4.0})
    parts = clocks.parts()
    assert set(parts) == set(PARTS)
    assert parts[WINDOW] == pytest.approx(6.5)
    assert parts["per-layer probe"] == pytest.approx(5.0)
    assert parts["noise-scale measurement"] == pytest.approx(5.5)
