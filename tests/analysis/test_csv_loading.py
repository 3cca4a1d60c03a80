"""`services.csvdata.load_csv` on real-world files: encodings, separators, short rows, junk cells, bad values.

The rules under test (documented in load_csv and the README): rows are numbered as in a spreadsheet
(the header is row 1); blank rows are skipped; a row whose loss is empty, NaN or +inf is dropped and
listed (a run without a usable loss, like a diverged one); anything else that cannot be fitted is
refused with one line naming the file, the row and the column.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import refdata

from scaletui.services.csvdata import CsvError, load_csv

GOOD = "x,loss\n10,2.0\n20,1.5\n40,1.2\n"


def write(tmp_path: Path, text: str, encoding: str = "utf-8", name: str = "d.csv") -> Path:
    p = tmp_path / name
    p.write_bytes(text.encode(encoding))
    return p


@pytest.mark.parametrize(
    ("text", "encoding"),
    [
        (GOOD, "utf-8-sig"),  # Excel's "CSV UTF-8": a byte-order mark before the first column name
        (GOOD.replace(",", ";"), "utf-8"),  # Excel in a locale whose decimal mark is a comma
        (GOOD.replace(",", "\t"), "utf-8"),  # a spreadsheet's "tab-separated values"
        (GOOD.replace(",", "\t"), "utf-16"),  # Excel's "Unicode text": UTF-16 with a BOM, tabs
        (GOOD.replace("\n", "\r\n"), "utf-8"),  # Windows line endings
        ("  x , loss \n10, 2.0\n20 ,1.5\n\n40,1.2\n", "utf-8"),  # padded names and cells, a blank line
    ],
)
def test_common_dialects_and_encodings_read_the_same(tmp_path: Path, text: str, encoding: str) -> None:
    data = load_csv(write(tmp_path, text, encoding), x="x", loss="loss")
    assert data.xs[0].tolist() == [10, 20, 40] and data.loss.tolist() == [2.0, 1.5, 1.2]


def test_latin1_bytes_are_decoded_and_used_as_labels(tmp_path: Path) -> None:
    p = write(tmp_path, "modèle,x,loss\nréseau,10,2.0\nréseau,20,1.5\nbaseline,10,2.1\n", "latin-1")
    data = load_csv(p, x="x", loss="loss", split=("modèle",))
    assert data.split == (("réseau",), ("réseau",), ("baseline",))


def test_rows_are_numbered_as_in_a_spreadsheet(tmp_path: Path) -> None:
    p = write(tmp_path, "x,loss\n10,2.0\n\n20,1.5\n")
    assert load_csv(p, x="x", loss="loss").rows.tolist() == [2, 4]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "d.csv: empty file"),
        ("x,loss\n", "d.csv: no data rows (only a header)"),
        ("x,loss\n10,2.0\n20\n", "d.csv: row 3, column 'loss': missing (the row has 1 cell, the header 2)"),
        ("x,loss\n10,2.0,7\n", "d.csv: row 2: 3 cells but the header has 2 columns"),
        ("x,loss\n10,2.0\n20,abc\n", "d.csv: row 3, column 'loss': not a number: 'abc'"),
        ("x,loss\n10,2.0\n20,0\n", "d.csv: row 3, column 'loss': 0 is not > 0 (the law is fitted in log space)"),
        ("x,loss\n10,2.0\n20,-1.5\n", "d.csv: row 3, column 'loss': -1.5 is not > 0"),
        ("x,loss\n10,2.0\n-20,1.5\n", "d.csv: row 3, column 'x': -20 is not > 0"),
        ("x,loss\n10,2.0\nnan,1.5\n", "d.csv: row 3, column 'x': nan is not a finite number"),
        ("x,loss\n10,2.0\n,1.5\n", "d.csv: row 3, column 'x': empty"),
        ("x,loss\nnan,nan\n10,\n", "d.csv: no row has a loss in column 'loss' (rows 2, 3: empty, NaN or inf)"),
        ("x,x,loss\n10,10,2.0\n", "d.csv: column 'x' appears 2 times in the header"),
        ("a,b\n1,2\n", "d.csv: no column 'x'; columns are ['a', 'b']"),
    ],
)
def test_bad_rows_are_refused_with_file_row_and_column(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(CsvError) as info:
        load_csv(write(tmp_path, text), x="x", loss="loss")
    text_ = str(info.value)
    assert text_.startswith(f"{tmp_path / 'd.csv'}: ") and message.removeprefix("d.csv: ") in text_
    assert "\n" not in str(info.value)


def test_rows_without_a_loss_are_dropped_and_listed(tmp_path: Path) -> None:
    p = write(tmp_path, "g,x,loss\na,10,2.0\nb,20,nan\na,20,\nb,40,inf\na,40,1.2\n")
    data = load_csv(p, x="x", loss="loss", split=("g",))
    assert data.xs[0].tolist() == [10, 40] and data.rows.tolist() == [2, 6]
    assert data.dropped == ((3, ("b",)), (4, ("a",)), (5, ("b",)))


def test_exact_duplicate_rows_are_flagged(tmp_path: Path) -> None:
    p = write(tmp_path, "x,seed,loss\n10,0,2.0\n10,1,2.0\n10,0,2.0\n20,0,1.5\n10,0,2.0\n")
    assert load_csv(p, x="x", loss="loss").duplicate.tolist() == [False, False, True, False, True]


def test_compute_column_gives_tokens_and_group_column_gives_resampling_units(tmp_path: Path) -> None:
    p = write(tmp_path, "N;C;run;loss\n10;600;r1;2.0\n20;2400;r2;1.5\n")
    data = load_csv(p, n="N", compute="C", loss="loss", group="run")
    assert data.two_variable and data.xs[1].tolist() == [10.0, 20.0]
    assert data.groups.tolist() == ["r1", "r2"]
    assert np.array_equal(data.rows, [2, 3])
    with pytest.raises(CsvError, match=r"row 3, column 'run': empty"):
        load_csv(write(tmp_path, "x,run,loss\n1,a,2\n2,,1\n"), x="x", loss="loss", group="run")


def test_drop_highest_that_leaves_nothing_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(CsvError, match=r"d\.csv: drop_highest=3 would drop all 3 rows with a loss"):
        load_csv(write(tmp_path, GOOD), x="x", loss="loss", drop_highest=3)


def test_load_csv_derives_tokens_from_compute_as_the_replication_does(tmp_path: Path) -> None:
    """The Chinchilla file, read where it lives: D = C / (6N), the 5 highest losses dropped; the same
    240 points the reference-data reader gives."""
    folder = refdata.require_refdata()
    data = load_csv(folder / "chinchilla_svg_extracted_data.csv", n="Model Size", compute="Training FLOP",
                    loss="loss", drop_highest=5)
    n, d = data.xs
    assert data.two_variable and data.loss.size == 240
    assert np.all(6 * n * d > 1e17)  # D = C / (6N), so 6ND is the compute again
    assert data.loss.max() < 4.0  # the outliers (losses near 5) are gone
    ref = refdata.chinchilla()
    np.testing.assert_allclose(n, ref.n)
    np.testing.assert_allclose(d, ref.d)
    np.testing.assert_allclose(data.loss, ref.loss)
    p = tmp_path / "runs.csv"
    p.write_text("width,seed,loss\n16,0,1.0\n32,0,0.8\n16,1,1.1\n")
    one = load_csv(p, x="width", group="seed")
    assert not one.two_variable and list(one.xs[0]) == [16, 32, 16] and list(one.groups) == ["0", "0", "1"]
    with pytest.raises(ValueError, match="no column 'depth'"):
        load_csv(p, x="depth")
    with pytest.raises(ValueError, match="either x"):
        load_csv(p, x="width", n="width", d="seed")
