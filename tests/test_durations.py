"""tests/durations.py reads pytest's `--durations=0` report into seconds per file."""

from __future__ import annotations

from tests.durations import per_file

REPORT = """============================= slowest durations ==============================
12.50s call     tests/faults/test_kill.py::test_one[seed]
0.75s setup    tests/faults/test_kill.py::test_one[seed]
0.40s call     tests/test_tiny.py::test_fast
3.00s teardown tests/tui/test_app_pilot.py::test_keys
(12 durations < 0.005s hidden.)
"""


def test_seconds_are_summed_per_file_and_files_under_a_second_are_left_out() -> None:
    assert per_file(REPORT) == {"tests/faults/test_kill.py": 13.2, "tests/tui/test_app_pilot.py": 3.0}
