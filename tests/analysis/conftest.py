"""Fixtures for the scaling-law tests: the Chinchilla replication data and its fit, computed once.

The data is read where it lives, `../shared/data/chinchilla_svg_extracted_data.csv`, through the one
reader of reference data (tests/refdata.py); a test that needs it is skipped, with the reason, where
the folder is absent.
"""

from __future__ import annotations

import pytest
import refdata
from formdata import EPOCH

from scaletui.analysis.forms import FittedLaw
from scaletui.analysis.solve import fit_law


@pytest.fixture(scope="session")
def chinchilla() -> refdata.TwoVarData:
    """N, D = C/(6N) and loss, with the 5 highest-loss points dropped (n = 240), as in the replication."""
    refdata.require_refdata()
    return refdata.chinchilla()


@pytest.fixture(scope="session")
def chinchilla_fit(chinchilla: refdata.TwoVarData) -> FittedLaw:
    return fit_law("CHINCHILLA", (chinchilla.n, chinchilla.d), chinchilla.loss, options=EPOCH)
