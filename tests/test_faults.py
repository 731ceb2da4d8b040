"""Faults found by adversarial use: each must give an error or the right answer, never a
silently wrong one (issue 14). Damaged model files are in test_persistence.py, cache faults
in test_cache.py, backbone fingerprints in test_backbones.py."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TARGETS, TEXTS, small_regressor
from sklearn.model_selection import KFold, cross_val_score

from sklearn_relish import _net, set_cache_max_bytes
from sklearn_relish._featurizer import LLMFeaturizer

PAIRS = [(a, b) for a, b in zip(TEXTS, TEXTS[1:] + TEXTS[:1], strict=True)]


def interrupt_on_call(monkeypatch, owner, name: str, on_call: int) -> list:
    """Make ``owner.name`` raise KeyboardInterrupt on its ``on_call``-th call (Ctrl-C)."""
    original = getattr(owner, name)
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == on_call:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    return calls


# -- Ctrl-C is never swallowed ----------------------------------------------------------------
def test_interrupt_during_training_propagates_from_fit(tiny_llama, monkeypatch):
    # skorch catches KeyboardInterrupt in its training loop and returns a half-trained net.
    calls = interrupt_on_call(monkeypatch, _net.RelishNet, "train_step", on_call=3)
    model = small_regressor(tiny_llama, max_epochs=5)
    with pytest.raises(KeyboardInterrupt):
        model.fit(TEXTS, TARGETS)
    assert len(calls) == 3  # stopped at once, not after finishing the epoch or the fit
    assert not hasattr(model, "net_")  # clearly unfitted, not half-trained


def test_interrupt_stops_cross_validation(tiny_llama, monkeypatch):
    calls = interrupt_on_call(monkeypatch, _net.RelishNet, "train_step", on_call=2)
    with pytest.raises(KeyboardInterrupt):
        cross_val_score(small_regressor(tiny_llama), TEXTS, TARGETS, cv=KFold(3))
    assert len(calls) == 2  # no later fold ran


@pytest.mark.parametrize("stage", ["featurize", "predict"])
def test_interrupt_propagates_from_featurization_and_predict(tiny_llama, monkeypatch, stage):
    model = small_regressor(tiny_llama).fit(TEXTS, TARGETS)
    if stage == "featurize":
        interrupt_on_call(monkeypatch, LLMFeaturizer, "_run_batch", on_call=1)
        probe = ["a text the cache has not seen"]
    else:
        interrupt_on_call(monkeypatch, _net.RelishNet, "predict", on_call=1)
        probe = TEXTS[:2]
    with pytest.raises(KeyboardInterrupt):
        model.predict(probe)


# -- a failed or interrupted refit keeps the fitted model ---------------------------------
def test_failed_refit_keeps_the_previous_model(tiny_llama, monkeypatch):
    model = small_regressor(tiny_llama).fit(PAIRS, TARGETS)
    before = model.predict(PAIRS[:4])
    fitted = {name: getattr(model, name) for name in
              ("net_", "featurizer_", "input_kind_", "y_mean_", "y_scale_", "n_train_tokens_")}

    def no_memory(self, *args, **kwargs):
        raise MemoryError("cannot allocate the head")

    monkeypatch.setattr(_net.RelishNet, "initialize", no_memory)
    with pytest.raises(MemoryError):
        model.set_params(ff_mult=8).fit(TEXTS, [t * 2 for t in TARGETS])  # other kind, scale
    for name, value in fitted.items():
        assert getattr(model, name) is value, name
    np.testing.assert_array_equal(model.predict(PAIRS[:4]), before)


def test_interrupted_refit_keeps_the_previous_model(tiny_llama, monkeypatch):
    model = small_regressor(tiny_llama).fit(TEXTS, TARGETS)
    before = model.predict(TEXTS[:4])
    interrupt_on_call(monkeypatch, _net.RelishNet, "train_step", on_call=2)
    with pytest.raises(KeyboardInterrupt):
        model.fit(TEXTS, [-t for t in TARGETS])
    np.testing.assert_array_equal(model.predict(TEXTS[:4]), before)


def test_refit_interrupted_in_a_cv_plus_fold_keeps_the_previous_model(tiny_llama, monkeypatch):
    # The main head has finished when the fold heads train: a Ctrl-C there must still
    # leave the old model, with its old calibration, not a new head with no intervals.
    model = small_regressor(tiny_llama, intervals="cv+", interval_folds=2).fit(TEXTS, TARGETS)
    before = model.predict_interval(TEXTS[:4], coverage=0.8)
    # 16 texts in batches of 8 for 3 epochs: 6 steps for the main head, then the folds.
    calls = interrupt_on_call(monkeypatch, _net.RelishNet, "train_step", on_call=8)
    with pytest.raises(KeyboardInterrupt):
        model.fit(TEXTS, [-t for t in TARGETS])
    assert len(calls) == 8
    np.testing.assert_array_equal(model.predict_interval(TEXTS[:4], coverage=0.8), before)


# -- divergence and non-finite outputs are errors, not NaN predictions ----------------------
def test_diverging_training_is_an_error(tiny_llama):
    model = small_regressor(tiny_llama, lr=1e10, max_epochs=5)
    with pytest.raises(ValueError, match="Training diverged.*lr=1e\\+?10"):
        model.fit(TEXTS, TARGETS)
    assert not hasattr(model, "net_")


def test_diverging_trained_blocks_name_their_own_rate(tiny_llama):
    # It said "lr=0.0003 ... Lower lr" while the culprit was top_layers_lr.
    model = small_regressor(tiny_llama, train_top_layers=1, top_layers_lr=1e10, max_epochs=3)
    with pytest.raises(ValueError, match=r"Training diverged.*top_layers_lr=1e\+?10.*Lower "
                                         r"top_layers_lr"):
        model.fit(TEXTS, TARGETS)


def test_non_finite_head_output_is_an_error_at_predict(tiny_llama):
    model = small_regressor(tiny_llama).fit(TEXTS, TARGETS)
    with torch.no_grad():
        model.net_.module_.output.bias.fill_(float("nan"))  # as a damaged head would
    with pytest.raises(ValueError, match="non-finite prediction.*X\\[0\\]"):
        model.predict(TEXTS[:3])


# -- targets on tiny scales are targets, not constants --------------------------------------
@pytest.mark.parametrize("scale", [1e-200, 1e-300, 1e200])
def test_tiny_and_huge_target_scales_are_learned(tiny_llama, scale):
    y = np.asarray(TARGETS) * scale
    model = small_regressor(tiny_llama, max_epochs=20, latent_dim=32, n_heads=4).fit(TEXTS, y)
    assert model.y_scale_ > 0
    assert model.y_scale_ == pytest.approx(np.std(TARGETS) * scale, rel=1e-9)
    pred = model.predict(TEXTS)
    assert np.all(np.isfinite(pred)) and np.ptp(pred) > 0
    # np.corrcoef itself underflows here: compare on the unit scale.
    assert np.corrcoef(pred / scale, TARGETS)[0, 1] > 0.5  # learned, on the targets' scale


# -- prompts that cannot be filled fail before the backbone loads --------------------------
@pytest.mark.parametrize("prompt", ["{text:d}", "Review: {text!s:>z}", "{text.upper}"])
def test_prompt_with_a_bad_format_spec_is_refused_up_front(prompt, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("the backbone was loaded before the prompt was checked")

    monkeypatch.setattr(LLMFeaturizer, "transform", no_loading)
    with pytest.raises(ValueError, match="prompt .* cannot be filled|must contain"):
        small_regressor("unused", prompt=prompt).fit(TEXTS, TARGETS)


# -- set_cache_max_bytes takes integers, not booleans --------------------------------------
def test_cache_bound_takes_numpy_ints_and_refuses_bools():
    from sklearn_relish import cache_info

    set_cache_max_bytes(np.int64(10**9))
    assert cache_info()["max_bytes"] == 10**9
    for bad in (True, False, 1.5, -1, "1e9"):
        with pytest.raises(ValueError, match="max_bytes"):
            set_cache_max_bytes(bad)


# -- max_length below the tokenizer's special tokens ---------------------------------------
@pytest.mark.slow
def test_max_length_without_room_for_text_is_refused_before_anything_runs(minilm):
    from sklearn_relish import cache_info

    with pytest.raises(ValueError, match=r"max_length=2 leaves no room.*adds 2 special.*>= 3"):
        small_regressor(minilm, max_length=2).fit(TEXTS, TARGETS)
    assert cache_info()["llm_texts"] == 0 and cache_info()["entries"] == 0  # nothing cached
    pairs = list(zip(TEXTS, TEXTS[::-1], strict=True))
    with pytest.raises(ValueError, match=r"max_length=4 .* 3 special token\(s\) to each pair"):
        small_regressor(minilm, max_length=4).fit(pairs, TARGETS)
    # The smallest that leaves room works, and truncates a long text to it.
    model = small_regressor(minilm, max_length=3).fit(TEXTS, TARGETS)
    with pytest.warns(UserWarning, match="truncated"):
        assert np.isfinite(model.predict(["word " * 2000])).all()


def test_a_prompt_that_fills_max_length_is_refused(tiny_llama):
    # Truncation cuts the end: every text was cut away, every prediction was the same,
    # and the only sign was a truncation warning advising to raise max_length.
    from transformers import AutoTokenizer

    from sklearn_relish import cache_info
    from sklearn_relish._tokens import tokens_before_text

    prompt = "Rate the sentiment of the following tweet on a scale from -4 to 4: {text}"
    before = tokens_before_text(AutoTokenizer.from_pretrained(tiny_llama), prompt)
    assert before > 5
    llm_texts = cache_info()["llm_texts"]
    with pytest.raises(ValueError, match=rf"max_length={before} leaves no room for text: "
                                         rf"the prompt takes {before} tokens"):
        small_regressor(tiny_llama, prompt=prompt, max_length=before).fit(TEXTS, TARGETS)
    assert cache_info()["llm_texts"] == llm_texts
    # One token more keeps one token of each text: allowed (with the truncation warning).
    model = small_regressor(tiny_llama, prompt=prompt, max_length=before + 1)
    with pytest.warns(UserWarning, match="truncated"):
        model.fit(TEXTS, TARGETS)


def test_a_long_legal_file_name_can_be_written(tmp_path):
    # The temporary name added 18 characters to the target's: a legal 240-byte name failed
    # with "File name too long".
    from sklearn_relish._files import write_atomically

    path = tmp_path / ("m" * 240 + ".joblib")
    write_atomically(path, lambda tmp: Path(tmp).write_text("saved"), overwrite=False)
    assert path.read_text() == "saved"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_overwriting_keeps_a_private_file_private(tmp_path):
    # The new contents arrive by renaming a fresh file (umask permissions) onto the old:
    # a 0600 model had become readable by everyone on the machine.
    from sklearn_relish._files import write_atomically

    path = tmp_path / "model.joblib"
    path.write_text("old")
    path.chmod(0o600)
    write_atomically(path, lambda tmp: Path(tmp).write_text("new"), overwrite=True)
    assert path.read_text() == "new"
    assert path.stat().st_mode & 0o777 == 0o600


def test_overwriting_a_symlink_updates_the_file_it_points_to(tmp_path):
    # current.joblib -> v3.joblib: the rename replaced the link by a plain file and left
    # v3.joblib as it was, so whatever else read v3 kept the old model.
    from sklearn_relish._files import write_atomically

    target, link = tmp_path / "v3.joblib", tmp_path / "current.joblib"
    target.write_text("old")
    link.symlink_to(target.name)
    write_atomically(link, lambda tmp: Path(tmp).write_text("new"), overwrite=True)
    assert link.is_symlink() and target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current.joblib", "v3.joblib"]
    with pytest.raises(FileExistsError):  # without overwrite the link is an existing file
        write_atomically(link, lambda tmp: Path(tmp).write_text("newer"), overwrite=False)
    assert target.read_text() == "new"


def test_a_failed_sync_keeps_the_old_file(tmp_path, monkeypatch):
    # The data reached the disk only when the system got round to it: after a power cut
    # the renamed file (CLI predictions) could be empty. Nothing is published until it is
    # synced, and a sync that fails (a full disk reported late, a lost NFS server) is an error.
    import errno

    from sklearn_relish._files import write_atomically

    path = tmp_path / "predictions.csv"
    path.write_text("old")

    def fail(handle):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="Input/output"):
        write_atomically(path, lambda tmp: Path(tmp).write_text("new"), overwrite=True)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_folder_that_cannot_be_synced_does_not_fail_the_write(tmp_path, monkeypatch):
    # Some network file systems refuse fsync on a folder; the file itself is on disk.
    from sklearn_relish._files import write_atomically

    real_fsync, synced = os.fsync, []

    def files_only(handle):
        if stat.S_ISDIR(os.fstat(handle).st_mode):
            raise OSError("fsync of a folder refused")
        synced.append(handle)
        real_fsync(handle)

    monkeypatch.setattr(os, "fsync", files_only)
    path = tmp_path / "model.joblib"
    write_atomically(path, lambda tmp: Path(tmp).write_text("new"), overwrite=False)
    assert path.read_text() == "new" and len(synced) == 1


# Run as its own script: as another user when the suite runs as root (CI does), since root
# may write any file and the refusal would never show.
_OVERWRITE_READ_ONLY = """
import importlib.util, sys
from pathlib import Path
spec = importlib.util.spec_from_file_location("relish_files", sys.argv[1])
files = importlib.util.module_from_spec(spec)
spec.loader.exec_module(files)
path = Path(sys.argv[2]) / "model.joblib"
path.write_text("old")
path.chmod(0o444)
files.write_atomically(path, lambda tmp: Path(tmp).write_text("new"), overwrite=True)
assert path.read_text() == "new" and path.stat().st_mode & 0o777 == 0o444, path.stat()
"""


def _as_nobody() -> list[str]:
    """A command prefix running Python as uid 65534, or skip where none can."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: the refusal only shows for other users")
    source = Path(__file__).resolve().parents[1] / "sklearn_relish" / "_files.py"
    for python in dict.fromkeys([sys.executable, shutil.which("python3")]):
        prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", python]
        if python and subprocess.run([*prefix, "-c", f"open({str(source)!r}).close()"],
                                     capture_output=True).returncode == 0:
            return prefix
    pytest.skip("no Python that uid 65534 may run can read the package here")


def test_a_read_only_file_can_still_be_overwritten_on_purpose(tmp_path):
    # The new contents took the old file's mode (0444) before the sync opened them for
    # writing: save_model(overwrite=True) onto a read-only model raised PermissionError.
    source = Path(__file__).resolve().parents[1] / "sklearn_relish" / "_files.py"
    if os.geteuid() != 0:
        subprocess.run([sys.executable, "-c", _OVERWRITE_READ_ONLY, str(source),
                        str(tmp_path)], check=True)
        return
    prefix = _as_nobody()
    folder = Path(tempfile.mkdtemp())  # not under pytest's folder, which only root enters
    try:
        folder.chmod(0o777)
        done = subprocess.run([*prefix, "-c", _OVERWRITE_READ_ONLY, str(source), str(folder)],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    finally:
        shutil.rmtree(folder, ignore_errors=True)
