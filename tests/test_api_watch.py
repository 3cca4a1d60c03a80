"""`run.watch(model)`: per-layer statistics from one's own loop, measured with the engine's fused probe
around the model's optimizer steps, moved to the host once per logging step, never `.item()` per tensor;
and accelerator tensors logged by the loop travel the same way, batched."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import scaletui  # noqa: E402
from scaletui.services import own_run  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:scaletui. run .* never logged")


def rows(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql, params).fetchall()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "watch.db"


@pytest.fixture
def host_transfers(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts `Tensor.tolist()` calls (each is one host transfer); `Tensor.item()` fails the test."""
    calls: list[int] = []
    tolist = torch.Tensor.tolist

    def counted(self: Any) -> Any:
        calls.append(self.numel())
        return tolist(self)

    def forbidden(self: Any) -> Any:
        raise AssertionError(".item() called on a tensor")

    monkeypatch.setattr(torch.Tensor, "tolist", counted)
    monkeypatch.setattr(torch.Tensor, "item", forbidden)
    yield calls


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1))


def train(model: nn.Module, run: Any, steps: int, optimizer: Any = None, log: Callable[[int, Any], dict[str, Any]]
          | None = None) -> None:
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(64, 6), torch.randn(64, 1)
    for step in range(steps):
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        run.log(log(step, loss) if log else {"train_loss": loss}, step=step)


def test_watch_records_every_layer_every_n_optimizer_steps_with_one_transfer_each(
        db: Path, host_transfers: list[int]) -> None:
    model = mlp()
    with scaletui.init(db=db, experiment="w", config={"width": 16}, loss="train_loss") as run:
        run.watch(model, every=5)
        train(model, run, 20)
    stats = rows(db, "SELECT step, layer, name, grad_norm, weight_norm, update_ratio, nonfinite FROM layer_stats"
                     " ORDER BY step, layer")
    assert [(s, layer, name) for s, layer, name, *_ in stats] == [
        (s, layer, name) for s in (0, 5, 10, 15) for layer, name in enumerate(["0", "2", "4"])]
    assert all(g > 0 and w > 0 and u > 0 and n == 0 for *_, g, w, u, n in stats)
    assert len(host_transfers) == 4  # one per measured step: 3 layers x 2 tensors x 3 norms, together
    assert set(host_transfers) == {18}
    assert rows(db, "SELECT count(*) FROM metrics") == [(20,)]


def test_the_update_norm_is_the_optimizers_step(db: Path) -> None:
    """Plain SGD moves W by -lr * grad: ||dW|| / ||W|| = lr * ||grad|| / ||W||, layer by layer."""
    model = mlp()
    with scaletui.init(db=db, experiment="w", config={"width": 16}) as run:
        run.watch(model, every=1)
        train(model, run, 3, optimizer=torch.optim.SGD(model.parameters(), lr=0.05))
    for grad, weight, ratio in rows(db, "SELECT grad_norm, weight_norm, update_ratio FROM layer_stats"):
        assert ratio == pytest.approx(0.05 * grad / weight, rel=1e-4)


