"""`relish demo` end to end on a tiny backbone and a slice of the real data."""

import pytest

from sklearn_relish import _cli


def test_demo_prints_the_comparison_table(tiny_llama, capsys):
    try:
        from sklearn_relish.datasets import load_vader

        load_vader("tweets", download_if_missing=False)
    except OSError:
        pytest.skip("VADER data not prepared (make install prepares it)")
    code = _cli.main(["demo", "--backbone", tiny_llama, "--n-train", "60", "--n-test", "30",
                      "--verbose", "0"])
    out = capsys.readouterr().out
    assert code == 0
    assert "60 train / 30 test" in out
    for column in ("Pearson", "Spearman", "NRMSE", "R2", "time (s)"):
        assert column in out
    assert "TF-IDF + Ridge" in out and "RELISH" in out


def test_demo_rejects_a_split_larger_than_the_data(tiny_llama):
    pytest.importorskip("sklearn_relish.datasets")
    with pytest.raises(SystemExit, match="exceeds"):
        _cli.main(["demo", "--backbone", tiny_llama, "--n-train", "5000", "--n-test", "5000"])


@pytest.mark.parametrize("flags", [["--n-train", "-10"], ["--n-test", "0"], ["--n-test", "1"]])
def test_demo_rejects_a_split_too_small(tiny_llama, flags):
    # --n-train -10 sliced from the end: 4,190 texts trained on and none tested.
    pytest.importorskip("sklearn_relish.datasets")
    with pytest.raises(SystemExit, match="must be at least 2"):
        _cli.main(["demo", "--backbone", tiny_llama, *flags])


def test_demo_names_a_bad_seed_or_verbosity_before_any_work(tiny_llama, capsys):
    # --seed -1 failed with numpy's message, naming no flag; --verbose -1 only after the
    # TF-IDF baseline had run.
    pytest.importorskip("sklearn_relish.datasets")
    with pytest.raises(SystemExit, match="--seed must be between 0 and 2\\*\\*32 - 1, got -1"):
        _cli.main(["demo", "--backbone", tiny_llama, "--seed", "-1"])
    with pytest.raises(SystemExit):
        _cli.main(["demo", "--backbone", tiny_llama, "--verbose", "-1"])
    err = capsys.readouterr().err
    assert "--verbose: must be 0 or more, got -1" in err and "TF-IDF" not in err


def test_sigterm_while_an_output_is_written_leaves_no_temporary_file(tmp_path, monkeypatch,
                                                                     capsys):
    # SIGTERM ended Python without unwinding: a half-written hidden .tmp stayed behind.
    import os
    import signal
    import time

    from sklearn_relish import _cli
    from sklearn_relish._cli_tables import write_new_file

    def stopped_while_writing(args):
        def write(tmp):
            with open(tmp, "w") as file:
                file.write("half of it")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)  # the handler raises before this ends
        write_new_file(tmp_path / "out.csv", False, write)
        return 0

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(_cli, "demo", stopped_while_writing)
    assert _cli.main(["demo"]) == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []
    assert "relish: terminated" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before


def test_an_ignored_sigterm_stays_ignored(monkeypatch):
    # A parent that ignores SIGTERM for its children (nohup-like) is obeyed, as Python
    # obeys an ignored SIGINT: the run was stopped with exit 143.
    import os
    import signal

    from sklearn_relish import _cli

    def sent_sigterm(args):
        os.kill(os.getpid(), signal.SIGTERM)
        return 0

    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        monkeypatch.setattr(_cli, "demo", sent_sigterm)
        assert _cli.main(["demo"]) == 0
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_warnings_name_command_line_settings(capsys):
    _cli._show_warning(UserWarning("refit with intervals='cv', which calibrates"),
                       UserWarning, "x.py", 1)
    assert capsys.readouterr().err == (
        "relish: warning: refit with --param intervals=cv, which calibrates\n")

