"""Fixtures for the scaling-law tests: the Chinchilla replication data and its fit, computed once.

The data file is a verbatim copy of the shared reference file (see data/README.md); its checksum
is checked so a silently edited copy cannot make the replication tests pass or fail for the
wrong reason.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from scaletui.analysis.powerlaw import FitData, Form, LawFit, fit_law, load_csv

CHINCHILLA_CSV = Path(__file__).parent / "data" / "chinchilla_svg_extracted_data.csv"
CHINCHILLA_SHA256 = "193478df4e90f040016431996c45682659306840ecdadf83cfb9cd5ca0aa1b30"


@pytest.fixture(scope="session")
def chinchilla() -> FitData:
    """N, D = C/(6N) and loss, with the 5 highest-loss points dropped (n = 240), as in the replication."""
    assert hashlib.sha256(CHINCHILLA_CSV.read_bytes()).hexdigest() == CHINCHILLA_SHA256
    return load_csv(CHINCHILLA_CSV, n="Model Size", compute="Training FLOP", loss="loss", drop_highest=5)


@pytest.fixture(scope="session")
def chinchilla_fit(chinchilla: FitData) -> LawFit:
    return fit_law(Form.TWO_VAR, chinchilla.xs, chinchilla.loss)

