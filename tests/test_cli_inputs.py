"""The command line's tables and arguments: what is ambiguous is refused before any work,
and each refusal names what the user wrote (a column, a --param), not something else."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import pytest
from test_cli_commands import relish

from sklearn_relish._cli_commands import parse_params
from sklearn_relish._cli_tables import CommandError, read_table, refuse_to_overwrite


@pytest.mark.parametrize("header, words", [
    ("review,score,score", "column 'score' twice (columns 2 and 3)"),
    (",review,", "a column without a name twice (columns 1 and 3)"),
])
def test_a_repeated_column_name_is_refused_not_renamed(tmp_path, header, words):
    # pandas renamed the second 'score' to 'score.1': --target score trained on the first
    # without a word about the other.
    path = tmp_path / "dup.csv"
    path.write_text(f"{header}\ngood,1,2\nbad,3,4\n")
    with pytest.raises(CommandError, match=re.escape(words)):
        read_table(path, verbatim=True)


def test_a_blank_column_name_is_kept_blank(tmp_path):
    # DataFrame.to_csv() writes its index under a blank name; pandas read it back as
    # 'Unnamed: 0', which predict then wrote into the user's header.
    path = tmp_path / "indexed.tsv"
    path.write_text("\treview\n0\tgood\n1\tbad\n")
    table = read_table(path, verbatim=True)
    assert list(table.columns) == ["", "review"]
    assert list(table["review"]) == ["good", "bad"]


def test_bad_param_values_are_named_as_params():
    # "train.csv: The 'lr' parameter ... must be a float" sent users to their data file.
    for pair, name in [("lr=abc", "lr"), ("n_heads=0", "n_heads"),
                       ("backbone_kwargs={[1]: 2}", "backbone_kwargs")]:
        with pytest.raises(CommandError, match=rf"^--param \(.*{name}=.*\): .*'{name}'"):
            parse_params([pair])
    assert parse_params(["lr=0.01", "intervals=cv+"]) == {"lr": 0.01, "intervals": "cv+"}


def test_switches_take_the_shells_spellings_of_true_and_false():
    assert parse_params(["early_stopping=false", "input_norm=Yes"]) == {
        "early_stopping": False, "input_norm": True}
    assert parse_params(["early_stopping=False"]) == {"early_stopping": False}
    # Only switches: elsewhere "false" stays a word, for the estimator to judge.
    with pytest.raises(CommandError, match="--param .*intervals='false'"):
        parse_params(["intervals=false"])
    with pytest.raises(CommandError, match="early_stopping='maybe'"):
        parse_params(["early_stopping=maybe"])


def test_an_output_that_is_a_folder_is_refused_before_the_work(tmp_path):
    (tmp_path / "out").mkdir()
    for force in (False, True):
        with pytest.raises(CommandError, match="is a folder"):
            refuse_to_overwrite(tmp_path / "out", force)


@pytest.mark.parametrize("kind", ["csv", "tsv"])
def test_a_blank_line_between_rows_of_a_one_column_file_is_refused_not_dropped(tmp_path,
                                                                               kind):
    # pandas skipped it: predict wrote 3 predictions for a file of 5 rows, and said done.
    path = tmp_path / f"texts.{kind}"
    path.write_text("text\nhappy\n\nsad\n   \nok\n")
    with pytest.raises(CommandError, match=rf"{path.name}: line 3 is blank: .* empty text"):
        read_table(path, verbatim=True)
    path.write_text("text\nhappy\nsad\n\n\n")  # blank lines at the end are no rows
    assert list(read_table(path, verbatim=True)["text"]) == ["happy", "sad"]
    path.write_text('text\n"two\n\nparagraphs"\nok\n' if kind == "csv" else "text\nok\n")
    assert len(read_table(path, verbatim=True)) == (2 if kind == "csv" else 1)  # quoted
    if kind == "csv":  # a quoted whitespace text is a text, as pandas reads it
        path.write_text('text\nhello\n"  "\nworld\n')
        assert list(read_table(path, verbatim=True)["text"]) == ["hello", "  ", "world"]
    # Past a cell longer than Python's csv field limit (128 KiB), still checked.
    path.write_text("text\n" + "a" * 200_000 + "\n\nb\n")
    with pytest.raises(CommandError, match="line 3 is blank"):
        read_table(path, verbatim=True)


def test_a_tsv_quoted_the_csv_way_is_refused_not_read_with_its_quotes(tmp_path):
    # pandas' to_csv(sep="\t") quotes a cell holding a quote or a line break: read as TSV
    # (no quoting), its text kept the quotes and the line break split the row, silently.
    import pandas as pd

    path = tmp_path / "pd.tsv"
    pd.DataFrame({"text": ['He said "great" twice', "first line\nsecond line"],
                  "score": [1, 2]}).to_csv(path, sep="\t", index=False)
    with pytest.raises(CommandError, match=r"data row 1 \(line 2\): column 'text' .* quoted "
                                           r"the CSV way .* save the file as \.csv"):
        read_table(path, verbatim=True)
    # A line break and no quote: the cell is quoted all the same, and split in two.
    for name, frame in [("nl.tsv", {"text": ["first line\nsecond line", "ok"], "id": [1, 2]}),
                        ("nl1.tsv", {"text": ["first\nsecond", "third"]})]:
        pd.DataFrame(frame).to_csv(tmp_path / name, sep="\t", index=False)
        with pytest.raises(CommandError, match=r"data row 1 .*\(a line break inside quotes\)"):
            read_table(tmp_path / name, verbatim=True)
    # Quotes in real texts are texts: a quoted phrase, quotes around a whole text.
    path.write_text('text\tscore\n"Great movie" said my friend\t1\n"all of it"\t2\n')
    assert list(read_table(path, verbatim=True)["text"]) == [
        '"Great movie" said my friend', '"all of it"']


def test_an_output_folder_that_cannot_take_the_file_is_refused_before_the_work(tmp_path,
                                                                                monkeypatch):
    # Found only when the temporary file was created after the work, named in the error.
    (tmp_path / "a.csv").write_text("x\n")
    with pytest.raises(CommandError, match=r"a\.csv is a file, not a folder"):
        refuse_to_overwrite(tmp_path / "a.csv" / "out.csv", force=False)
    locked = tmp_path / "locked"
    locked.mkdir()
    # A read-only mount (root ignores permission bits, not a read-only file system).
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked
                        and real_access(path, mode))
    with pytest.raises(CommandError, match="locked is not writable"):
        refuse_to_overwrite(locked / "out.csv", force=False)
    assert refuse_to_overwrite(tmp_path / "out.csv", force=False) == tmp_path / "out.csv"
    # A link replaced with --force is written beside its target: that folder decides.
    (tmp_path / "real.csv").write_text("old\n")
    (locked / "current.csv").symlink_to(tmp_path / "real.csv")
    assert refuse_to_overwrite(locked / "current.csv", force=True) == locked / "current.csv"
    (tmp_path / "link.csv").symlink_to(locked / "target.csv")
    with pytest.raises(CommandError, match="locked is not writable"):
        refuse_to_overwrite(tmp_path / "link.csv", force=True)


def test_true_and_false_targets_are_refused_as_the_word_true_is(tmp_path):
    # A column of booleans was read as 1/0 and trained on; 'True' among numbers refused.
    from sklearn_relish._cli_commands import _numeric

    for rows in ("True\nFalse\nFalse", "1\nTrue\n0"):
        path = tmp_path / "t.csv"
        path.write_text("text,score\n" + "\n".join(
            f"t{i},{v}" for i, v in enumerate(rows.split("\n"))) + "\n")
        table = read_table(path, verbatim=False)
        with pytest.raises(CommandError, match=r"target 'score' is .?True.?, not a finite"):
            _numeric(table[["score"]], str(path))


def test_fit_refuses_a_repeated_target_and_names_a_negative_weights_column(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("review,score,w\ngood,1,1\nbad,-1,1\nfine,0.5,-2\n")
    done = relish("fit", path, "--text", "review", "--target", "score", "--target", "score",
                  "-o", tmp_path / "m.joblib")
    assert done.returncode == 2 and "--target names a column twice" in done.stderr
    done = relish("fit", path, "--text", "review", "--target", "score", "--sample-weight",
                  "w", "-o", tmp_path / "m.joblib")
    assert done.returncode == 2
    assert "data row 3 (line 4): sample weight 'w' is -2, below 0" in done.stderr
    assert not (tmp_path / "m.joblib").exists()


def test_r2_of_a_constant_truth_is_nan_like_the_other_metrics():
    from sklearn_relish.metrics import regression_report

    report = regression_report([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])
    assert all(math.isnan(value) for value in report.values())


def test_a_semicolon_export_and_a_latin1_file_are_named_for_what_they_are(tmp_path):
    # "more fields than its header names (a trailing separator?)" for a European export
    # (';' between fields, decimal commas), and a codec traceback line for Latin-1.
    (tmp_path / "eu.csv").write_text("text;score\nhello;1,5\nbye;2,0\n")
    with pytest.raises(CommandError, match=r"';'-separated export.*save it as "
                                           r"comma-separated, or as TSV"):
        read_table(tmp_path / "eu.csv", verbatim=True)
    (tmp_path / "plain.csv").write_text("text,score\nhello,1\nbye,2,\n")
    with pytest.raises(CommandError, match=r"trailing separator\?\)") as caught:
        read_table(tmp_path / "plain.csv", verbatim=True)
    assert "';'" not in str(caught.value)  # only where the header holds one
    # The line is counted in the file: the decoder's position counted from pandas' buffer.
    rows = "".join(f"row {i},1\n" for i in range(100_000))
    (tmp_path / "latin.csv").write_bytes(f"text,score\n{rows}caf\u00e9,1\n".encode("latin-1"))
    with pytest.raises(CommandError, match=r"latin.csv: is not UTF-8 text \(byte 0xe9 on line "
                                           r"100002\); save it as UTF-8"):
        read_table(tmp_path / "latin.csv", verbatim=True)


def test_one_column_as_both_texts_of_a_pair_is_refused(tmp_path):
    (tmp_path / "t.csv").write_text("text,score\ngood,1\nbad,2\n")
    done = relish("fit", tmp_path / "t.csv", "--text", "text", "--text-pair", "text",
                  "--target", "score", "-o", tmp_path / "m.joblib")
    assert done.returncode == 2
    assert done.stderr.strip() == ("relish: error: --text and --text-pair name the same "
                                   "column ('text'); a pair needs two columns")


def test_a_non_text_cell_is_named_in_the_files_terms_not_pythons():
    # "Convert the column to text first, e.g. X.astype(str)" was advice for Python users.
    from sklearn_relish._cli_tables import row_error

    error = TypeError("X[0] is a dict ({'a': 1}), not a str. Convert the column to text "
                      "first, e.g. X.astype(str).")
    message = str(row_error(error, "new.jsonl"))
    assert message.startswith("new.jsonl: data row 1: ")
    assert "astype" not in message and "Write it as text in the file." in message

