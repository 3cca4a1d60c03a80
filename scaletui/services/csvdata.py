"""Reading fit inputs from a CSV file as people actually write them (encodings, separators, junk cells).

File input and output, so a service rather than analysis (which is pure functions over arrays):
`load_csv` turns a file into arrays ready for `scaletui.analysis` (`FitData`), or refuses it with one
`CsvError` line naming the file, row and column. `services.fitting.fit_csv` fits what it returns.

Real-world files: UTF-8 with or without a byte-order mark, UTF-16 with one, else Latin-1; the separator
is `,`, `;`, tab or `|`, whichever makes the header name the wanted columns; names and cells lose
surrounding spaces; blank rows are skipped; rows are numbered as in a spreadsheet (the header is row 1).
A row without a loss (empty, NaN, +inf: a run without a usable loss, like a diverged one) is left out
and listed; everything else that cannot be fitted is refused (see `load_csv`).
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["CSV_DELIMITERS", "NO_LOSS", "CsvError", "FitData", "load_csv", "row_list"]


class CsvError(ValueError):
    """A CSV file that cannot be fitted, as one line naming the file and, where it applies, row and column."""


@dataclass(frozen=True)
class FitData:
    """Arrays ready for a fit: `xs` (one array, or N and D), `loss`, optional `groups`.

    From a CSV file also, per point: `rows`, its spreadsheet row (the header is row 1); `split`,
    its values of the `split` columns (empty tuples without); `duplicate`, True where the row
    repeats an earlier row of the file cell for cell. `dropped` lists (row, split values) of the
    rows left out for having no loss.
    """

    xs: tuple[np.ndarray, ...]
    loss: np.ndarray
    groups: np.ndarray | None
    names: tuple[str, ...]
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    split: tuple[tuple[str, ...], ...] = ()
    duplicate: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    dropped: tuple[tuple[int, tuple[str, ...]], ...] = ()

    @property
    def two_variable(self) -> bool:
        """N and D (the two-variable law, CHINCHILLA), rather than one x."""
        return len(self.xs) == 2

    def take(self, index: np.ndarray) -> FitData:
        """The points at `index` (e.g. one curve); `dropped` stays the file's."""
        return FitData(tuple(v[index] for v in self.xs), self.loss[index],
                       None if self.groups is None else self.groups[index], self.names, self.rows[index],
                       tuple(self.split[i] for i in index), self.duplicate[index], self.dropped)


#: Separators tried, in this order, on the header (see `_pick_delimiter`).
CSV_DELIMITERS = (",", ";", "\t", "|")
#: What a dropped row's loss was, for messages.
NO_LOSS = "empty, NaN or inf"


def row_list(rows: Sequence[int], limit: int = 8) -> str:
    """Row numbers for a message: "3, 7, 9", or the first `limit` and how many in all."""
    shown = ", ".join(map(str, rows[:limit]))
    return shown if len(rows) <= limit else f"{shown}, ... ({len(rows)} in all)"


