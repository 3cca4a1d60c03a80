"""`scaletui export`: every table round-trips through CSV (read back with csv) and Parquet (read back with
pyarrow) with the same row counts and values, NaN and infinities included; bad input is one line."""

from __future__ import annotations

import csv
import math
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

import scaletui
from scaletui.core.records import LayerStats
from scaletui.core.vocabulary import ExportFormat, ExportWhat
from scaletui.services import export as export_service
from scaletui.store import StoreSink
from scaletui.store.reader import Reader
from tests.conftest import run_cli
from tests.fitdb import fill, plan

pq = pytest.importorskip("pyarrow.parquet")

pytestmark = pytest.mark.filterwarnings("ignore:scaletui. run .* never logged")


def sql(db: Path, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute(query, params).fetchall()


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two experiments: a sweep with a stored fit and per-layer stats, and an own loop with NaN and Inf."""
    path = tmp_path_factory.mktemp("export") / "runs.db"
    fill(path, plan(widths=(8, 16, 32), seeds=(0,)))
    out = run_cli("fit", "--db", str(path), "--experiment", "law", "--bootstrap", "20")
    assert out.returncode == 0, out.stderr
    run_id = sql(path, "SELECT min(id) FROM runs")[0][0]
    with StoreSink(path, run_id) as sink:
        sink.layer_stats([LayerStats(step, layer, f"fc{layer}", g, 1.0, 0.01, 0)
                          for step, g in ((10, 0.5), (20, math.nan)) for layer in (0, 1)])
    with scaletui.init(db=path, experiment="own", config={"width": 4, "note": "a,b \"quoted\""}, loss="cost") as run:
        for step, value in enumerate([1.0, math.nan, math.inf, -math.inf, 0.5]):
            run.log({"cost": value, "other": float(step)}, step=step)
    return path


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="", encoding="utf-8") as f:
        table = list(csv.reader(f))
    return table[0], table[1:]


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return bool(a == b)


def stored(db: Path, what: ExportWhat, experiment: str | None = None) -> tuple[list[str], list[tuple[Any, ...]]]:
    """What the export should hold, through the reader's own queries (NULL-is-NaN columns as NaN)."""
    with Reader(db) as reader:
        columns = reader.export_columns(what)
        rows = [row for chunk in reader.export_rows(what, experiment) for row in chunk]
    nan_at = [i for i, c in enumerate(columns) if c.null_is_nan]
    fixed = [tuple(math.nan if i in nan_at and v is None else v for i, v in enumerate(row)) for row in rows]
    return [c.name for c in columns], fixed


def parse(text: str, sql_type: str) -> Any:
    if text == "":
        return None
    return {"INTEGER": int, "REAL": float}.get(sql_type, str)(text)


@pytest.mark.parametrize("what", [w for w in ExportWhat if w is not ExportWhat.PREDICTIONS])
def test_csv_round_trips_every_table(db: Path, tmp_path: Path, what: ExportWhat) -> None:
    out = tmp_path / f"{what}.csv"
    result = run_cli("export", "--db", str(db), "--what", what.value, str(out))
    assert result.returncode == 0, result.stderr
    names, expected = stored(db, what)
    header, body = read_csv(out)
    assert header == names and len(body) == len(expected) > 0
    with Reader(db) as reader:
        types = [c.sql_type for c in reader.export_columns(what)]
    for got, want in zip(body, expected, strict=True):
        assert all(same(parse(g, t), w) for g, t, w in zip(got, types, want, strict=True)), (got, want)
    assert f"wrote {len(expected):,} {what.value} rows" in result.stdout


@pytest.mark.parametrize("what", [w for w in ExportWhat if w is not ExportWhat.PREDICTIONS])
def test_parquet_round_trips_every_table(db: Path, tmp_path: Path, what: ExportWhat) -> None:
    out = tmp_path / f"{what}.parquet"
    result = run_cli("export", "--db", str(db), "--what", what.value, str(out))  # the suffix picks Parquet
    assert result.returncode == 0, result.stderr
    names, expected = stored(db, what)
    table = pq.read_table(out)
    assert table.column_names == names and table.num_rows == len(expected) > 0
    for got, want in zip(table.to_pylist(), expected, strict=True):
        assert all(same(got[n], w) for n, w in zip(names, want, strict=True)), (got, want)


def test_metrics_keep_nan_and_infinities_and_runs_their_loss(db: Path, tmp_path: Path) -> None:
    csv_out, parquet_out = tmp_path / "m.csv", tmp_path / "m.data"
    for out, fmt in ((csv_out, "csv"), (parquet_out, "parquet")):
        result = run_cli("export", "--db", str(db), "--experiment", "own", "--what", "metrics", "--format", fmt,
                         str(out))
        assert result.returncode == 0, result.stderr
    _, body = read_csv(csv_out)
    assert [(r[2], r[3], r[4]) for r in body if r[3] == "cost"] == [
        ("0", "cost", "1.0"), ("1", "cost", "nan"), ("2", "cost", "inf"), ("3", "cost", "-inf"), ("4", "cost", "0.5")]
    values = [r["value"] for r in pq.read_table(parquet_out).to_pylist() if r["key"] == "cost"]
    assert values[0] == 1.0 and math.isnan(values[1]) and values[2:] == [math.inf, -math.inf, 0.5]
    runs = tmp_path / "runs.csv"
    assert run_cli("export", "--db", str(db), "--experiment", "own", str(runs)).returncode == 0
    header, body = read_csv(runs)
    (row,) = body
    record = dict(zip(header, row, strict=True))
    assert (record["experiment"], record["loss_metric"], record["loss"], record["source"]) == ("own", "cost", "0.5",
                                                                                               "api")
    assert record["user_config_json"] == '{"note": "a,b \\"quoted\\"", "width": 4}'


def test_the_experiment_filter_keeps_one_experiments_rows(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "law.parquet"
    assert run_cli("export", "--db", str(db), "--experiment", "law", "--what", "metrics", str(out)).returncode == 0
    table = pq.read_table(out)
    assert set(table.column("experiment").to_pylist()) == {"law"}
    assert table.num_rows == sql(db, "SELECT count(*) FROM metrics m JOIN runs r ON r.id = m.run_id"
                                     " JOIN experiments e ON e.id = r.experiment_id WHERE e.name = 'law'")[0][0]


@pytest.mark.parametrize("args, message", [
    (["--experiment", "nope"], "no experiment 'nope' (have: law, own)"),
    (["--format", "xlsx"], "Invalid value for '--format'"),
])
def test_bad_input_is_one_line_and_writes_nothing(db: Path, tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "out.csv"
    result = run_cli("export", "--db", str(db), *args, str(out))
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr and list(tmp_path.iterdir()) == []


def test_out_must_be_a_file_in_an_existing_folder(db: Path, tmp_path: Path) -> None:
    for out, message in ((tmp_path / "missing" / "x.csv", "does not exist"), (tmp_path, "is a folder")):
        result = run_cli("export", "--db", str(db), str(out))
        assert result.returncode == 2 and message in result.stderr


def test_the_predictions_ledger_is_exported(tmp_path: Path) -> None:
    from scaletui.services.predictions import record_prediction

    path = fill(tmp_path / "p.db", plan(widths=(8, 16, 32, 64), seeds=(0,)))
    recorded = record_prediction(path, "law", 128, 1, params=100 * 128 * 128, n_bootstrap=50)
    result = export_service.export(path, tmp_path / "p.parquet", ExportWhat.PREDICTIONS, ExportFormat.PARQUET)
    assert result.rows == 1
    [row] = pq.read_table(tmp_path / "p.parquet").to_pylist()
    assert (row["experiment"], row["width"], row["depth"], row["status"]) == ("law", 128, 1, "open")
    assert row["predicted"] == pytest.approx(recorded.predicted)


def test_a_failed_export_leaves_out_as_it_was(db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "metrics.csv"
    out.write_text("the previous export\n", encoding="utf-8")

    def broken(self: Reader, what: ExportWhat, experiment: str | None = None,
               chunk_rows: int = 1) -> Iterator[list[tuple[Any, ...]]]:
        yield [("x",) * 5]
        raise OSError("the disk went away")

    monkeypatch.setattr(Reader, "export_rows", broken)
    with pytest.raises(OSError, match="went away"):
        export_service.export(db, out, ExportWhat.METRICS, ExportFormat.CSV)
    assert out.read_text(encoding="utf-8") == "the previous export\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]


def test_parquet_without_pyarrow_says_how_to_get_it(db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(export_service.ExportError, match=r"pip install 'scaletui\[parquet\]'"):
        export_service.export(db, tmp_path / "x.parquet", ExportWhat.RUNS, ExportFormat.PARQUET)
    assert list(tmp_path.iterdir()) == []
