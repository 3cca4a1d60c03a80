"""Fault injection for the fault tests: a test seam that lives in tests/, not in scaletui.

Python imports `sitecustomize` at start-up in every interpreter, including the
spawn-started worker processes, so putting this folder first on PYTHONPATH
reaches the runner and every worker without a line of test code in scaletui.
It does nothing unless SCALETUI_FAULT is set. Faults, `;`-separated:

- `hold_checkpoint:STEP`   in the middle of writing the checkpoint of STEP (the
  temporary file is written but neither fsynced nor renamed), touch a marker
  file and wait to be killed;
- `hold_flush:STEP`        inside the database transaction that writes a train
  loss of STEP or later (rows inserted, COMMIT not yet issued), touch a marker
  and wait to be killed;
- `hold_step:STEP[:WIDTH:DEPTH]`  every run (of that width and depth, when given), in the forward pass
  of its training step STEP, touches a marker and waits until its worker is told to stop (the
  runner's flag or a signal), so a signal sent once every run is parked finds each of them
  mid-run, whatever the machine's speed;
- `pause_step:STEP`        every run, in the forward pass of its training step STEP (after what it
  flushed at its last checkpoint is in the database), touches a marker and waits until the test
  creates the file `release`; the run then goes on, so a test can look at a sweep mid-run;
- `hold_schema`            while a new database's schema is being created (inside its first
  migration), touch a marker and wait until the test creates the file `release` beside it;
- `raise:EXC:WIDTH:DEPTH:STEP`  the model of width WIDTH and depth DEPTH raises
  EXC (RuntimeError or MemoryError) in the forward pass of training step STEP.

Markers are files named `<fault>-<pid>` in SCALETUI_FAULT_MARKS, so a test
knows which process is parked where before it sends SIGKILL.

A fault patches scaletui's modules only when a process imports them (`_when_imported`): the runner
and multiprocessing's resource tracker, which never import the engine, must not import torch for it
(~3 s of CPU per interpreter on 2 cores, which made every faulted sweep slower than a plain one).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import Any


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Runs `patch(module)` right after module `name` is first executed, before its importer sees it."""

    def __init__(self, name: str, patch: Callable[[ModuleType], None]) -> None:
        self.name, self.patch = name, patch

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
                  ) -> ModuleSpec | None:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # once; and the lookup below must not find this finder again
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        loader, patch = spec.loader, self.patch
        real_exec = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            real_exec(module)
            patch(module)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _when_imported(name: str, patch: Callable[[ModuleType], None]) -> None:
    """Patch module `name` now if this process has imported it, else as soon as it does."""
    if name in sys.modules:
        patch(sys.modules[name])
    else:
        sys.meta_path.insert(0, _PatchOnImport(name, patch))


def _park(what: str) -> None:
    """Say where this process is, then wait for the SIGKILL the test is about to send."""
    marks = Path(os.environ["SCALETUI_FAULT_MARKS"])
    marks.mkdir(parents=True, exist_ok=True)
    (marks / f"{what}-{os.getpid()}").write_text(what)
    while True:
        time.sleep(3600)


def _hold_checkpoint(step: int) -> None:
    name = re.compile(rf"^\.step_{step:08d}\.pt\..*\.tmp$")
    real_fsync = os.fsync

    def fsync(fd: Any) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}") if isinstance(fd, int) else ""
        if name.match(os.path.basename(target)):
            _park("checkpoint")
        real_fsync(fd)

    os.fsync = fsync


def _hold_flush(step: int) -> None:
    def patch(writer: Any) -> None:
        real_body = writer.StoreSink._flush_body

        def flush_body(self: Any, db: Any) -> None:
            real_body(self, db)
            if any(key == "train_loss" and row_step >= step for _, row_step, key, _ in self._metrics):
                _park("flush")

        writer.StoreSink._flush_body = flush_body

    _when_imported("scaletui.store.writer", patch)


def _pause(what: str) -> None:
    """Say where this process is, then wait (not die) until the test writes the `release` file."""
    marks = Path(os.environ["SCALETUI_FAULT_MARKS"])
    marks.mkdir(parents=True, exist_ok=True)
    (marks / f"{what}-{os.getpid()}").write_text(what)
    while not (marks / "release").exists():
        time.sleep(0.02)


def _hold_schema() -> None:
    def patch(schema: Any) -> None:
        first = schema.MIGRATIONS[0]

        def held_first_migration(db: Any) -> None:
            _pause("schema")
            first(db)

        schema.MIGRATIONS[0] = held_first_migration  # _migrate reads the list when it runs

    _when_imported("scaletui.store.schema", patch)


def _hold_step(step: int, shape: tuple[int, int] | None = None) -> None:
    stops: list[Any] = []  # the worker's stop signal, caught as the worker makes it

    def patch(runner: Any) -> None:
        real_init = runner._WorkerStop.__init__

        def init(self: Any, *args: Any, **kwargs: Any) -> None:
            real_init(self, *args, **kwargs)
            stops.append(self)

        runner._WorkerStop.__init__ = init

    _when_imported("scaletui.services.runner", patch)
    _at_training_step(step, lambda: _wait_for_stop(stops), shape)


def _pause_step(step: int) -> None:
    _at_training_step(step, lambda: _pause("pause"))


def _at_training_step(step: int, action: Callable[[], None], shape: tuple[int, int] | None = None) -> None:
    """Run `action` in the forward pass of training step `step` of every model built (only of width x depth
    `shape` when given)."""
    def patch(models: Any) -> None:
        real_build = models.build_model

        def build_model(spec: Any, *args: Any, **kwargs: Any) -> Any:
            model = real_build(spec, *args, **kwargs)
            if shape is None or (spec.width, spec.depth) == shape:
                calls = [0]

                def forward_pre_hook(module: Any, inputs: Any) -> None:
                    calls[0] += module.training  # evaluation runs in eval mode and does not count
                    if module.training and calls[0] == step:
                        action()

                model.register_forward_pre_hook(forward_pre_hook)
            return model

        models.build_model = build_model  # patched as models is imported: the loop imports it by name after

    _when_imported("scaletui.engine.models", patch)


def _wait_for_stop(stops: list[Any]) -> None:
    """Say where this process is, then wait until its worker is told to stop; the run then goes on."""
    marks = Path(os.environ["SCALETUI_FAULT_MARKS"])
    marks.mkdir(parents=True, exist_ok=True)
    (marks / f"step-{os.getpid()}").write_text("step")
    while not any(stop.is_set() for stop in stops):
        time.sleep(0.02)


def _raise_in_step(exc: str, width: int, depth: int, step: int) -> None:
    error = {"RuntimeError": RuntimeError, "MemoryError": MemoryError}[exc]

    def fail() -> None:
        raise error(f"injected fault in training step {step}")

    _at_training_step(step, fail, (width, depth))


def _install(spec: str) -> None:
    kind, *args = spec.split(":")
    if kind == "hold_checkpoint":
        _hold_checkpoint(int(args[0]))
    elif kind == "hold_flush":
        _hold_flush(int(args[0]))
    elif kind == "hold_step":
        _hold_step(int(args[0]), (int(args[1]), int(args[2])) if len(args) == 3 else None)
    elif kind == "pause_step":
        _pause_step(int(args[0]))
    elif kind == "hold_schema":
        _hold_schema()
    elif kind == "raise":
        _raise_in_step(args[0], int(args[1]), int(args[2]), int(args[3]))
    else:
        raise ValueError(f"SCALETUI_FAULT: unknown fault {spec!r}")


for _spec in filter(None, os.environ.get("SCALETUI_FAULT", "").split(";")):
    _install(_spec)