def _shown(text: str, limit: int = 40) -> str:
    """A cell or name as quoted in a message: repr (one line whatever it holds), cut to `limit`."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _decode(raw: bytes) -> str:
    """The text of a CSV file: UTF-16 when it starts with a UTF-16 byte-order mark (Excel's "Unicode
    text"), else UTF-8 without its byte-order mark, else Latin-1, which decodes any bytes, so a legacy
    export still reads (its labels may look odd; its numbers are ASCII either way)."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        with contextlib.suppress(UnicodeDecodeError):
            return raw.decode("utf-16").removeprefix("\ufeff")
    raw = raw.removeprefix(codecs.BOM_UTF8)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _records(text: str, delimiter: str, path: Path) -> Iterator[tuple[int, list[str]]]:
    """(spreadsheet row, cells stripped of spaces) of every record with a non-empty cell."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        for cells in reader:
            stripped = [c.strip() for c in cells]
            if any(stripped):
                yield reader.line_num, stripped
    except csv.Error as exc:
        raise CsvError(f"{path}: row {reader.line_num}: {exc}") from None


def _pick_delimiter(text: str, wanted: Sequence[str], path: Path) -> str:
    """The separator whose header names every wanted column; failing that, the one that splits the
    header into the most columns (ties: the order of CSV_DELIMITERS, so a comma wins)."""
    headers = {}
    for delimiter in CSV_DELIMITERS:
        with contextlib.suppress(CsvError):
            headers[delimiter] = next(_records(text, delimiter, path), (0, []))[1]
            if set(wanted) <= set(headers[delimiter]):
                return delimiter
    return max(CSV_DELIMITERS, key=lambda dl: len(headers.get(dl, [])))


@dataclass(frozen=True)
class _Table:
    """A CSV file's header and data records, every record checked against the header's width."""

    path: Path
    header: list[str]
    records: list[tuple[int, list[str]]]

    def cell(self, row: int, cells: list[str], name: str) -> str:
        i = self.header.index(name)
        if i >= len(cells):
            have = f"{len(cells)} cell" + ("s" if len(cells) != 1 else "")
            raise CsvError(f"{self.path}: row {row}, column {name!r}: missing (the row has {have}, "
                           f"the header {len(self.header)})")
        return cells[i]


def _read_table(path: Path, wanted: Sequence[str]) -> _Table:
    try:
        text = _decode(path.read_bytes())
    except OSError as exc:
        raise CsvError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    records = list(_records(text, _pick_delimiter(text, wanted, path), path))
    if not records:
        raise CsvError(f"{path}: empty file")
    (_, header), data = records[0], records[1:]
    for name in dict.fromkeys(wanted):
        if (count := header.count(name)) != 1:
            listed = ", ".join(_shown(h) for h in header[:12]) + (", ..." if len(header) > 12 else "")
            raise CsvError(f"{path}: no column {name!r}; columns are [{listed}]" if count == 0 else
                           f"{path}: column {name!r} appears {count} times in the header")
    for row, cells in data:
        if len(cells) > len(header) and any(cells[len(header):]):  # trailing empty cells are harmless
            raise CsvError(f"{path}: row {row}: {len(cells)} cells but the header has {len(header)} columns "
                           "(a separator inside an unquoted value?)")
    if not data:
        raise CsvError(f"{path}: no data rows (only a header)")
    return _Table(path, header, data)


def _number(text: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise CsvError(f"{where}: not a number: {_shown(text)}") from None


def _positive(table: _Table, row: int, cells: list[str], name: str) -> float:
    """An x, N, D or compute: a finite number > 0 (it is fitted in log space); anything else is refused."""
    where = f"{table.path}: row {row}, column {name!r}"
    text = table.cell(row, cells, name)
    if not text:
        raise CsvError(f"{where}: empty")
    value = _number(text, where)
    if not math.isfinite(value):
        raise CsvError(f"{where}: {text} is not a finite number")
    if value <= 0:
        raise CsvError(f"{where}: {text} is not > 0 (the law is fitted in log space)")
    return value


def _loss(table: _Table, row: int, cells: list[str], name: str) -> float | None:
    """A row's loss; None when it has none (empty, NaN or +inf: a run without a usable loss, like a
    diverged one). Text, and a loss <= 0 (log space), are refused."""
    where = f"{table.path}: row {row}, column {name!r}"
    text = table.cell(row, cells, name)
    value = _number(text, where) if text else math.nan
    if math.isnan(value) or value == math.inf:
        return None
    if value <= 0:
        raise CsvError(f"{where}: {text} is not > 0 (the law is fitted in log space)")
    return value


def _label(table: _Table, row: int, cells: list[str], name: str) -> str:
    text = table.cell(row, cells, name)
    if not text:
        raise CsvError(f"{table.path}: row {row}, column {name!r}: empty")
    return text


def _key(cells: list[str]) -> tuple[str, ...]:
    """A record as compared for exact duplicates (trailing empty cells do not count)."""
    end = len(cells)
    while end and not cells[end - 1]:
        end -= 1
    return tuple(cells[:end])


@dataclass
class _Parsed:
    """The rows of a CSV file that have a loss (numbers: the wanted columns, the loss last), and
    those that have none."""

    values: list[list[float]] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    split: list[tuple[str, ...]] = field(default_factory=list)
    units: list[str] = field(default_factory=list)
    duplicate: list[bool] = field(default_factory=list)
    dropped: list[tuple[int, tuple[str, ...]]] = field(default_factory=list)


def _parse_rows(table: _Table, numeric: Sequence[str], loss: str, group: str | None,
                split: Sequence[str]) -> _Parsed:
    out, seen = _Parsed(), set()
    for row, cells in table.records:
        key, curve = _key(cells), tuple(_label(table, row, cells, c) for c in split)
        y = _loss(table, row, cells, loss)
        if y is None:
            out.dropped.append((row, curve))
        else:
            out.values.append([_positive(table, row, cells, c) for c in numeric] + [y])
            out.units.append(_label(table, row, cells, group) if group is not None else "")
            out.rows.append(row)
            out.split.append(curve)
            out.duplicate.append(key in seen)
        seen.add(key)
    return out


def load_csv(path: str | Path, *, x: str | None = None, n: str | None = None, d: str | None = None,
             compute: str | None = None, loss: str = "loss", group: str | None = None,
             split: Sequence[str] = (), drop_highest: int = 0) -> FitData:
    """Read fit inputs from a CSV: either `x`, or `n` with `d` (or `compute`, giving D = C / (6N)).

    `group`: a column of labels (e.g. seed or run), the bootstrap's resampling unit. `split`: the
    columns whose values name a curve (one law per distinct combination). `drop_highest` removes
    that many highest-loss rows (the Chinchilla replication drops 5).

    Real-world files: UTF-8 with or without a byte-order mark, UTF-16 with one, else Latin-1; the
    separator is `,`, `;`, tab or `|`, whichever makes the header name the wanted columns; names
    and cells lose surrounding spaces; blank rows are skipped; rows are numbered as in a spreadsheet
    (the header is row 1). A row whose loss is empty, NaN or +inf is left out and listed in
    `dropped`. Everything else that cannot be fitted raises `CsvError` naming the file, row and
    column: a missing cell, more cells than the header, text where a number belongs, an empty or
    non-finite x (N, D, compute), any value <= 0 (the law is fitted in log space), an empty label.
    """
    if (x is None) == (n is None) or (n is not None and (d is None) == (compute is None)):
        raise ValueError("give either x=..., or n=... with exactly one of d=... / compute=...")
    p = Path(path)
    numeric = [c for c in (x, n, d, compute) if c is not None]
    labels = [*([group] if group is not None else []), *split]
    table = _read_table(p, [*numeric, loss, *labels])
    parsed = _parse_rows(table, numeric, loss, group, split)
    if not parsed.values:
        raise CsvError(f"{p}: no row has a loss in column {loss!r} "
                       f"(rows {row_list([r for r, _ in parsed.dropped])}: {NO_LOSS})")
    numbers = np.array(parsed.values)
    xs, names = _variables(numbers, x, n, d, compute)
    data = FitData(xs, numbers[:, -1], np.array(parsed.units) if group is not None else None, names,
                   np.array(parsed.rows, dtype=int), tuple(parsed.split), np.array(parsed.duplicate, dtype=bool),
                   tuple(parsed.dropped))
    return _without_highest(data, drop_highest, p)


def _variables(table: np.ndarray, x: str | None, n: str | None, d: str | None,
               compute: str | None) -> tuple[tuple[np.ndarray, ...], tuple[str, ...]]:
    """x; or N and D (D = C / (6N) from a compute column), with their names, from load_csv's columns."""
    if x is not None:
        return (table[:, 0],), (x,)
    dd = table[:, 1] if d is not None else table[:, 1] / (6.0 * table[:, 0])
    return (table[:, 0], dd), (n or "", d or f"{compute}/(6*{n})")


def _without_highest(data: FitData, drop_highest: int, path: Path) -> FitData:
    """`data` less its `drop_highest` highest losses (file order kept)."""
    if drop_highest < 0:
        raise ValueError(f"drop_highest must be >= 0, got {drop_highest}")
    if drop_highest >= data.loss.size:
        raise CsvError(f"{path}: drop_highest={drop_highest} would drop all {data.loss.size} rows with a loss")
    if drop_highest == 0:
        return data
    return data.take(np.sort(np.argsort(data.loss, kind="stable")[: data.loss.size - drop_highest]))
