"""How Python values become SQLite values and back.

SQLite has no NaN: binding a NaN double stores NULL. We make that explicit
instead of accidental, and keep +/-Inf as what SQLite does support, a REAL
infinity (the shell prints `Inf`/`-Inf`, and `9e999` writes one in SQL):

    value in Python   stored as       read back as
    finite float      REAL            the same float
    +inf / -inf       REAL +/-Inf     +inf / -inf
    nan (or None)     NULL            nan

So in `metrics.value` and the float columns of `layer_stats`, NULL *means*
NaN: a row exists for every recorded (run, step, key), and a NULL value in it
says the measured number was NaN. Aggregates in SQL (AVG, MIN, ...) skip those
rows, which is what a loss table wants.

Timestamps are ISO-8601 UTC text with milliseconds and a `Z`
(`2025-01-31T12:00:00.123Z`): they sort as text and SQLite's date functions
(`julianday(finished_at) - julianday(started_at)`) accept them.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone


def to_real(value: float | None) -> float | None:
    """A float for a REAL column: NaN and None become NULL, infinities stay."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def from_real(value: float | None) -> float:
    """The inverse of `to_real` for columns where NULL means NaN."""
    return math.nan if value is None else float(value)


def iso(moment: datetime) -> str:
    """A UTC timestamp as sortable ISO text with a `Z` suffix."""
    utc = moment.astimezone(timezone.utc)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def now_iso() -> str:
    """The current time, formatted like every timestamp in the database."""
    return iso(datetime.now(timezone.utc))


def iso_ago(seconds: float) -> str:
    """The timestamp `seconds` ago, for comparisons in SQL (`heartbeat_at < ?`)."""
    return iso(datetime.now(timezone.utc) - timedelta(seconds=seconds))
