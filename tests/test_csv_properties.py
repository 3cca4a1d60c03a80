"""`scaletui fit --csv` on real-world and malformed files: it fits, or it says why in one line.

The promise, for any bytes in the file: exit code 0 (a law was fitted and printed) or 2 (one line on
stderr that names the file), never a traceback. Hypothesis generates the files (random rows, missing
and junk cells, separators, encodings, byte-order marks, empty files) and drives the real `main`
in-process through click's CliRunner, which goes through the same one-line error handling as the
installed command; a few real subprocesses check the same promise end to end.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from scaletui.cli import main
from tests.conftest import run_cli

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SIZES = (1e3, 4e3, 1.6e4, 6.4e4, 2.56e5)
GOOD_ROWS = [[f"{n:g}", f"{0.3 + 40 * n**-0.5:.6g}"] for n in SIZES]
FIT = ["fit", "--csv-x", "x", "--csv-y", "loss", "--bootstrap", "0", "--no-save"]


def fit_file(path: Path, *extra: str) -> Result:
    return CliRunner().invoke(main, [*FIT, "--csv", str(path), *extra])


def assert_fits_or_one_line(result: Result, path: Path) -> None:
    """Exit 0 with a law and a silent stderr, or exit 2 with one line that names the file; no traceback."""
    crashed = result.exception is not None and not isinstance(result.exception, SystemExit)
    assert not crashed, f"{type(result.exception).__name__}: {result.exception}"
    assert "Traceback" not in result.stdout + result.stderr
    assert result.exit_code in (0, 2), (result.exit_code, result.stdout, result.stderr)
    if result.exit_code == 0:
        assert "L = " in result.stdout and result.stderr == "", result.stderr
    else:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {path}: "), result.stderr


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # no ./experiments.toml: nothing but the CSV is read
    return tmp_path


# ----------------------------------------------------------------------------- the cases of the issue


def encoded(text: str, encoding: str) -> bytes:
    return text.encode(encoding)


GOOD_TEXT = "x,loss\n" + "\n".join(",".join(r) for r in GOOD_ROWS) + "\n"


@pytest.mark.parametrize(
    "data",
    [
        encoded(GOOD_TEXT, "utf-8-sig"),
        encoded(GOOD_TEXT.replace(",", ";"), "utf-8"),
        encoded(GOOD_TEXT.replace(",", "\t"), "utf-8"),
        encoded(GOOD_TEXT.replace(",", "\t"), "utf-16"),
        encoded("modèle," + GOOD_TEXT.replace("\n", "\nréseau,").removesuffix("réseau,"), "latin-1"),
        encoded(GOOD_TEXT + "1e6,nan\n4e6,\n", "utf-8"),  # rows without a loss are left out, with a warning
    ],
    ids=["bom", "semicolon", "tab", "utf16", "latin1", "nan-loss"],
)
def test_real_world_dialects_fit(cwd: Path, data: bytes) -> None:
    path = cwd / "d.csv"
    path.write_bytes(data)
    result = fit_file(path)
    assert result.exit_code == 0, result.stderr
    assert "L = 0.3 + 40 x^-0.500" in result.stdout


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x,loss\n1000,1.5\n4000\n", "row 3, column 'loss': missing (the row has 1 cell, the header 2)"),
        ("x,loss\n", "no data rows (only a header)"),
        ("", "empty file"),
        ("x,loss\n1000,1.5\n4000,abc\n", "row 3, column 'loss': not a number: 'abc'"),
        ("x,loss\n1000,1.5\n4000,0\n", "row 3, column 'loss': 0 is not > 0 (the law is fitted in log space)"),
        ("x,loss\n1000,1.5\n4000,-0.2\n", "row 3, column 'loss': -0.2 is not > 0"),
        ("x,loss\n0,1.5\n4000,1.2\n", "row 2, column 'x': 0 is not > 0"),
        ("x,loss\nnan,1.5\n4000,1.2\n", "row 2, column 'x': nan is not a finite number"),
    ],
)
def test_malformed_files_are_one_line_naming_file_row_and_column(cwd: Path, text: str, message: str) -> None:
    path = cwd / "d.csv"
    path.write_text(text)
    result = fit_file(path)
    assert_fits_or_one_line(result, path)
    assert result.exit_code == 2 and message in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    ("data", "code", "expected"),
    [
        (b"x,loss\n1000,1.5\n4000\n", 2, "d.csv: row 3, column 'loss': missing"),
        (b"x,loss\n", 2, "d.csv: no data rows (only a header)"),
        (encoded(GOOD_TEXT.replace(",", ";"), "utf-8-sig"), 0, "L = 0.3 + 40 x^-0.500"),
    ],
)
def test_the_installed_command_keeps_the_promise(tmp_path: Path, data: bytes, code: int, expected: str) -> None:
    (tmp_path / "d.csv").write_bytes(data)
    out = run_cli(*FIT, "--csv", "d.csv", cwd=tmp_path)
    assert out.returncode == code and "Traceback" not in out.stderr
    if code == 2:
        assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: d.csv: ") and expected in out.stderr
    else:
        assert expected in out.stdout and out.stderr == ""


# ----------------------------------------------------------------------------- generated files

latin_text = st.text(st.characters(max_codepoint=0xFF, blacklist_categories=("Cs",)), max_size=8)
junk_cell = st.one_of(
    st.sampled_from(["", " ", "nan", "NaN", "inf", "-inf", "0", "-1", "-0.0", "1e999", "1,5", "abc", '"', "None"]),
    latin_text,
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
header = st.one_of(st.permutations(["x", "loss", "seed"]), st.just(["x", "loss"]), st.just(["x"]),
                   st.lists(latin_text, max_size=3))


def good_cells(columns: list[str], size: float, seed: str) -> list[str]:
    """A row on the law 0.3 + 40 x^-0.5, in the header's column order (other columns get a label)."""
    value = {"x": f"{size:g}", "loss": f"{0.3 + 40 * size**-0.5:.6g}", "seed": seed}
    return [value.get(c, "label") for c in columns]


