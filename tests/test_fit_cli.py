"""`scaletui fit` as a user runs it: a real subprocess over a real database (or CSV file).

The database's runs follow a known law (tests/fitdb.py: loss = 0.3 + 40 * params^-0.5 at the
end of training), so the printed and stored numbers can be checked, not just their presence.
"""

from __future__ import annotations

import csv as std_csv
import json
import sqlite3
from pathlib import Path

import pytest

from scaletui.cli import fit as cli_fit
from scaletui.core.vocabulary import LossRule
from scaletui.services import fitting
from tests.conftest import run_cli
from tests.fitdb import ALPHA, fill, plan
from tests.refdata import data_dir, missing_reason

pytestmark = pytest.mark.slow  # every test starts the real CLI (numpy + scipy imports, a fit)

#: The Chinchilla replication data, read where it lives (tests/refdata.py); tests that fit it skip without it.
CHINCHILLA_CSV = data_dir() / "chinchilla_svg_extracted_data.csv"
#: Its header, for the tests that only need the columns.
CHINCHILLA_HEADER = "Model Size,Training FLOP,loss\n"


def require_chinchilla() -> Path:
    if missing_reason():
        pytest.skip(str(missing_reason()))
    return CHINCHILLA_CSV


@pytest.fixture
def nd_csv(tmp_path: Path) -> Path:
    """A small file with the Chinchilla file's columns (N, compute, loss)."""
    rows = [f"{n},{6 * n * 20 * n},{1.7 + 400 * n**-0.34 + 410 * (20 * n) ** -0.28}" for n in (1e7, 1e8, 1e9, 1e10)]
    path = tmp_path / "nd.csv"
    path.write_text(CHINCHILLA_HEADER + "\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def law_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fill(tmp_path_factory.mktemp("cli") / "runs.db", plan(depths=(1, 2), diverged=[(128, 2, 1)]))


@pytest.fixture
def fresh_db(law_db: Path, tmp_path: Path) -> Path:
    """A private copy, so tests that store fits do not see each other's."""
    db = tmp_path / "runs.db"
    with sqlite3.connect(law_db) as src, sqlite3.connect(db) as dst:
        src.backup(dst)
    return db


def fits_rows(db: Path) -> list[sqlite3.Row]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute("SELECT * FROM fits ORDER BY id").fetchall()


def test_table_shows_law_intervals_heldout_stability_and_rule(fresh_db: Path) -> None:
    out = run_cli("fit", "--db", str(fresh_db), "--bootstrap", "60", "--form", "offset")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    heading = ("law: L(params) = M2, L = E + A x^-alpha (forced); loss = final test loss; 19 points, 10 sizes, "
               "1 diverged excluded, 60 bootstrap resamples over 10 sizes")
    assert heading in text
    alpha_line = next(line for line in text.splitlines() if line.strip().startswith("alpha "))
    assert float(alpha_line.split()[1]) == pytest.approx(ALPHA, abs=0.01) and "90% interval" in text
    assert "held-out: largest 1 left out: x=3.277e+06: predicted" in text
    assert "alpha stability: alpha" in text and ": stable" in text
    assert "stored as fit #1" in text
    (row,) = fits_rows(fresh_db)
    assert row["source"] == "law" and row["loss_rule"] == "final" and row["x"] == "params"
    assert row["form_name"] == "M2" and json.loads(row["law_json"])["form"] == "M2"


def test_auto_shows_every_forms_heldout_error_and_predicts_with_a_band(fresh_db: Path) -> None:
    out = run_cli("fit", "--db", str(fresh_db), "--bootstrap", "60", "--predict", "1e7", "--predict", "1e10")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "(chosen by held-out error); loss = final test loss" in text
    assert "forms, by held-out error (each fitted without its largest 1..3 sizes" in text
    table = {line.split()[0]: line for line in text.splitlines() if line.strip().split()[:1] in
             (["M1"], ["M2"], ["M3"], ["M4"], ["BNSL1"])}
    assert set(table) == {"M1", "M2", "M3", "M4", "BNSL1"} and sum("chosen" in line for line in table.values()) == 1
    near = next(line for line in text.splitlines() if line.startswith("prediction: x=1e+07: "))
    assert "90% band [" in near and "3.05x the largest fitted size" in near and "FAR BEYOND" not in near
    assert "prediction: x=1e+10: " in text and "<- FAR BEYOND THE DATA" in text
    assert "warning: PREDICTION FAR BEYOND THE DATA: x=1e+10 is 3.05e+03x the largest fitted size" in text
    (row,) = fits_rows(fresh_db)
    scores, predictions = json.loads(row["scores_json"]), json.loads(row["predictions_json"])
    assert set(scores) == {"M1", "M2", "M3", "M4", "BNSL1"} and [p["x"] for p in predictions] == [1e7, 1e10]
    assert predictions[0]["lo"] < predictions[0]["value"] < predictions[0]["hi"]


@pytest.mark.parametrize(("args", "message"), [
    (["--predict", "abc"], "--predict 'abc': not a number (give X, or N,D for the two-variable law)"),
    (["--predict", "1e6,2e7"], "law: predict 1e+06,2e+07: this law takes one x"),
    (["--predict", "-5"], "law: predict -5: sizes must be finite and > 0"),
    (["--form", "CHINCHILLA"], "form: CHINCHILLA fits two variables (N, D); a sweep is fitted against one x"),
    (["--upper-bound", "0.5"], "law: a loss of 0.8132 exceeds the stated upper bound 0.5"),
])
def test_bad_fit_options_are_one_line_and_exit_2(law_db: Path, args: list[str], message: str) -> None:
    out = run_cli("fit", "--db", str(law_db), "--bootstrap", "0", "--no-save", *args)
    assert out.returncode == 2, out.stdout
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: ") and message in out.stderr


def test_json_is_machine_readable_and_no_save_stores_nothing(fresh_db: Path) -> None:
    out = run_cli("fit", "--db", str(fresh_db), "--x", "width", "--group-by", "depth", "--loss-rule", "best",
                  "--form", "power", "--bootstrap", "30", "--json", "--no-save")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert [f["group"] for f in doc["fits"]] == ["depth=1", "depth=2"]
    for f in doc["fits"]:
        assert f["loss_rule"] == "best" and f["form"] == "A*x^-alpha" and set(f["params"]) == {"A", "alpha"}
        assert f["form_name"] == "M1" and f["formula"] == "L = A x^-alpha"
        assert f["chosen_by"] == "forced" and f["law"]["params"] == f["params"]
        # 5 widths: the law is fitted on at least 4 sizes, so only the largest can be left out
        assert f["fit_id"] is None and len(f["heldout"]) == 1 and f["n_bootstrap"] == 30
        assert f["heldout_notes"][0].startswith("leave-2-out skipped: 3 sizes left")
    assert fits_rows(fresh_db) == []


def test_png_is_written(fresh_db: Path, tmp_path: Path) -> None:
    png = tmp_path / "law.png"
    out = run_cli("fit", "--db", str(fresh_db), "--bootstrap", "30", "--png", str(png), "--no-save")
    assert out.returncode == 0, out.stderr
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert f"plot written to {png}" in out.stdout


def test_chinchilla_csv_reproduces_besiroglu_2024_and_is_stored(tmp_path: Path) -> None:
    db = tmp_path / "fits.db"
    out = run_cli("fit", "--csv", str(require_chinchilla()), "--csv-x", "Model Size", "--csv-compute", "Training FLOP",
                  "--csv-y", "loss", "--drop-highest", "5", "--bootstrap", "0", "--json", "--db", str(db))
    assert out.returncode == 0, out.stderr
    (fit,) = json.loads(out.stdout)["fits"]
    p = fit["params"]
    assert abs(p["alpha"] - 0.3478) < 0.002 and abs(p["beta"] - 0.3658) < 0.002 and abs(p["E"] - 1.8172) < 0.005
    assert fit["n_points"] == 240 and fit["form_name"] == "CHINCHILLA" and fit["delta"] == 1e-3  # the replication's
    (row,) = fits_rows(db)
    assert row["source"] == str(CHINCHILLA_CSV) and row["experiment_id"] is None
    assert row["beta"] == pytest.approx(p["beta"])
    assert len(json.loads(row["inputs_json"])["D"]) == 240


def test_one_variable_csv_fit(tmp_path: Path) -> None:
    csv = tmp_path / "law.csv"
    rows = [f"{n},{0.3 + 40 * n**-0.5}" for n in (1e3, 4e3, 1.6e4, 6.4e4, 2.56e5)]
    csv.write_text("n,loss\n" + "\n".join(rows) + "\n")
    out = run_cli("fit", "--csv", str(csv), "--csv-x", "n", "--csv-y", "loss", "--bootstrap", "0", "--no-save")
    assert out.returncode == 0, out.stderr
    assert "L = 0.3 + 40 n^-0.500" in out.stdout and "loss from CSV" in out.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--experiment", "nope"], "no experiment 'nope'; experiments are ['law']"),
        (["--x", "height"], "Invalid value for '--x'"),
        (["--group-by", "colour"], "group-by: unknown column 'colour'"),
        (["--x", "examples"], "law: only 1 distinct value(s) of x; a fit needs at least 2 sizes"),
        (["--csv", "nowhere.csv", "--csv-x", "a", "--csv-y", "b"], "nowhere.csv: no such file"),
        (["--csv", "{nd_csv}", "--csv-x", "N", "--csv-y", "loss"], "no column 'N'"),
        (["--csv", "{nd_csv}", "--csv-x", "Model Size"], "--csv needs --csv-x COLUMN and --csv-y COLUMN"),
        (["--csv-x", "n", "--drop-highest", "2"], "--csv-x, --drop-highest: only with --csv FILE"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(law_db: Path, nd_csv: Path, args: list[str], message: str) -> None:
    out = run_cli("fit", "--db", str(law_db), "--bootstrap", "0", "--no-save",
                  *(a.format(nd_csv=nd_csv) for a in args))
    assert out.returncode == 2, out.stdout
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: ") and message in out.stderr


def test_missing_database_and_no_finished_runs_exit_2(tmp_path: Path) -> None:
    out = run_cli("fit", "--db", str(tmp_path / "none.db"))
    expected = f"error: {tmp_path / 'none.db'}: no such database (run a sweep first, or pass --db)"
    assert out.returncode == 2 and out.stderr.strip() == expected
    db = fill(tmp_path / "div.db", plan(widths=(8, 16), seeds=(0,), diverged=[(8, 1, 0), (16, 1, 0)]))
    out = run_cli("fit", "--db", str(db))
    assert out.returncode == 2
    assert "no finished runs with a final test loss to fit (0 finished, 2 diverged)" in out.stderr


# ----------------------------------------------------------------------------- in-process pieces


def test_cli_choices_are_the_fitting_choices() -> None:
    assert cli_fit.X_CHOICES == fitting.X_CHOICES
    assert cli_fit.FORM_CHOICES == fitting.FORMS
    assert tuple(r.value for r in LossRule) == cli_fit.LOSS_RULES
    assert cli_fit.LOSS_SPACES == fitting.LOSS_SPACES


def test_headless_closing_fit_prints_and_stores(fresh_db: Path, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_fit, "HEADLESS_BOOTSTRAP", 20)
    cli_fit.print_sweep_fit(fresh_db, "law")
    out = capsys.readouterr()
    assert "law: L(params)" in out.out and "held-out:" in out.out and out.err == ""
    assert "(chosen by held-out error)" in out.out and "forms, by held-out error" in out.out
    assert len(fits_rows(fresh_db)) == 1


def test_headless_closing_fit_never_raises(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli_fit.print_sweep_fit(tmp_path / "missing.db", "law")
    err = capsys.readouterr().err
    assert err.startswith("warning: fit skipped: ") and err.count("\n") == 1


def test_headless_closing_fit_needs_three_sizes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = fill(tmp_path / "two.db", plan(widths=(8, 16)))
    cli_fit.print_sweep_fit(db, "law")
    assert capsys.readouterr() == ("", "") and fits_rows(db) == []


# ----------------------------------------------------------------------------- CSV files from the command line


def write_law_csv(path: Path, header: str = "n,loss", rows: list[str] | None = None) -> Path:
    rows = rows if rows is not None else [f"{n},{0.3 + 40 * n**-0.5}" for n in (1e3, 4e3, 1.6e4, 6.4e4, 2.56e5)]
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def test_csv_fit_in_a_folder_without_runs_shows_the_law_and_stores_it(tmp_path: Path) -> None:
    write_law_csv(tmp_path / "d.csv")
    out = run_cli("fit", "--csv", "d.csv", "--csv-x", "n", "--csv-y", "loss", "--bootstrap", "0", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "L = 0.3 + 40 n^-0.500" in out.stdout and "stored as fit #1" in out.stdout and out.stderr == ""
    (row,) = fits_rows(tmp_path / "runs" / "scaletui.db")
    assert row["source"] == "d.csv"


@pytest.mark.parametrize("as_json", [False, True])
def test_csv_fit_that_cannot_be_stored_shows_the_law_notes_it_and_exits_0(tmp_path: Path, as_json: bool) -> None:
    write_law_csv(tmp_path / "d.csv")
    (tmp_path / "runs").write_text("a file where the database's folder would be\n")
    out = run_cli("fit", "--csv", "d.csv", "--csv-x", "n", "--csv-y", "loss", "--bootstrap", "0",
                  *(["--json"] if as_json else []), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    if as_json:
        (fit,) = json.loads(out.stdout)["fits"]
        assert fit["params"]["alpha"] == pytest.approx(0.5, abs=1e-3) and fit["fit_id"] is None
    else:
        assert "L = 0.3 + 40 n^-0.500" in out.stdout and "stored as" not in out.stdout
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("note: fit not stored: ")
    assert str(Path("runs") / "scaletui.db") in out.stderr and "Traceback" not in out.stderr


def test_csv_fit_refuses_a_database_that_is_not_scaletuis_before_fitting(tmp_path: Path) -> None:
    write_law_csv(tmp_path / "d.csv")
    (tmp_path / "notes.db").write_text("not a database\n")
    out = run_cli("fit", "--csv", "d.csv", "--csv-x", "n", "--csv-y", "loss", "--db", "notes.db", cwd=tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "notes.db: not an SQLite database" in out.stderr


def test_csv_group_by_fits_one_law_per_value_stores_each_and_lists_the_skipped(tmp_path: Path) -> None:
    rows = [f"{m},{n},{s * (0.3 + 40 * n**-0.5)}" for m, s in (("small", 1.0), ("large", 0.5))
            for n in (1e3, 4e3, 1.6e4, 6.4e4, 2.56e5)]
    csv = write_law_csv(tmp_path / "d.csv", "model,n,loss", [*rows, "tiny,1000,3.0"])
    db = tmp_path / "fits.db"
    out = run_cli("fit", "--csv", str(csv), "--csv-x", "n", "--csv-y", "loss", "--group-by", "model",
                  "--bootstrap", "0", "--json", "--db", str(db))
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert [f["group"] for f in doc["fits"]] == ["model=small", "model=large"]
    assert [f["n_points"] for f in doc["fits"]] == [5, 5]
    assert doc["skipped"] == [f"{csv} (model=tiny): only 1 distinct value(s) of x; a fit needs at least 2 sizes"]
    assert [r["grouping"] for r in fits_rows(db)] == ["model=small", "model=large"]
    text = run_cli("fit", "--csv", str(csv), "--csv-x", "n", "--csv-y", "loss", "--group-by", "model",
                   "--bootstrap", "0", "--no-save")
    assert f"{csv} (model=large): L(n)" in text.stdout and "skipped: " in text.stdout


def test_csv_group_by_on_the_revisiting_benchmark_fits_each_curve(tmp_path: Path) -> None:
    """Alabdulmohsin et al.'s language curves (1,398 rows, 20 curves, LM curves stored 4 times):
    one law per (Domain, Task, Model), each on its own rows, duplicates named."""
    from tests.refdata import data_dir

    csv = data_dir() / "external" / "revisiting_benchmark.lang.csv"
    if not csv.is_file():
        pytest.skip(f"reference data not found: {csv}")
    out = run_cli("fit", "--csv", str(csv), "--csv-x", "Seen Examples", "--csv-y", "Loss",
                  "--group-by", "Domain,Task,Model", "--bootstrap", "0", "--json", "--no-save", timeout=600)
    assert out.returncode == 0, out.stderr
    with csv.open(newline="", encoding="utf-8") as fh:
        rows = [tuple(r) for r in std_csv.reader(fh)][1:]
    curves = {r[:3] for r in rows}
    doc = json.loads(out.stdout)
    assert len(doc["fits"]) == len(curves) == 20 and doc["skipped"] == []
    assert sum(f["n_points"] for f in doc["fits"]) == len(rows)
    nmt = next(f for f in doc["fits"] if f["group"] == "Domain=NMT, Task=log_perplexity, Model=6 Enc, 6 Dec")
    # nothing wrong with the curve or its rows; with 11 sizes two forms may predict equally well, and that is said
    unclear = ("choice not clear: ", "residuals not clear: ")
    assert nmt["n_points"] == 11 and [w for w in nmt["warnings"] if not w.startswith(unclear)] == []
    assert len(nmt["forms"]) == 5 and sum(f["chosen"] for f in nmt["forms"]) == 1
    copies = [int(w.split()[0]) for f in doc["fits"] for w in f["warnings"] if "exact duplicates of earlier rows" in w]
    assert len(copies) == 5 and sum(copies) == len(rows) - len(set(rows))  # the 5 LM curves, each stored 4 times


def test_form_power_with_a_two_variable_csv_is_refused(tmp_path: Path, nd_csv: Path) -> None:
    out = run_cli("fit", "--csv", str(nd_csv), "--csv-x", "Model Size", "--csv-compute", "Training FLOP",
                  "--csv-y", "loss", "--form", "power", "--no-save", cwd=tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "--form power" in out.stderr and "--csv-compute" in out.stderr
    out = run_cli("fit", "--csv", str(nd_csv), "--csv-x", "Model Size", "--csv-y", "loss", "--form", "chinchilla",
                  "--no-save", cwd=tmp_path)
    assert out.returncode == 2 and "--form CHINCHILLA fits N and D: give --csv-d or --csv-compute" in out.stderr


def test_csv_group_resamples_by_a_column_and_duplicates_are_warned(tmp_path: Path) -> None:
    rows = [f"r{i},{n},{(0.3 + 40 * n**-0.5) * w}" for i, (n, w) in
            enumerate(zip((1e3, 4e3, 1.6e4, 6.4e4, 2.56e5, 1e6), (1.01, 0.99, 1.004, 0.996, 1.008, 0.993),
                          strict=True))]
    csv = write_law_csv(tmp_path / "d.csv", "run,n,loss", rows * 3)
    out = run_cli("fit", "--csv", str(csv), "--csv-x", "n", "--csv-y", "loss", "--csv-group", "run",
                  "--bootstrap", "40", "--no-save")
    assert out.returncode == 0, out.stderr
    assert "40 bootstrap resamples over 6 values of 'run'" in out.stdout
    assert "warning: 12 rows are exact duplicates of earlier rows" in out.stdout
    doc = json.loads(run_cli("fit", "--csv", str(csv), "--csv-x", "n", "--csv-y", "loss", "--bootstrap", "0",
                             "--json", "--no-save").stdout)
    assert any(w.startswith("12 rows are exact duplicates of earlier rows") for w in doc["fits"][0]["warnings"])


def test_two_variable_heldout_is_reported_per_point(tmp_path: Path) -> None:
    law = {"E": 1.7, "A": 400.0, "alpha": 0.34, "B": 410.0, "beta": 0.28}
    rows = [f"{n},{d},{law['E'] + law['A'] * n ** -law['alpha'] + law['B'] * d ** -law['beta']}"
            for n in (1e7, 3e7, 1e8, 3e8, 1e9, 3e9) for d in (100 * n, 400 * n)]
    csv = write_law_csv(tmp_path / "nd.csv", "N,D,loss", rows)
    out = run_cli("fit", "--csv", str(csv), "--csv-x", "N", "--csv-d", "D", "--csv-y", "loss", "--bootstrap", "0",
                  "--no-save")
    assert out.returncode == 0, out.stderr
    held = [line for line in out.stdout.splitlines() if line.startswith("held-out: largest 1 left out")]
    assert [line.split(": predicted")[0] for line in held] == [
        "held-out: largest 1 left out: N=3e+09, D=3e+11", "held-out: largest 1 left out: N=3e+09, D=1.2e+12"]
