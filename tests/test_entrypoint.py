"""Sweeps that launch your code (`train.entrypoint` + `[user]`), through the real `scaletui` command.

Bad sweep files are refused at load time (a dry run included) with one line naming the file and the
key, exit 2. A sweep of a tiny pure-Python function runs headless in a subprocess: its rows are runs of
one's own loop (`source` api) with the experiment's own loss (`cost`), a run whose function raises is
`failed` with the exception's first line while the others finish, and a sweep stopped with Ctrl-C
resumes each run after the last step the database holds, logging no step twice.

Nothing here sleeps to wait: each test waits for a line the function prints or a condition of the
database, with a generous deadline.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from scaletui.core.config import build_sweep
from tests.conftest import REPO, run_cli
from tests.waiting import wait_for

FUNCTION = '''
import atexit, json, os, time
from pathlib import Path

_EXIT_NOTED = set()  # pids whose exit this module asked to note

def _note_exit(folder):
    with open(folder / "exits.log", "a") as f:
        f.write(f"{os.getpid()}\\n")

def train(config, run):
    """Logs `cost` = gain / width + 1 / (step + 1); raises for gain 13; parks at step 5 while `park` exists."""
    folder = Path(config["folder"])
    if os.getpid() not in _EXIT_NOTED:  # a researcher's own clean-up at exit, once per process
        _EXIT_NOTED.add(os.getpid())
        atexit.register(_note_exit, folder)
    start = 0 if run.last_step is None else run.last_step + 1
    with open(folder / "steps.log", "a") as f:  # every step this function trained, across processes
        for step in range(start, config["steps"]):
            if run.should_stop:
                return
            if config["gain"] == 13 and step == 3:
                raise ValueError("unlucky gain\\nsecond line")
            run.log({"train_loss": 1.0 / (step + 1), "cost": config["gain"] / config["width"] + 1.0 / (step + 1)},
                    step=step)
            f.write(json.dumps([config["width"], config["seed"], step]) + "\\n")
            f.flush()
            if step == 5 and (folder / "park").exists():
                run.flush()
                (folder / f"parked-{config['width']}-{config['seed']}").touch()  # one marker per parked run
                while not run.should_stop:  # until the sweep is stopped
                    time.sleep(0.01)
                return
    run.summary(params=10 * config["width"])
'''


def sweep_file(folder: Path, *, gains: list[float], train: dict[str, Any] | None = None,
               extra: str = "", workers: int = 1, function: str = FUNCTION) -> Path:
    """An entrypoint sweep over width x seed x gain of `function`, in `folder`."""
    (folder / "train.py").write_text(function, encoding="utf-8")
    train_lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in (train or {}).items())
    text = textwrap.dedent(f'''
        [experiment]
        name = "entry"
        loss = "cost"
        workers = {workers}
        checkpoint_dir = "{folder / 'checkpoints'}"

        [train]
        entrypoint = "train.py:train"
        steps = 12
        seeds = [0, 1]
        {train_lines}

        [model]
        width = [4, 8]

        [user]
        gain = {json.dumps(gains)}
        folder = "{folder}"
        ''') + extra
    path = folder / "experiments.toml"
    path.write_text(text, encoding="utf-8")
    return path


def rows(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=30)) as conn:
        return conn.execute(sql, params).fetchall()


# --------------------------------------------------------------------------- bad files, one line each


BAD = [
    ('entrypoint = "missing.py:train"', "", "train.entrypoint: file not found: "),
    ('entrypoint = "train.py:nope"', "", "train.entrypoint: "),  # ... defines no function 'nope'
    ('entrypoint = "train.py"', "", 'train.entrypoint: must be "train.py:main" or "package.module:main"'),
    ('entrypoint = "no_such_package_xyz.mod:train"', "", "train.entrypoint: cannot find module"),
    ('entrypoint = "json:no_such_function"', "", "train.entrypoint: "),
    ('entrypoint = "train.py:train"', '\n[data]\ndataset = "mnist1d"\n', "data.dataset: does not apply with "
                                                                         "train.entrypoint"),
]


@pytest.mark.parametrize(("line", "extra", "expected"), BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_a_bad_entrypoint_is_one_line_and_exit_2_even_in_a_dry_run(tmp_path: Path, line: str, extra: str,
                                                                    expected: str) -> None:
    path = sweep_file(tmp_path, gains=[1.0], extra=extra)
    path.write_text(path.read_text().replace('entrypoint = "train.py:train"', line))
    done = run_cli("run", "--dry-run", str(path), timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"error: experiments.toml: {expected}")


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("width = [4, 8]", 'width = [4, 8]\narch = "resmlp"', "model.arch: does not apply with train.entrypoint"),
    ("seeds = [0, 1]", "seeds = [0, 1]\nepochs = 2", "train.epochs: does not apply with train.entrypoint"),
    ('loss = "cost"', 'loss = "cost"\nbatch_runs = false', "experiment.batch_runs: does not apply with"),
    ("gain = [", "width = 3\ngain = [", "user.width: is a shared key: set model.width instead"),
    ("gain = [", "when = 2024-01-01\ngain = [", "user.when: must be a number, string, boolean, list or table"),
    ("gain = [", "gains = []\ngain = [", "user.gains: empty list"),
    ("steps = 12\n", "", "train.steps: is required"),
    ('entrypoint = "train.py:train"\n', "", "user: only applies with train.entrypoint"),
])
def test_keys_that_make_no_sense_with_an_entrypoint_are_refused(tmp_path: Path, old: str, new: str,
                                                                 expected: str) -> None:
    path = sweep_file(tmp_path, gains=[1.0])
    assert old in path.read_text()
    path.write_text(path.read_text().replace(old, new, 1))
    done = run_cli("run", "--headless", str(path), "--db", str(tmp_path / "runs.db"), timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"error: experiments.toml: {expected}")
    assert done.stderr.strip().count("\n") == 0
    assert not (tmp_path / "runs.db").exists()  # refused before anything was written


def test_the_loss_keys_need_an_entrypoint(tmp_path: Path) -> None:
    doc = {"experiment": {"name": "b", "loss": "cost"}, "train": {"steps": 5}}
    with pytest.raises(ValueError, match=r"^experiments.toml: experiment.loss: applies with train.entrypoint only"):
        build_sweep(doc, tmp_path / "experiments.toml", check_data=False)


def test_the_function_gets_seed_steps_the_shared_keys_set_and_the_user_keys(tmp_path: Path) -> None:
    sweep = build_sweep({"experiment": {"name": "c", "loss": "cost", "zip": [["model.width", "user.gain"]]},
                         "train": {"entrypoint": "train.py:train", "steps": 5, "lr": [0.1, 0.2]},
                         "model": {"width": [4, 8]}, "user": {"gain": [1.5, 2.5], "plant": {"delay": 3}}},
                        _with_function(tmp_path) / "experiments.toml")
    assert sweep.entry_configs == (
        {"seed": 0, "steps": 5, "lr": 0.1, "width": 4, "gain": 1.5, "plant": {"delay": 3}},
        {"seed": 0, "steps": 5, "lr": 0.2, "width": 4, "gain": 1.5, "plant": {"delay": 3}},
        {"seed": 0, "steps": 5, "lr": 0.1, "width": 8, "gain": 2.5, "plant": {"delay": 3}},
        {"seed": 0, "steps": 5, "lr": 0.2, "width": 8, "gain": 2.5, "plant": {"delay": 3}},
    )
    assert sweep.user_axes == {"user.gain": (1.5, 2.5)} and "user.gain" not in sweep.axes
    assert not sweep.batch_runs and sweep.loss_metric == "cost"


def _with_function(folder: Path) -> Path:
    (folder / "train.py").write_text(FUNCTION, encoding="utf-8")
    return folder


# --------------------------------------------------------------------------- a real sweep


@pytest.mark.slow
def test_a_sweep_calls_the_function_per_run_and_a_raising_run_fails_alone(tmp_path: Path) -> None:
    path = sweep_file(tmp_path, gains=[1.0, 13])
    db = tmp_path / "runs.db"
    done = run_cli("run", "--headless", str(path), "--db", str(db), timeout=240)
    assert done.returncode == 1, done.stdout + done.stderr  # some runs failed: not a clean sweep
    assert "Traceback" not in done.stderr
    runs = rows(db, "SELECT source, status, error, width, seed, step, final_test_loss, params, user_config_json "
                    "FROM runs ORDER BY width, seed, id")
    assert len(runs) == 8
    for source, status, error, width, _seed, step, loss, params, config in runs:
        assert source == "entrypoint"
        gain = json.loads(config)["gain"]
        if gain == 13:
            assert (status, error, step) == ("failed", "ValueError: unlucky gain", 2)
        else:
            assert (status, error, step, params) == ("done", None, 11, 10 * width)
            assert loss == pytest.approx(1.0 / width + 1.0 / 12)  # the experiment's loss is `cost`
    assert rows(db, "SELECT loss_metric, higher_is_better FROM experiments") == [("cost", 0)]
    assert rows(db, "SELECT COUNT(*), COUNT(DISTINCT run_id || ':' || step) FROM metrics WHERE key = 'cost'") == \
        [(4 * 12 + 4 * 3, 4 * 12 + 4 * 3)]
    # The worker ran the function, so it exited as any Python process does: the function's atexit handler ran.
    assert len((tmp_path / "exits.log").read_text().split()) == 1  # one worker
    # Registered queued by the sweep, started once by its worker: no "started / queued again / started".
    for (run_id,) in rows(db, "SELECT id FROM runs"):
        kinds = [k for (k,) in rows(db, "SELECT kind FROM events WHERE run_id = ? ORDER BY id", run_id)]
        assert kinds[:2] == ["queued", "started"] and kinds.count("started") == 1, kinds


@pytest.mark.slow
def test_ctrl_c_then_run_again_resumes_every_run_after_its_last_step(tmp_path: Path) -> None:
    path = sweep_file(tmp_path, gains=[1.0], workers=2)
    (tmp_path / "park").touch()
    db = tmp_path / "runs.db"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "sweep.log"  # a file, not a pipe: nobody reads while the test waits for the markers
    with log.open("w") as out_file:
        proc = subprocess.Popen([sys.executable, "-m", "scaletui", "run", "--headless", str(path), "--db", str(db)],
                                cwd=REPO, env=env, stdout=out_file, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        # Two workers: two runs park at step 5 (wait for both). Marker files, not lines on the shared
        # stdout: two workers printing at once interleave their writes ("parked 8 0parked 16 0\n\n"), and
        # a count of lines then never reaches two.
        wait_for(lambda: proc.poll() is not None or len(list(tmp_path.glob("parked-*"))) == 2, timeout=180,
                 what="two runs parked at step 5")
        assert proc.poll() is None, f"the sweep ended before two runs parked:\n{log.read_text()}"
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole group; workers stop through the flag
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    out = log.read_text()
    assert proc.returncode != 0
    statuses = sorted(s for (s,) in rows(db, "SELECT status FROM runs"))
    assert statuses == ["interrupted", "interrupted", "queued", "queued"], out  # two stopped mid-run
    assert len(_trained(tmp_path)) == 2 * 6
    (tmp_path / "park").unlink()
    done = run_cli("run", "--headless", str(path), "--db", str(db), timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [s for (s,) in rows(db, "SELECT status FROM runs")] == ["done"] * 4
    trained = _trained(tmp_path)
    assert len(trained) == len(set(trained)) == 4 * 12  # every step trained once, none twice
    assert rows(db, "SELECT COUNT(*) FROM metrics WHERE key = 'cost'") == [(4 * 12,)]
    resumed = rows(db, "SELECT message FROM events WHERE kind = 'resumed' AND message = 'after step 5'")
    assert len(resumed) == 2


def _trained(folder: Path) -> list[tuple[int, int, int]]:
    """(width, seed, step) of every step the function trained, in every process."""
    return [tuple(json.loads(line)) for line in (folder / "steps.log").read_text().splitlines()]


def test_a_sweep_that_restates_an_experiments_loss_differently_is_refused(tmp_path: Path) -> None:
    import scaletui

    db = tmp_path / "runs.db"
    with scaletui.init(db=db, experiment="entry", config={"width": 1}, loss="reward", higher_is_better=True) as run:
        run.log({"reward": 1.0})
    done = run_cli("run", "--headless", str(sweep_file(tmp_path, gains=[1.0])), "--db", str(db), timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip().count("\n") == 0
    assert done.stderr.startswith("error: experiments.toml: experiment.loss: experiment 'entry' in ")
    assert "final reward (higher is better); this file says final cost (lower is better)" in done.stderr
    assert rows(db, "SELECT COUNT(*) FROM runs") == [(1,)]  # nothing of the sweep was registered


@pytest.mark.slow
def test_finished_runs_are_skipped_and_fresh_starts_every_run_over(tmp_path: Path) -> None:
    path, db = sweep_file(tmp_path, gains=[1.0]), tmp_path / "runs.db"
    plan = run_cli("run", "--dry-run", str(path), "--db", str(db), timeout=60)
    planned = {line.split()[1] for line in plan.stdout.splitlines() if line.split()[:1] in (["1"], ["2"], ["3"], ["4"])}
    first = run_cli("run", "--headless", str(path), "--db", str(db), timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    # The summary names the experiment's own loss and has a mean per size, from the runs' own columns.
    assert "entry: loss = final cost" in first.stdout and "test loss" not in first.stdout
    means = first.stdout.split("mean +- sd over seeds of the final cost, per size:")[1].splitlines()
    assert [line.split()[:3] for line in means if line.split()[:1] in (["4"], ["8"])] == [["4", "-", "2"],
                                                                                       ["8", "-", "2"]]
    assert planned == {key for (key,) in rows(db, "SELECT key FROM runs")}  # the dry run names the real rows
    ids = rows(db, "SELECT id FROM runs ORDER BY id")
    again = run_cli("run", "--headless", str(path), "--db", str(db), timeout=120)
    assert again.returncode == 0 and "training 0 of 4 runs (4 finished earlier)" in again.stdout
    fresh = run_cli("run", "--headless", str(path), "--db", str(db), "--fresh", timeout=120)
    assert fresh.returncode == 0 and "training 4 of 4 runs" in fresh.stdout
    assert rows(db, "SELECT id FROM runs ORDER BY id") == ids  # the same rows, started over
    assert rows(db, "SELECT COUNT(*) FROM metrics WHERE key = 'cost'") == [(4 * 12,)]
    assert rows(db, "SELECT COUNT(*) FROM events WHERE kind = 'done'") == [(4,)]  # the first sweep's are gone
    assert len(_trained(tmp_path)) == 2 * 4 * 12


def test_the_control_example_is_an_entrypoint_sweep_over_width_and_depth() -> None:
    from scaletui.core.config import load_sweep

    sweep = load_sweep(REPO / "examples" / "own_loop" / "control" / "experiments.toml")
    assert sweep.entrypoint is not None and sweep.entrypoint.target == "control.py:train"
    assert set(sweep.axes) == {"model.width", "model.depth", "train.seeds"} and sweep.loss_metric == "cost"
    assert {c["width"] for c in sweep.entry_configs} == {2, 4, 8, 16, 32}


BLOWS_UP = '''
def train(config, run):
    for step in range(config["steps"]):
        value = 1.0 / (step + 1) if step < 8 else float("nan")
        run.log({"train_loss": value, "cost": value}, step=step)
'''


@pytest.mark.slow
def test_a_run_that_blows_up_is_diverged_with_the_same_alert_a_built_in_run_gets(tmp_path: Path) -> None:
    path, db = sweep_file(tmp_path, gains=[1.0], function=BLOWS_UP), tmp_path / "runs.db"
    done = run_cli("run", "--headless", str(path), "--db", str(db), timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert [s for (s,) in rows(db, "SELECT status FROM runs")] == ["diverged"] * 4
    alerts = rows(db, "SELECT DISTINCT run_id FROM alerts WHERE kind = 'divergence' AND active = 1")
    assert len(alerts) == 4


@pytest.mark.slow
def test_the_group_checks_see_an_entrypoint_sweeps_runs(tmp_path: Path) -> None:
    """A wider net that does worse (cost grows with width here) raises the same non-monotonic alert a
    built-in sweep gets: the monitor groups the sweep's own-loop rows by their specs."""
    worse_when_wider = FUNCTION.replace('config["gain"] / config["width"]', 'config["gain"] * config["width"]')
    path = sweep_file(tmp_path, gains=[1.0], function=worse_when_wider)
    db = tmp_path / "runs.db"
    done = run_cli("run", "--headless", str(path), "--db", str(db), timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    alerts = rows(db, "SELECT kind, message FROM alerts")
    assert [kind for kind, _ in alerts] == ["non_monotonic"], alerts
    assert "width 8" in alerts[0][1] and "width 4" in alerts[0][1]