@st.composite
def corrupted(draw: st.DrawFn, row: list[str]) -> list[str]:
    """One row spoiled the ways files get spoiled: a junk cell, a short row, a long row, a junk row."""
    how = draw(st.sampled_from(["cell", "short", "long", "junk"]))
    if how == "cell" and row:
        at = draw(st.integers(0, len(row) - 1))
        return [*row[:at], draw(junk_cell), *row[at + 1:]]
    if how == "short":
        return row[: draw(st.integers(0, max(len(row) - 1, 0)))]
    if how == "long":
        return [*row, draw(junk_cell)]
    return draw(st.lists(junk_cell, max_size=4))


@st.composite
def csv_bytes(draw: st.DrawFn) -> bytes:
    """A CSV file as a spreadsheet, a script or a careless hand might write it: mostly rows on a law
    (so that many files can be fitted), some spoiled, in any separator, line ending and encoding."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=200))  # not text at all
    columns = list(draw(header))
    rows = [good_cells(columns, draw(st.sampled_from(SIZES)), draw(st.sampled_from(["0", "1"])))
            for _ in range(draw(st.integers(0, 12)))]
    for _ in range(draw(st.integers(0, 2)) if rows else 0):
        at = draw(st.integers(0, len(rows) - 1))
        rows[at] = draw(corrupted(rows[at]))
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=draw(st.sampled_from([",", ";", "\t", "|"])),
                        lineterminator=draw(st.sampled_from(["\n", "\r\n"])))
    writer.writerows([columns, *rows])
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "cp1252", "utf-16"]))
    return buf.getvalue().encode(encoding, errors="replace")


@SETTINGS
@given(data=csv_bytes())
def test_any_file_fits_or_is_refused_in_one_line(cwd: Path, data: bytes) -> None:
    path = cwd / "gen.csv"
    path.write_bytes(data)
    result = fit_file(path)
    event(f"exit {result.exit_code}")  # --hypothesis-show-statistics: both outcomes must be common
    assert_fits_or_one_line(result, path)


@SETTINGS
@given(data=csv_bytes(), group=st.sampled_from(["seed", "x", "nope"]))
def test_grouped_and_resampled_fits_keep_the_promise(cwd: Path, data: bytes, group: str) -> None:
    path = cwd / "gen.csv"
    path.write_bytes(data)
    result = fit_file(path, "--group-by", group, "--csv-group", group, "--bootstrap", "5")
    event(f"exit {result.exit_code}")
    assert_fits_or_one_line(result, path)
