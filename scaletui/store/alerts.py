"""The `alerts` table: what the detectors saw, one row per (experiment, subject, kind).

Detectors are re-run as evidence grows (every flush of a running run, every
finished run of a group), so an alert is *synced*, not appended: the row for a
(subject, kind) is inserted the first time, updated when its message or
evidence changes, and deactivated (`active = 0`, kept for the record) when a
later pass over the same subject no longer raises it (three more seeds can
dissolve a non-monotonic "trend"). Every change bumps `rev`, so the app polls
`rev > cursor` like it does for runs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

from sqlite_utils import Database

from scaletui.core.records import Alert
from scaletui.core.rows import AlertRow
from scaletui.store.codec import now_iso

_GROUP_KEYS = ("width", "depth", "width_large", "depth_large")


def alert_subject(alert: Alert) -> str:
    """What an alert is about: `run:12` for one run, `depth=4,width_large=128` for a group comparison."""
    if alert.run_id is not None:
        return f"run:{alert.run_id}"
    parts = [f"{key}={int(alert.evidence[key])}" for key in _GROUP_KEYS if key in alert.evidence]
    return ",".join(parts) or "sweep"


def _evidence_json(evidence: Mapping[str, float]) -> str:
    """Evidence as JSON; non-finite numbers become strings, since JSON has none."""
    clean = {k: (v if math.isfinite(v) else str(v)) for k, v in evidence.items()}
    return json.dumps(clean, sort_keys=True)


def _next_rev(db: Database) -> int:
    return int(db.execute("SELECT COALESCE(MAX(rev), 0) + 1 FROM alerts").fetchone()[0])


def _upsert(db: Database, experiment_id: int, subject: str, alert: Alert) -> bool:
    """Insert or update one alert; True when something changed."""
    values = [alert.severity, alert.step, alert.message, alert.suggestion, _evidence_json(alert.evidence)]
    old = db.execute(
        "SELECT id, severity, step, message, suggestion, evidence_json, active FROM alerts"
        " WHERE experiment_id = ? AND subject = ? AND kind = ?",
        [experiment_id, subject, alert.kind],
    ).fetchone()
    if old is not None and list(old[1:6]) == values and old[6] == 1:
        return False
    now = now_iso()
    if old is None:
        db.execute(
            "INSERT INTO alerts (experiment_id, run_id, subject, kind, severity, step, message, suggestion,"
            " evidence_json, active, first_seen_at, updated_at, rev) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?)",
            [experiment_id, alert.run_id, subject, alert.kind, *values, now, now, _next_rev(db)],
        )
    else:
        db.execute(
            "UPDATE alerts SET severity = ?, step = ?, message = ?, suggestion = ?, evidence_json = ?,"
            " active = 1, updated_at = ?, rev = ? WHERE id = ?",
            [*values, now, _next_rev(db), old[0]],
        )
    return True


def _deactivate_others(db: Database, experiment_id: int, subject: str, kinds: set[str]) -> int:
    rows = db.execute(
        "SELECT id, kind FROM alerts WHERE experiment_id = ? AND subject = ? AND active = 1",
        [experiment_id, subject],
    ).fetchall()
    stale = [row_id for row_id, kind in rows if kind not in kinds]
    for row_id in stale:
        db.execute("UPDATE alerts SET active = 0, updated_at = ?, rev = ? WHERE id = ?",
                   [now_iso(), _next_rev(db), row_id])
    return len(stale)


def sync_alerts(db: Database, experiment_id: int, by_subject: Mapping[str, Sequence[Alert]]) -> int:
    """Make the active alerts of each subject in `by_subject` exactly these (call in a write transaction).

    Subjects not in the mapping are left alone. Returns the number of rows changed.
    """
    changed = 0
    for subject, alerts in by_subject.items():
        latest = {a.kind: a for a in alerts}  # one row per kind: the last one passed wins
        changed += sum(_upsert(db, experiment_id, subject, a) for a in latest.values())
        changed += _deactivate_others(db, experiment_id, subject, set(latest))
    return changed


def group_by_subject(alerts: Sequence[Alert]) -> dict[str, list[Alert]]:
    """Alerts keyed by `alert_subject`, for `sync_alerts`."""
    grouped: dict[str, list[Alert]] = {}
    for alert in alerts:
        grouped.setdefault(alert_subject(alert), []).append(alert)
    return grouped


def alert_row_to_record(row: AlertRow) -> Alert:
    """A stored alert back into the Alert a detector made (evidence strings such as 'inf' already floats)."""
    return Alert(row.kind, row.severity.value, row.step, row.message, row.suggestion or "", dict(row.evidence),
                 row.run_id)
