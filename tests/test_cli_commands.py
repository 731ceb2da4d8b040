"""``relish fit / predict / evaluate`` end to end in a subprocess, and their one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import TARGETS, TEXTS

SMALL = ["--param", "latent_dim=16", "--param", "n_heads=2", "--param", "n_iterations=1",
         "--param", "max_epochs=3", "--param", "random_state=0", "--param",
         "validation_fraction=0.25", "--quiet"]


def relish(*args, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "sklearn_relish", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    table = pd.DataFrame({"review": TEXTS * 4, "score": TARGETS * 4,
                          "id": range(len(TEXTS) * 4)})
    table.to_csv(folder / "train.csv", index=False)
    table.head(10).to_parquet(folder / "new.parquet", index=False)
    table.head(10).to_json(folder / "new.jsonl", orient="records", lines=True)
    return folder


@pytest.fixture(scope="module")
def fitted(data, tiny_llama):
    done = relish("fit", data / "train.csv", "--text", "review", "--target", "score",
                  "-o", data / "model.joblib", "--param", f"backbone={tiny_llama}", *SMALL)
    assert done.returncode == 0, done.stderr
    # 16 distinct texts, each 4 times: a quarter of the texts (4) held out, with their
    # copies, each calibrating once.
    assert "saved to" in done.stdout and "4 texts held out for intervals" in done.stdout
    return data / "model.joblib"


def test_cv_plus_intervals_from_the_command_line(data, tiny_llama, tmp_path):
    # "cv+" is not a Python literal: it must reach the estimator as the word it is.
    done = relish("fit", data / "train.csv", "--text", "review", "--target", "score",
                  "-o", tmp_path / "cv.joblib", "--param", f"backbone={tiny_llama}", *SMALL,
                  "--param", "intervals=cv+", "--param", "interval_folds=3")
    assert done.returncode == 0, done.stderr
    assert "16 texts scored out of fold over 3 folds for intervals" in done.stdout
    out = tmp_path / "predictions.csv"
    done = relish("predict", tmp_path / "cv.joblib", data / "new.jsonl", "-o", out,
                  "--coverage", "0.8")
    assert done.returncode == 0, done.stderr
    result = pd.read_csv(out)
    assert np.all(result["lower"] < result["upper"])


def test_infinite_bounds_are_written_with_a_note_that_says_why(data, fitted, tmp_path):
    out = tmp_path / "predictions.csv"
    done = relish("predict", fitted, data / "new.jsonl", "-o", out, "--coverage", "0.95")
    assert done.returncode == 0, done.stderr
    assert np.all(np.isinf(pd.read_csv(out)[["lower", "upper"]].to_numpy()))
    assert done.stderr.count("4 calibration texts certify a coverage of at most 0.800") == 1
    assert "UserWarning" not in done.stderr  # the note, not the API's warning as well
    done = relish("predict", fitted, data / "new.jsonl", "-o", out, "--coverage", "0.8",
                  "--force")
    assert done.returncode == 0 and "note:" not in done.stderr


@pytest.mark.parametrize("new", ["new.parquet", "new.jsonl"])
def test_predict_with_intervals_in_every_format(data, fitted, new, tmp_path):
    out = tmp_path / "predictions.csv"
    done = relish("predict", fitted, data / new, "-o", out, "--coverage", "0.8")
    assert done.returncode == 0, done.stderr
    result = pd.read_csv(out)
    assert list(result.columns) == ["review", "score", "id", "prediction", "lower", "upper"]
    assert np.all(result["lower"] <= result["prediction"])
    assert np.all(result["prediction"] <= result["upper"])

    from sklearn_relish import load_model

    expected = load_model(fitted).predict(result[["review"]])
    np.testing.assert_allclose(result["prediction"], expected, rtol=1e-6)


def test_evaluate_prints_the_papers_metrics_and_draws_the_plot(data, fitted, tmp_path):
    done = relish("evaluate", fitted, data / "train.csv", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Pearson" in done.stdout and "score" in done.stdout
    plot = tmp_path / "train_model_predicted_vs_true.png"  # the data's and the model's names
    drawn = plot.read_bytes()
    assert drawn[:8] == b"\x89PNG\r\n\x1a\n"
    # Evaluating again still prints the metrics and keeps the plot it would have redrawn.
    again = relish("evaluate", fitted, data / "train.csv", cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.startswith(done.stdout.splitlines()[0])
    assert "not drawn, train_model_predicted_vs_true.png exists" in again.stdout
    assert plot.read_bytes() == drawn
    # A plot the user names is an output like any other: refused before the work.
    named = relish("evaluate", fitted, data / "train.csv", "--plot", plot, cwd=tmp_path)
    assert named.returncode == 2 and "exists; pass --force" in named.stderr
    assert named.stdout == "" and plot.read_bytes() == drawn


def test_evaluate_in_a_folder_it_cannot_write_prints_the_metrics_without_the_plot(
        data, fitted, tmp_path, monkeypatch, capsys):
    # The metrics printed, then a failure naming a hidden temporary file, exit 2: and
    # evaluating only reads. In process, so that os.access can play a read-only mount.
    from sklearn_relish._cli import main

    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: os.path.abspath(path) != str(tmp_path)
                        and real_access(path, mode))
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", str(fitted), str(data / "train.csv")]) == 0
    out = capsys.readouterr().out
    assert "Pearson" in out and "not drawn" in out and "is not writable here" in out
    assert list(tmp_path.iterdir()) == []


def test_a_second_model_on_the_same_data_draws_its_own_plot(data, fitted, tmp_path):
    other = tmp_path / "other.joblib"
    other.write_bytes(fitted.read_bytes())
    for model in (fitted, other):
        assert relish("evaluate", model, data / "train.csv", cwd=tmp_path).returncode == 0
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "train_model_predicted_vs_true.png", "train_other_predicted_vs_true.png"]


def test_a_model_file_the_commands_cannot_run_is_named(data, fitted, tmp_path):
    # save_model keeps a Pipeline, and joblib.dump an unfitted model (save_model refuses
    # one); the commands stopped with an AttributeError traceback on them.
    import joblib
    from sklearn.pipeline import make_pipeline

    from sklearn_relish import RelishTextRegressor, load_model, save_model

    save_model(make_pipeline(load_model(fitted)), tmp_path / "pipe.joblib")
    joblib.dump(RelishTextRegressor(), tmp_path / "unfitted.joblib")
    for name, message in (("pipe", "holds a Pipeline, not a RelishTextRegressor"),
                          ("unfitted", "never fitted")):
        for command in (["predict", "-o", tmp_path / f"{name}.csv"], ["evaluate"]):
            done = relish(command[0], tmp_path / f"{name}.joblib", data / "train.csv",
                          *command[1:], cwd=tmp_path)
            assert done.returncode == 2 and message in done.stderr, done.stderr
            assert "Traceback" not in done.stderr
    assert not list(tmp_path.glob("*.csv")) and not list(tmp_path.glob("*.png"))


def test_outputs_are_never_overwritten_without_force(data, fitted, tmp_path):
    out = tmp_path / "kept.csv"
    out.write_text("precious")
    done = relish("predict", fitted, data / "new.jsonl", "-o", out)
    assert done.returncode == 2 and "kept.csv exists; pass --force" in done.stderr
    assert out.read_text() == "precious"
    assert relish("predict", fitted, data / "new.jsonl", "-o", out, "--force").returncode == 0
    assert out.read_text() != "precious"


@pytest.mark.parametrize("args, message", [
    (["--text", "body", "--target", "score"], "no text column 'body'; its columns are"),
    (["--text", "review", "--target", "stars"], "no target column 'stars'"),
    (["--text", "review", "--target", "score", "--param", "speed=3"], "not a parameter"),
    (["--text", "review", "--target", "score", "--param", "lr"], "write it as name=value"),
])
def test_fit_errors_are_one_line(data, tmp_path, args, message):
    done = relish("fit", data / "train.csv", *args, "-o", tmp_path / "m.joblib")
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m.joblib").exists()


def test_empty_file_and_bad_row_are_named(tmp_path, tiny_llama):
    (tmp_path / "empty.csv").write_text("")
    done = relish("fit", tmp_path / "empty.csv", "--text", "t", "--target", "y", "-o",
                  tmp_path / "m.joblib")
    assert done.returncode == 2 and "empty.csv: the file is empty" in done.stderr
    pd.DataFrame({"t": ["good", "bad", "ok"], "y": [1, "high", 0]}).to_csv(
        tmp_path / "bad.csv", index=False)
    done = relish("fit", tmp_path / "bad.csv", "--text", "t", "--target", "y", "-o",
                  tmp_path / "m.joblib", "--param", f"backbone={tiny_llama}", "--quiet")
    assert done.returncode == 2, done.stderr
    assert "data row 2 (line 3): target 'y' is 'high', not a finite number" in done.stderr
    assert "Traceback" not in done.stderr


def test_missing_and_unknown_files(tmp_path, fitted):
    done = relish("predict", fitted, tmp_path / "nope.csv", "-o", tmp_path / "p.csv")
    assert done.returncode == 2 and "nope.csv: no such file" in done.stderr
    (tmp_path / "data.xlsx").write_text("x")
    done = relish("predict", fitted, tmp_path / "data.xlsx", "-o", tmp_path / "p.csv")
    assert done.returncode == 2 and "unknown file type '.xlsx'" in done.stderr
    (tmp_path / "model.joblib").write_bytes(b"not a model")
    done = relish("predict", tmp_path / "model.joblib", tmp_path / "data.xlsx", "-o",
                  tmp_path / "p.csv")
    assert done.returncode == 2 and "damaged or truncated" in done.stderr
    # The data named first: told which argument is which, not to restore a backup.
    (tmp_path / "new.csv").write_text("text\nfine\n")
    done = relish("predict", tmp_path / "new.csv", fitted, "-o", tmp_path / "p.csv")
    assert done.returncode == 2 and "new.csv is not a model file" in done.stderr
    assert "relish predict MODEL DATA" in done.stderr and "backup" not in done.stderr


def test_fit_refuses_a_table_name_for_its_model_file(data, tmp_path):
    done = relish("fit", data / "train.csv", "--text", "review", "--target", "score",
                  "-o", tmp_path / "out_model.csv")
    assert done.returncode == 2 and "fit writes a model file" in done.stderr
    assert not (tmp_path / "out_model.csv").exists()
    # Over an existing table, the refusal is the same: "exists; pass --force" would have
    # invited replacing the user's predictions with a pickle.
    (tmp_path / "out_model.csv").write_text("id,prediction\n1,0.5\n")
    done = relish("fit", data / "train.csv", "--text", "review", "--target", "score",
                  "-o", tmp_path / "out_model.csv")
    assert done.returncode == 2 and "fit writes a model file" in done.stderr
    assert "--force" not in done.stderr
    assert (tmp_path / "out_model.csv").read_text() == "id,prediction\n1,0.5\n"


def test_missing_text_is_named_by_its_row(tmp_path, tiny_llama):
    pd.DataFrame({"t": ["good", "", "ok"], "y": [1, 2, 0]}).to_csv(tmp_path / "gap.csv",
                                                                   index=False)
    done = relish("fit", tmp_path / "gap.csv", "--text", "t", "--target", "y", "-o",
                  tmp_path / "m.joblib", "--param", f"backbone={tiny_llama}", "--quiet")
    assert done.returncode == 2 and "data row 2 (line 3)" in done.stderr, done.stderr
    assert "text 't' is empty" in done.stderr and "fillna" not in done.stderr


@pytest.fixture(scope="module")
def two_targets(data, tiny_llama):
    # Fitted without --quiet, so the model keeps verbose=1; "negated" is -score.
    table = pd.read_csv(data / "train.csv").assign(negated=lambda t: -t["score"])
    table.to_csv(data / "two.csv", index=False)
    small = [arg for arg in SMALL if arg != "--quiet"]
    done = relish("fit", data / "two.csv", "--text", "review", "--target", "score",
                  "--target", "negated", "-o", data / "two.joblib",
                  "--param", f"backbone={tiny_llama}", *small)
    assert done.returncode == 0, done.stderr
    return data / "two.joblib"


def test_evaluate_pairs_targets_by_name(data, two_targets, tmp_path):
    # --target negated alone must score the "negated" output, not the first one: the
    # outputs of a fit are far apart (one is the other's negation), so the metrics tell.
    from sklearn_relish import load_model
    from sklearn_relish.metrics import regression_report

    table = pd.read_csv(data / "two.csv")
    predictions = load_model(two_targets).predict(table[["review"]])
    expected = regression_report(table["negated"].to_numpy(), predictions[:, 1])
    done = relish("evaluate", two_targets, data / "two.csv", "--target", "negated",
                  "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if line.startswith("negated"))
    assert float(row.split()[1]) == pytest.approx(100 * expected["pearson"], abs=0.06)


@pytest.mark.parametrize("targets", [["negated", "elsewhere"], ["elsewhere"]])
def test_evaluate_refuses_targets_it_cannot_pair(data, two_targets, tmp_path, targets):
    args = [arg for name in targets for arg in ("--target", name)]
    done = relish("evaluate", two_targets, data / "two.csv", *args, cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "predicts 2 target(s), ['score', 'negated']" in done.stderr


def test_quiet_silences_a_model_fitted_with_progress_bars(data, two_targets, tmp_path):
    done = relish("predict", two_targets, data / "new.jsonl", "-o", tmp_path / "p.csv",
                  "--quiet")
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == ""
    loud = relish("predict", two_targets, data / "new.jsonl", "-o", tmp_path / "q.csv")
    assert loud.returncode == 0 and loud.stderr.strip() != ""  # the bars the test silences


def test_a_text_column_of_digits_is_read_as_text(tmp_path):
    # Product codes or years as the text: a CSV reader would make them integers (and "007"
    # the number 7), which a fit then refuses as not text.
    from sklearn_relish._cli_tables import read_table

    pd.DataFrame({"code": ["007", "12", "300"], "y": [1.0, 2.0, 3.0]}).to_csv(
        tmp_path / "codes.csv", index=False)
    table = read_table(tmp_path / "codes.csv", text_columns=["code", "absent"])
    assert list(table["code"]) == ["007", "12", "300"]
    assert table["y"].dtype == np.float64


def test_numbers_in_a_json_lines_text_column_become_text(tmp_path):
    from sklearn_relish._cli_tables import CommandError, read_table, text_columns

    (tmp_path / "codes.jsonl").write_text('{"code": 7, "y": 1}\n{"code": "abc", "y": 2}\n')
    table = read_table(tmp_path / "codes.jsonl", text_columns=["code"])
    texts = text_columns(table, ["code"], "codes.jsonl")
    assert list(texts["code"]) == ["7", "abc"]
    assert table["code"][0] == 7  # the table itself, written back by predict, is unchanged
    # A null is no number to turn into text: named in the file's terms.
    (tmp_path / "codes.jsonl").write_text('{"code": 7, "y": 1}\n{"code": null, "y": 3}\n')
    table = read_table(tmp_path / "codes.jsonl", text_columns=["code"])
    with pytest.raises(CommandError, match=r"^codes.jsonl: data row 2: text 'code' is empty"):
        text_columns(table, ["code"], "codes.jsonl")


def test_predict_writes_the_other_columns_back_as_they_were(data, fitted, tmp_path):
    # Codes, zip codes and prices: a reader that guesses types wrote 2139, 7.0, 1000.0, 1.1.
    lines = ["review,zip,sku,price,note", "good film,02139,007,1.10,NA",
             "dull,10001,1e3,2.50,"]
    (tmp_path / "new.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "scored.csv"
    done = relish("predict", fitted, tmp_path / "new.csv", "-o", out)
    assert done.returncode == 0, done.stderr
    written = out.read_text().splitlines()
    assert written[0] == "review,zip,sku,price,note,prediction"
    assert [row.rsplit(",", 1)[0] for row in written[1:]] == lines[1:]


def test_a_plot_that_appears_during_evaluate_is_kept(tmp_path):
    from sklearn_relish._cli_commands import _scatter
    from sklearn_relish._cli_tables import CommandError

    plot = tmp_path / "plot.png"
    plot.write_bytes(b"the user's own")  # written after evaluate's first check
    values = np.arange(6.0).reshape(-1, 1)
    with pytest.raises(CommandError, match="exists; pass --force"):
        _scatter(values, values, ["score"], plot, force=False)
    assert plot.read_bytes() == b"the user's own"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.png"]  # no temporary left
    _scatter(values, values, ["score"], plot, force=True)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("targets, fitted, n_outputs, expected", [
    (["negated"], ["score", "negated"], 2, [1]),
    (["negated", "score"], ["score", "negated"], 2, [1, 0]),
    (["a", "b"], ["score", "negated"], 2, [0, 1]),  # renamed columns: by position
    (["target"], None, 1, [0]),  # no names recorded: by position
    (["x", "y"], None, 2, [0, 1]),
])
def test_outputs_are_paired_by_name_or_by_position(targets, fitted, n_outputs, expected):
    from sklearn_relish._cli_commands import _outputs_for

    assert _outputs_for(targets, fitted, n_outputs, "m.joblib") == expected


@pytest.mark.parametrize("targets, fitted, n_outputs", [
    (["score", "score"], ["score", "negated"], 2),  # twice the same column
    (["score", "other"], ["score", "negated"], 2),  # a mix of names
    (["other"], ["score", "negated"], 2),
    (["x"], None, 2),
])
def test_ambiguous_target_pairings_are_refused(targets, fitted, n_outputs):
    from sklearn_relish._cli_commands import _outputs_for
    from sklearn_relish._cli_tables import CommandError

    with pytest.raises(CommandError, match=r"names a column twice|"
                       r"m\.joblib predicts \d target\(s\).*got \["):
        _outputs_for(targets, fitted, n_outputs, "m.joblib")


def test_rows_longer_than_the_header_are_refused_not_shifted(tmp_path):
    # pandas took the extra field for an index and shifted every column left: predictions
    # for the ids, and the texts dropped from the output.
    from sklearn_relish._cli_tables import CommandError, read_table

    (tmp_path / "extra.csv").write_text("review,id\ngood movie,17,\nawful plot,18,\n")
    with pytest.raises(CommandError, match="more fields than its header"):
        read_table(tmp_path / "extra.csv", verbatim=True)
    # One row further down: named by its line in our words, not the C parser's.
    (tmp_path / "one.csv").write_text("review,id\ngood movie,17\nawful plot,18,\nok,19\n")
    with pytest.raises(CommandError, match=r"one.csv: line 3 has 3 fields, but the rows "
                                           r"above it have 2 \(a trailing separator\?\)"):
        read_table(tmp_path / "one.csv", verbatim=True)


def test_a_parquet_index_is_kept_as_a_column(tmp_path):
    from sklearn_relish._cli_tables import read_table

    frame = pd.DataFrame({"doc_id": ["a1", "b2"], "review": ["good", "bad"]})
    frame.set_index("doc_id").to_parquet(tmp_path / "ix.parquet")
    assert list(read_table(tmp_path / "ix.parquet").columns) == ["doc_id", "review"]


def test_force_never_replaces_an_input(tmp_path):
    from sklearn_relish._cli_tables import CommandError, refuse_to_overwrite

    data = tmp_path / "train.csv"
    data.write_text("review,score\ngood,1\n")
    for same in (data, tmp_path / "." / "train.csv"):
        with pytest.raises(CommandError, match="is the command's input"):
            refuse_to_overwrite(same, True, inputs=[data])
    assert refuse_to_overwrite(tmp_path / "other.csv", True, inputs=[data])


def test_an_empty_or_infinite_number_cell_is_named(tmp_path):
    from sklearn_relish._cli_commands import _numeric
    from sklearn_relish._cli_tables import CommandError, read_table

    for cell, what in (("", "is empty"), ("inf", "is inf, not a finite number"),
                       ("high", "is 'high', not a finite number")):
        path = tmp_path / "data.csv"
        path.write_text(f"score,id\n1,a\n{cell},b\n2,c\n")
        with pytest.raises(CommandError, match=f"data row 2 \\(line 3\\): weight 'score' {what}"):
            _numeric(read_table(path)[["score"]], str(path), "weight")


def test_predict_refuses_before_predicting(data, fitted, tmp_path):
    # A column the predictions would overwrite, a bad coverage, an unknown output type:
    # each named at once, nothing written, the user's table intact.
    (tmp_path / "own.csv").write_text("review,prediction\ngood film,my value\n")
    model_file = fitted.read_bytes()
    cases = [(["own.csv", "-o", "o.csv"], "already has a column 'prediction'"),
             ([data / "new.jsonl", "-o", "o.csv", "--coverage", "90"], "--coverage"),
             ([data / "new.jsonl", "-o", "o.xlsx"], "unknown file type '.xlsx'"),
             ([data / "new.jsonl", "-o", fitted, "--force"], "is the command's input")]
    for args, message in cases:
        done = relish("predict", fitted, *args, cwd=tmp_path)
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["own.csv"]
    assert fitted.read_bytes() == model_file


def test_text_maps_a_renamed_column_onto_the_fitted_one(fitted, tmp_path):
    # The model was fitted on "review"; a new file names it "body". --text said so, and
    # the prediction was refused for a feature-name mismatch.
    pd.DataFrame({"body": TEXTS[:3]}).to_csv(tmp_path / "renamed.csv", index=False)
    pd.DataFrame({"review": TEXTS[:3]}).to_csv(tmp_path / "same.csv", index=False)
    for name, extra in [("renamed", ["--text", "body"]), ("same", [])]:
        done = relish("predict", fitted, tmp_path / f"{name}.csv", "-o",
                      tmp_path / f"{name}-out.csv", *extra)
        assert done.returncode == 0, done.stderr
    renamed = pd.read_csv(tmp_path / "renamed-out.csv")
    same = pd.read_csv(tmp_path / "same-out.csv")
    assert list(renamed.columns) == ["body", "prediction"]
    np.testing.assert_allclose(renamed["prediction"], same["prediction"], rtol=1e-6)
    done = relish("predict", fitted, tmp_path / "renamed.csv", "-o", tmp_path / "x.csv",
                  "--text", "body", "--text-pair", "body")
    assert done.returncode == 2 and "fitted on 1 text column(s) ('review')" in done.stderr
    # --text-pair without --text was silently ignored.
    done = relish("predict", fitted, tmp_path / "renamed.csv", "-o", tmp_path / "y.csv",
                  "--text-pair", "body")
    assert done.returncode == 2 and "--text-pair needs --text" in done.stderr
    assert not (tmp_path / "y.csv").exists()


def test_json_lines_with_a_byte_order_mark_and_integer_ids_round_trip(fitted, tmp_path):
    # A BOM (Windows tools write one) made the file unreadable; an integer id column with
    # a null came back as floats (7 written as 7.0).
    source = tmp_path / "bom.jsonl"
    source.write_bytes(b'\xef\xbb\xbf{"review": "good film", "id": 7}\n\n'
                       b'{"review": "dull", "id": null, "tags": ["a", 1]}\n')
    out = tmp_path / "out.jsonl"
    done = relish("predict", fitted, source, "-o", out)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["id"] for row in rows] == [7, None]
    assert rows[1]["tags"] == ["a", 1] and rows[0].get("tags") is None
    (tmp_path / "bad.jsonl").write_text('{"review": "a"}\n[1, 2]\n')
    done = relish("predict", fitted, tmp_path / "bad.jsonl", "-o", tmp_path / "b.jsonl")
    assert done.returncode == 2 and "line 2 is not a JSON object" in done.stderr


def test_csv_errors_name_the_line_a_row_starts_on(data, tiny_llama, tmp_path):
    # A quoted cell over three lines and a blank line: the bad row starts on line 7, and
    # "row + 2" said line 4.
    (tmp_path / "multi.csv").write_text(
        'review,score\n"a review\nover three\nlines",1\n\ngood,2\nbad,x\n')
    done = relish("fit", tmp_path / "multi.csv", "--text", "review", "--target", "score",
                  "-o", tmp_path / "m.joblib", "--param", f"backbone={tiny_llama}", *SMALL)
    assert done.returncode == 2
    assert "data row 3 (line 7): target 'score' is 'x'" in done.stderr


def test_row_lines_are_counted_as_pandas_counts_rows(tmp_path):
    # "," is a row of empty cells to pandas (the "target is empty" case); a line of spaces
    # is skipped. Counting them the other way round named the wrong line.
    from sklearn_relish._cli_commands import _numeric
    from sklearn_relish._cli_tables import CommandError, read_table, row_label

    path = tmp_path / "data.csv"
    path.write_text('review,score\n   \n,\n"two\nlines",1\n""\ngood,x\n')
    table = read_table(path)
    assert len(table) == 4
    assert [row_label(path, row) for row in range(4)] == [
        "data row 1 (line 3)", "data row 2 (line 4)", "data row 3 (line 6)",
        "data row 4 (line 7)"]
    with pytest.raises(CommandError, match=r"data row 1 \(line 3\): target 'score' is empty"):
        _numeric(table[["score"]], str(path))


@pytest.mark.parametrize("line, words", [
    ('{"review": "a", "y": Infinity}', "Infinity is not JSON"),
    ('{"review": "a", "y": NaN}', "NaN is not JSON"),
    ('{"review": "a", "review": "b"}', "the key 'review' appears twice"),
])
def test_json_lines_that_could_not_be_written_back_as_read_are_refused(tmp_path, line, words):
    # Python's json took NaN/Infinity (written back as null) and kept the last of two keys.
    from sklearn_relish._cli_tables import CommandError, read_table

    path = tmp_path / "data.jsonl"
    path.write_text('{"review": "ok", "y": 1}\n' + line + "\n")
    with pytest.raises(CommandError, match=f"line 2: {words}"):
        read_table(path)


def test_tsv_is_read_and_written_without_quoting(tmp_path):
    # A TSV has no quoting (STS-B and most TSV exports): a cell starting with a quote
    # swallowed the rows after it, and 'She said "no".' came back rewritten.
    from sklearn_relish._cli_tables import CommandError, read_table, write_table

    lines = ['sentence1\tsentence2\tscore', '"Hello, he said.\tSomeone greets.\t3.0',
             'A dog runs.\tA cat sleeps.\t0.5', 'She said "no".\t"Yes" she answered\t1.0']
    (tmp_path / "pairs.tsv").write_text("\n".join(lines) + "\n")
    table = read_table(tmp_path / "pairs.tsv", verbatim=True)
    assert len(table) == 3
    assert list(table["sentence1"]) == ['"Hello, he said.', "A dog runs.", 'She said "no".']
    write_table(table, tmp_path / "out.tsv", force=False)
    assert (tmp_path / "out.tsv").read_text().splitlines() == lines
    table.loc[1, "sentence2"] = "a tab\there"
    with pytest.raises(CommandError, match="column 'sentence2', data row 2, holds a tab"):
        write_table(table, tmp_path / "bad.tsv", force=False)
    assert not (tmp_path / "bad.tsv").exists()


def test_json_lines_are_written_with_every_digit(tmp_path):
    # pandas' writer rounded to 10 decimals: 1.5e-12 became 0.0, 48.858370123456 lost digits.
    from sklearn_relish._cli_tables import read_table, write_table

    values = [1.5e-12, 48.858370123456, 0.123456789012345, 3.0000000000000004e-09]
    table = pd.DataFrame({"x": values, "when": pd.to_datetime(["2026-01-02"] * 4),
                          "n": [1, 2, 3, 4], "gap": [1.0, np.nan, 2.0, 3.0]})
    write_table(table, tmp_path / "out.jsonl", force=False)
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [row["x"] for row in rows] == values
    assert rows[0]["when"].startswith("2026-01-02") and rows[1]["gap"] is None
    assert [row["n"] for row in rows] == [1, 2, 3, 4]
    assert list(read_table(tmp_path / "out.jsonl")["x"]) == values


def test_a_cell_a_tsv_cannot_hold_is_refused_before_predicting(fitted, tmp_path,
                                                               monkeypatch, capsys):
    # Refused by the writer, after every text had been through the LLM.
    from sklearn_relish import _cli, _cli_commands

    (tmp_path / "nl.csv").write_text('review\n"two\nlines"\nfine\n')
    monkeypatch.setattr(_cli_commands, "_predict",
                        lambda *args: pytest.fail("predicted before refusing"))
    code = _cli.main(["predict", str(fitted), str(tmp_path / "nl.csv"), "-o",
                      str(tmp_path / "o.tsv")])
    assert code == 2
    assert "column 'review', data row 1, holds a tab or a line break" in capsys.readouterr().err
    assert not (tmp_path / "o.tsv").exists()


def test_only_errors_about_the_data_name_the_data_file():
    # A fitted model whose backbone folder had moved was reported as
    # "nl.csv: backbone='...': no such folder", sending the user to the table.
    from sklearn_relish._cli_tables import row_error

    moved = row_error(ValueError("backbone='/models/m': no such folder (/models/m)."), "d.jsonl")
    assert str(moved) == "backbone='/models/m': no such folder (/models/m)."
    assert str(row_error(ValueError("X[1] is missing (None)."), "d.jsonl")) == (
        "d.jsonl: data row 2: X[1] is missing (None).")
    assert str(row_error(ValueError("X has 2 column(s) but ..."), "d.jsonl")).startswith("d.jsonl")


def test_coverage_without_intervals_is_refused_before_the_llm_runs(fitted, data, tmp_path):
    # Refused only after every text had been through the LLM (hours on a big file), and
    # blamed on the data file.
    from sklearn_relish import load_model, save_model

    model = load_model(fitted)
    model.calibration_scores_ = None  # as a fit without a hold-out leaves it
    save_model(model, tmp_path / "plain.joblib")
    done = relish("predict", tmp_path / "plain.joblib", data / "new.jsonl", "-o",
                  tmp_path / "o.csv", "--coverage", "0.9")
    assert done.returncode == 2
    assert "plain.joblib has no prediction intervals" in done.stderr, done.stderr
    assert not (tmp_path / "o.csv").exists()


def test_evaluate_refuses_a_plot_not_named_png_and_a_single_row(data, fitted, tmp_path):
    # --plot plot.csv wrote a PNG under a table's name; one row printed nan four times.
    done = relish("evaluate", fitted, data / "new.parquet", "--plot", tmp_path / "plot.csv")
    assert done.returncode == 2 and "the plot is a PNG; name it e.g. plot.png" in done.stderr
    assert not (tmp_path / "plot.csv").exists()
    pd.read_parquet(data / "new.parquet").head(1).to_csv(tmp_path / "one.csv", index=False)
    done = relish("evaluate", fitted, tmp_path / "one.csv", "--plot", tmp_path / "p.png")
    assert done.returncode == 2 and "one.csv: has 1 row; the metrics compare at least 2" \
        in done.stderr


def test_warnings_are_one_line_in_the_commands_voice(tmp_path, tiny_llama):
    # Python's format printed the package's source line under the message.
    pd.DataFrame({"t": ["good", "bad", "ok"], "y": [1.0, 2.0, 3.0]}).to_csv(
        tmp_path / "three.csv", index=False)
    done = relish("fit", tmp_path / "three.csv", "--text", "t", "--target", "y", "-o",
                  tmp_path / "m.joblib", "--param", f"backbone={tiny_llama}", *SMALL)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines and all(line.startswith("relish: warning: ") for line in lines), lines
    assert any("early_stopping needs at least 2 validation texts" in line for line in lines)
