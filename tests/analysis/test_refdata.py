"""The reference-data reader applies each data set's published split (external/README.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import refdata


def test_benchmark_curves_have_their_published_split() -> None:
    refdata.require_refdata()
    curves = refdata.revisiting_curves()
    by_domain = {d: [c for c in curves if c.domain == d] for d in ("IC", "NMT", "LM", "BB")}
    assert {d: len(v) for d, v in by_domain.items()} == {"IC": 24, "NMT": 5, "LM": 5, "BB": 10}
    assert {c.key for c in curves} == set(refdata.reference_errors()) - {"BNSL|4digit"}
    lm = next(c for c in curves if c.key == "LM|1.68e+07")
    assert lm.x_fit.size == np.unique(lm.x_fit).size == 59  # the 4 stored copies dropped
    assert all(c.x_fit.max() < c.x_test.min() for c in curves)
    assert {(c.err_0, c.up_bound) for c in by_domain["BB"]} == {(1.001, 1.0)}
    assert {(c.err_0, c.up_bound) for c in by_domain["NMT"]} == {(1.0, None)}


def test_bnsl_datablations_and_chinchilla_splits() -> None:
    refdata.require_refdata()
    bnsl = refdata.bnsl_addition()
    assert (bnsl.x_fit.size, bnsl.x_test.size, bnsl.x_fit.max(), bnsl.x_test.min()) == (14, 3, 736, 800)
    db = refdata.datablations()
    assert (db.fit.n.size, db.test.n.size) == (31, 2) and np.all(db.test.n == 8.67e9)
    c = refdata.chinchilla()
    assert c.n.size == 240 and np.allclose(c.d * 6 * c.n > 0, True)
    assert refdata.reference_errors()["BNSL|4digit"]["BNSL"].rmse_log == pytest.approx(0.0109, abs=1e-4)


def test_a_missing_folder_is_one_clear_reason(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(refdata.ENV_VAR, str(tmp_path / "nowhere"))
    reason = refdata.missing_reason()
    assert reason is not None and "reference data not found" in reason and refdata.ENV_VAR in reason
    with pytest.raises(pytest.skip.Exception, match="reference data not found"):
        refdata.require_refdata()
