"""`scaletui export`: a database's runs, metrics, layer statistics, fits or predictions as CSV or Parquet.

Why these choices:

* One row per stored row, every column, nothing pivoted: an export is the table as the database holds
  it (plus the experiment's name, and for runs the experiment's loss rule and "the loss"), so it
  round-trips and a new column added by a migration is exported without a change here.
* Faithful numbers. Where NULL means a NaN was recorded (`metrics.value`, the float columns of
  `layer_stats`, see `store.codec`) the export writes NaN; infinities stay infinities; other NULLs stay
  missing (an empty CSV field, a Parquet null). CSV floats are written with Python's shortest
  round-tripping repr (`nan`, `inf`), so reading them back with `float()` gives the same numbers.
* Parquet through pyarrow, with a schema from the columns' declared types (INTEGER -> int64, REAL ->
  float64, TEXT -> string), written chunk by chunk, so a large metrics table never sits in memory.
* Nothing half-written: the file is written under a temporary name beside OUT and renamed onto it at
  the end; a failure leaves OUT as it was.
"""

from __future__ import annotations

import csv
import math
import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scaletui.core.rows import ExportColumn
from scaletui.core.vocabulary import ExportFormat, ExportWhat
from scaletui.store.reader import Reader

PARQUET_SUFFIXES = (".parquet", ".pq")


class ExportError(ValueError):
    """Bad input to an export (experiment, OUT, a table the database does not have); one line."""


@dataclass(frozen=True)
class ExportResult:
    """What was written."""

    path: Path
    what: ExportWhat
    format: ExportFormat
    rows: int
    columns: int


def format_for(out: Path, given: str | None) -> ExportFormat:
    """The format asked for, else Parquet for a `.parquet`/`.pq` OUT, else CSV."""
    if given is not None:
        return ExportFormat(given)
    return ExportFormat.PARQUET if out.suffix.lower() in PARQUET_SUFFIXES else ExportFormat.CSV


def export(db: Path, out: Path, what: ExportWhat | str, fmt: ExportFormat | str,
           experiment: str | None = None) -> ExportResult:
    """Write one export of `db` to `out` (see the module docstring); ExportError for bad input."""
    what, fmt = ExportWhat(what), ExportFormat(fmt)
    _check_out(out)
    write = _write_csv if fmt is ExportFormat.CSV else _parquet_writer(out)
    with Reader(db) as reader:
        _check_source(reader, db, what, experiment)
        columns = reader.export_columns(what)
        rows = _atomic(out, lambda tmp: write(tmp, columns, _faithful(columns, reader.export_rows(what, experiment))))
    return ExportResult(out, what, fmt, rows, len(columns))


def _check_out(out: Path) -> None:
    if out.is_dir():
        raise ExportError(f"{out}: is a folder; OUT is the file to write")
    if not out.parent.is_dir():
        raise ExportError(f"{out}: the folder {out.parent} does not exist")


def _check_source(reader: Reader, db: Path, what: ExportWhat, experiment: str | None) -> None:
    if experiment is not None:
        names = [e.name for e in reader.experiments()]
        if experiment not in names:
            raise ExportError(f"{db}: no experiment {experiment!r} (have: {', '.join(names) or 'none'})")


def _atomic(out: Path, write: Callable[[Path], int]) -> int:
    """Write through a temporary file beside `out`, renamed onto it only when complete."""
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.partial")
    try:
        rows = write(tmp)
        os.replace(tmp, out)
        return rows
    finally:
        tmp.unlink(missing_ok=True)


Chunk = list[tuple[Any, ...]]


def _faithful(columns: Sequence[ExportColumn], chunks: Iterable[Chunk]) -> Iterator[Chunk]:
    """NULL -> NaN in the columns where NULL means a NaN was recorded."""
    nan_at = [i for i, c in enumerate(columns) if c.null_is_nan]
    for chunk in chunks:
        if not nan_at:
            yield chunk
            continue
        fixed = []
        for row in chunk:
            values = list(row)
            for i in nan_at:
                if values[i] is None:
                    values[i] = math.nan
            fixed.append(tuple(values))
        yield fixed


# --------------------------------------------------------------------------- CSV


def _write_csv(path: Path, columns: Sequence[ExportColumn], chunks: Iterable[list[tuple[Any, ...]]]) -> int:
    rows = 0
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([c.name for c in columns])
        for chunk in chunks:
            writer.writerows(["" if v is None else repr(v) if isinstance(v, float) else v for v in row]
                             for row in chunk)
            rows += len(chunk)
    return rows


# --------------------------------------------------------------------------- Parquet


Writer = Callable[[Path, Sequence[ExportColumn], Iterable[list[tuple[Any, ...]]]], int]


def _parquet_writer(out: Path) -> Writer:
    """The Parquet writer, or ExportError when pyarrow is not installed (checked before reading anything)."""
    try:
        import pyarrow  # noqa: F401
    except ImportError as exc:
        raise ExportError(f"{out}: Parquet export needs pyarrow: pip install 'scaletui[parquet]'") from exc
    return _write_parquet


def _arrow_type(column: ExportColumn) -> Any:
    import pyarrow as pa

    return {"INTEGER": pa.int64(), "REAL": pa.float64()}.get(column.sql_type, pa.string())


def _write_parquet(path: Path, columns: Sequence[ExportColumn], chunks: Iterable[list[tuple[Any, ...]]]) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([pa.field(c.name, _arrow_type(c)) for c in columns])
    rows = 0
    with pq.ParquetWriter(path, schema) as writer:
        for chunk in chunks:
            writer.write_table(_arrow_chunk(schema, columns, chunk))
            rows += len(chunk)
    return rows


def _arrow_chunk(schema: Any, columns: Sequence[ExportColumn], chunk: list[tuple[Any, ...]]) -> Any:
    import pyarrow as pa

    arrays = []
    for i, (column, field) in enumerate(zip(columns, schema, strict=True)):
        values = [row[i] for row in chunk]
        if field.type == pa.string():
            values = [None if v is None else str(v) for v in values]
        try:
            arrays.append(pa.array(values, type=field.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise ExportError(f"column {column.name}: a value is not {column.sql_type} ({exc})") from exc
    return pa.Table.from_arrays(arrays, schema=schema)