def test_only_the_models_optimizer_counts_and_any_layer_with_a_weight_matrix_is_watched(db: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 8), nn.Flatten(), nn.LayerNorm(24), nn.Linear(24, 1))
    other = nn.Linear(3, 3)
    other_optimizer = torch.optim.SGD(other.parameters(), lr=0.1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.randint(0, 10, (16, 3))
    with scaletui.init(db=db, experiment="w", config={"width": 8}) as run:
        run.watch(model, every=2)
        for step in range(4):
            other(torch.randn(2, 3)).sum().backward()
            other_optimizer.step()  # not the model's: neither measured nor counted
            loss = model(x).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            run.log({"train_loss": loss}, step=step)
    assert rows(db, "SELECT DISTINCT step, layer, name FROM layer_stats ORDER BY step, layer") == [
        (0, 0, "0"), (0, 1, "3"), (2, 0, "0"), (2, 1, "3")]  # the embedding has no bias; LayerNorm is not a layer


@pytest.mark.parametrize("model, every, error, message", [
    ("not a model", 25, TypeError, "expected a torch.nn.Module"),
    (nn.ReLU(), 25, ValueError, "no layer with a trainable weight"),
    (nn.Linear(2, 2), 0, scaletui.InvalidMetric, "every=0"),
])
def test_watch_refuses_what_it_cannot_watch(db: Path, model: Any, every: int, error: type[Exception],
                                            message: str) -> None:
    with scaletui.init(db=db, experiment="w", config={}) as run, pytest.raises(error, match=message):
        run.watch(model, every=every)


def test_unwatch_removes_the_optimizer_hooks(db: Path) -> None:
    model = mlp()
    with scaletui.init(db=db, experiment="w", config={}) as run:
        run.watch(model, every=1)
        run.unwatch()
        train(model, run, 3)
    assert rows(db, "SELECT count(*) FROM layer_stats") == [(0,)]


def test_accelerator_tensors_are_batched_to_the_host(db: Path, host_transfers: list[int],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """On an accelerator a logged tensor is kept and sent with the others; here CPU tensors are made to
    take that path (a CPU tensor is normally read at once: there is no sync to save)."""
    monkeypatch.setattr(own_run, "_tensor", lambda key, value: value.detach())
    model = mlp()
    with scaletui.init(db=db, experiment="w", config={}, loss="train_loss") as run:
        run.watch(model, every=10)
        train(model, run, 60, log=lambda step, loss: {"train_loss": loss, "double": 2 * loss.detach()})
    # a transfer at every watched step (0, 10, ..., 50) carries the tensors logged since; one more at the end
    assert len(host_transfers) == 7
    stored = dict(((s, k), v) for s, k, v in rows(db, "SELECT step, key, value FROM metrics"))
    assert len(stored) == 120 and all(stored[(s, "double")] == pytest.approx(2 * stored[(s, "train_loss")])
                                      for s in range(60))


def test_host_values_keeps_order_across_dtypes() -> None:
    values = own_run._host_values([torch.tensor(1.5), torch.tensor([2], dtype=torch.int64),
                                   torch.tensor(0.25, dtype=torch.bfloat16), torch.tensor(math.inf)])
    assert values == [1.5, 2.0, 0.25, math.inf]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_tensors_and_norms_travel_together_once_per_logging_step(
        db: Path, host_transfers: list[int]) -> None:
    model = mlp().cuda()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(64, 6, device="cuda"), torch.randn(64, 1, device="cuda")
    with scaletui.init(db=db, experiment="w", config={}, loss="train_loss") as run:
        run.watch(model)  # every 25
        for step in range(100):
            loss = nn.functional.mse_loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            run.log({"train_loss": loss}, step=step)
    assert len(host_transfers) == 5  # steps 0, 25, 50, 75 (with the losses since), and the rest at the end
    assert rows(db, "SELECT count(*) FROM metrics") == [(100,)]
    assert rows(db, "SELECT count(DISTINCT step) FROM layer_stats") == [(4,)]


def test_init_and_log_without_watch_never_import_torch(tmp_path: Path) -> None:
    code = (f"import scaletui, sys\nwith scaletui.init(db={str(tmp_path / 'x.db')!r}, experiment='e', config={{}},"
            " loss='x') as run:\n    run.log({'x': 1.0}, step=0)\n"
            "print(__import__('json').dumps(sorted(m.split('.')[0] for m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert not loaded & {"torch", "textual", "scipy"}, sorted(loaded & {"torch", "textual", "scipy"})


def test_unwatched_steps_run_no_pre_step_hook(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between measurements the watch only counts steps (one post-step hook): the hook that snapshots the
    weights is installed for the watched steps alone, so an unwatched step never calls it."""
    calls: list[int] = []
    before = own_run._Watch._before

    def counted(self: Any, optimizer: Any, args: Any, kwargs: Any) -> None:
        calls.append(self._count)
        before(self, optimizer, args, kwargs)

    monkeypatch.setattr(own_run._Watch, "_before", counted)
    model = mlp()
    with scaletui.init(db=db, experiment="w", config={}, loss="train_loss") as run:
        run.watch(model, every=25)
        train(model, run, 60)
    assert calls == [0, 25, 50]
    assert rows(db, "SELECT DISTINCT step FROM layer_stats ORDER BY step") == [(0,), (25,), (50,)]

