"""Persistence: what a pickle holds, where it can be loaded, and how loading fails.

A fitted model pickles its head and the backbone's identity, never the backbone's weights;
it loads on a CPU-only machine after training on a GPU; it refuses to predict with a
backbone whose weights changed; and ``save_model``/``load_model`` never clobber a file and
turn a damaged one into a clear ValueError.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch
import transformers
from conftest import TARGETS, TEXTS, build_tiny_llama, small_regressor

from sklearn_relish import (
    BackboneMismatchError,
    RelishTextRegressor,
    _backbones,
    clear_backbones,
    clear_cache,
    load_model,
    save_model,
)

PROBE = [*TEXTS[:4], "an unseen text", ""]


@pytest.fixture(scope="module")
def fitted(tiny_llama):
    return small_regressor(tiny_llama).fit(TEXTS, TARGETS)


def round_trip(model):
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    buffer.seek(0)
    return joblib.load(buffer)


# -- the pickle holds the head, not the LLM ---------------------------------------------------
@pytest.mark.slow
def test_pickle_holds_the_head_not_the_backbone(minilm):
    model = small_regressor(minilm, latent_dim=128, n_heads=4, max_epochs=1).fit(TEXTS, TARGETS)
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    size = buffer.getbuffer().nbytes
    weights = Path(_backbones.resolve_backbone(minilm)) / "model.safetensors"
    head = sum(p.numel() * p.element_size() for p in model.net_.module_.parameters())
    assert size < 0.25 * weights.stat().st_size, f"{size} bytes: the backbone travelled"
    # About 1.8 MB of head weights; skorch's history and our attributes add a few kB, and
    # no optimizer moments or early-stopping copies may double it.
    assert 0.95 * head < size < 1.25 * head, (size, head)


# -- CUDA -> CPU -----------------------------------------------------------------------------
def test_cuda_request_without_cuda_falls_back_to_cpu(monkeypatch):
    def no_current_device():
        raise AssertionError("asked CUDA for its current device without CUDA")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "current_device", no_current_device)
    for request in ("cuda", "cuda:1"):
        with pytest.warns(UserWarning, match="CUDA is not available"):
            assert _backbones.resolve_device(request) == torch.device("cpu")


@pytest.mark.parametrize("kind", ["mps", "xpu"])
def test_another_accelerator_this_machine_lacks_falls_back_to_cpu(kind, monkeypatch):
    # A model fitted with device="mps" on a Mac, loaded on Linux: torch failed inside .to().
    backend = getattr(torch, kind, None)
    if backend is None:
        pytest.skip(f"this torch has no torch.{kind}")
    monkeypatch.setattr(backend, "is_available", lambda: False)
    with pytest.warns(UserWarning, match=f"{kind} is not available"):
        assert _backbones.resolve_device(kind) == torch.device("cpu")


def test_auto_device_follows_cuda_availability(monkeypatch, recwarn):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _backbones.resolve_device("auto") == torch.device("cpu")
    assert _backbones.resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert _backbones.resolve_device("auto") == torch.device("cuda:0")
    assert _backbones.resolve_device("cuda:0") == torch.device("cuda:0")
    assert not [w for w in recwarn if "CUDA" in str(w.message)]  # no fallback, no warning


@pytest.mark.parametrize("saved, gpus, loaded", [("cuda:1", 1, "cuda"), ("cuda:1", 2, "cuda:1"),
                                                 ("cuda", 1, "cuda"), ("cpu", 1, "cpu")])
def test_a_head_saved_on_a_gpu_this_machine_lacks_loads_on_its_current_one(
        monkeypatch, saved, gpus, loaded):
    # skorch loaded a "cuda:1" head onto GPU 1 and failed where there is one GPU.
    from skorch import NeuralNetRegressor

    from sklearn_relish._net import RelishNet

    seen = {}
    monkeypatch.setattr(NeuralNetRegressor, "__setstate__",
                        lambda self, state: seen.update(state))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    RelishNet.__new__(RelishNet).__setstate__({"device": saved})
    assert seen["device"] == loaded


def test_bare_cuda_is_the_current_device_by_its_index(monkeypatch):
    # "cuda" and "cuda:1" (the current device) were two registry entries: two copies of
    # an 8B backbone's weights on one card, and the training RNG forked device 0.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    for request in ("cuda", "auto", "cuda:1"):
        assert _backbones.resolve_device(request) == torch.device("cuda:1"), request
    assert _backbones.resolve_device("cuda:0") == torch.device("cuda:0")


def test_a_cuda_index_this_machine_lacks_is_named(monkeypatch):
    # Left to torch, it fails later inside .to() with a RuntimeError of its own.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert _backbones.resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ValueError, match=r"names CUDA device 3, but this process sees 2"):
        _backbones.resolve_device("cuda:3")


def test_a_cuda_request_without_cuda_warns_once_per_predict(tiny_llama, monkeypatch):
    # The backbone and the head each resolved the device: two identical warnings came
    # from one predict.
    import warnings

    model = small_regressor(tiny_llama, device="cpu").fit(TEXTS, TARGETS)
    expected = model.predict(PROBE)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model.set_params(device="cuda")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        np.testing.assert_allclose(model.predict(PROBE), expected, rtol=0, atol=1e-6)
    fallbacks = [w for w in caught if "CUDA is not available" in str(w.message)]
    assert len(fallbacks) == 1, [str(w.message) for w in caught]


def test_a_cuda_request_without_cuda_warns_once_per_fit_at_the_callers_line(tiny_llama,
                                                                            monkeypatch):
    # fit resolved the device and so did the backbone's load: two warnings, the second
    # pointing into the package (Python's once-per-location filter could not merge them).
    import warnings

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model = small_regressor(tiny_llama, device="cuda")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(TEXTS, TARGETS)
    fallbacks = [w for w in caught if "CUDA is not available" in str(w.message)]
    assert [w.filename for w in fallbacks] == [__file__]
    assert model.net_.device == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_model_fitted_on_cuda_predicts_on_a_cpu_only_machine(tiny_llama, monkeypatch):
    # float32 on both sides, so only GPU-vs-CPU arithmetic differs, not bfloat16 rounding.
    model = small_regressor(tiny_llama, device="cuda", backbone_dtype="float32")
    model.fit(TEXTS, TARGETS)
    on_gpu = model.predict(PROBE)
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    buffer.seek(0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    clear_backbones()
    with pytest.warns(UserWarning):  # skorch: "Requested to load data to CUDA ..."
        restored = joblib.load(buffer)
    with pytest.warns(UserWarning, match="CUDA is not available"):
        on_cpu = restored.predict(PROBE)
    assert all(p.device.type == "cpu" for p in restored.net_.module_.parameters())
    assert restored.featurizer_.loaded.device == torch.device("cpu")
    np.testing.assert_allclose(on_cpu, on_gpu, rtol=0, atol=1e-4)


# -- the backbone's fingerprint is checked on load ------------------------------------------------
def _fit_dump_rebuild(folder, seed_after):
    build_tiny_llama(folder, seed=0)
    model = small_regressor(str(folder)).fit(TEXTS, TARGETS)
    expected = model.predict(PROBE)
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    build_tiny_llama(folder, seed=seed_after)  # same path, maybe other weights
    clear_backbones()
    clear_cache()
    buffer.seek(0)
    return joblib.load(buffer), expected


def test_changed_backbone_weights_are_refused(tmp_path):
    restored, _ = _fit_dump_rebuild(tmp_path / "A", seed_after=1)
    with pytest.raises(BackboneMismatchError, match="not the one this model was trained on") as e:
        restored.predict(PROBE)
    assert isinstance(e.value, ValueError)
    assert str(tmp_path / "A") in str(e.value)  # names the backbone


def test_a_refusal_names_the_transformers_version_the_model_was_fitted_with(tmp_path):
    import transformers

    restored, _ = _fit_dump_rebuild(tmp_path / "A", seed_after=1)
    featurizer = restored.featurizer_
    assert featurizer.transformers_version == transformers.__version__
    with pytest.raises(BackboneMismatchError) as same_version:
        restored.predict(PROBE)
    assert "transformers" not in str(same_version.value)  # no false lead when they agree
    featurizer.transformers_version = "4.99.0"
    with pytest.raises(BackboneMismatchError, match=r"fitted with transformers 4\.99\.0"):
        restored.predict(PROBE)



def test_a_refused_embedded_backbone_names_the_conversion_to_remove(tmp_path):
    # The advice was "with transformers==X installed it loads", but the conversion made
    # by another version is reused whatever is installed: it has to be made again.
    import json

    import transformers

    from sklearn_relish._embedded import transformers_version_hint

    folder = tmp_path / "SmolLM2-converted"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"transformers_version": "4.40.0"}))
    name, installed = "embedded:SmolLM2-135M-Instruct-Q4_1", transformers.__version__
    hint = transformers_version_hint("4.99.0", name, str(folder))
    assert "converted from its GGUF by transformers 4.40.0" in hint
    assert "install transformers==4.99.0, remove " + str(folder) in hint
    same = transformers_version_hint(installed, name, str(folder))
    assert "install" not in same and "remove " + str(folder) in same
    # A conversion by the fitting version: not the cause, and not named.
    (folder / "config.json").write_text(json.dumps({"transformers_version": "4.99.0"}))
    assert "remove" not in transformers_version_hint("4.99.0", name, str(folder))
    # A backbone of the user's own: its files do not depend on transformers.
    assert "remove" not in transformers_version_hint("4.40.0", str(folder), str(folder))

def test_identical_backbone_rebuilt_is_accepted(tmp_path):
    restored, expected = _fit_dump_rebuild(tmp_path / "A", seed_after=0)
    np.testing.assert_allclose(restored.predict(PROBE), expected, rtol=0, atol=1e-6)


# -- save_model / load_model -----------------------------------------------------------------
def test_save_load_round_trip(fitted, tmp_path):
    path = save_model(fitted, tmp_path / "model.joblib")
    assert os.listdir(tmp_path) == ["model.joblib"]  # no temporary file left behind
    np.testing.assert_array_equal(load_model(path).predict(PROBE), fitted.predict(PROBE))


def test_an_encoder_saved_can_be_loaded_and_a_non_model_is_refused_before_writing(
        tiny_llama, tmp_path, monkeypatch):
    # LLMTextEncoder (no predict) was saved without complaint, then refused by load_model;
    # plain joblib cannot read the file either (its header), so nothing could open it.
    from sklearn_relish import LLMTextEncoder

    encoder = LLMTextEncoder(tiny_llama).fit(TEXTS)
    monkeypatch.setenv("HOME", str(tmp_path))
    path = save_model(encoder, "~/encoder.joblib")  # ~ is the home folder, as elsewhere
    assert path == tmp_path / "encoder.joblib"
    np.testing.assert_array_equal(load_model("~/encoder.joblib").transform(TEXTS[:3]),
                                  encoder.transform(TEXTS[:3]))
    with pytest.raises(TypeError, match="saves fitted estimators .* got a dict"):
        save_model({"weights": 1}, tmp_path / "dict.joblib")
    assert not (tmp_path / "dict.joblib").exists()


def test_a_model_saved_with_other_package_versions_says_which(fitted, tmp_path, monkeypatch,
                                                              recwarn):
    # Nothing recorded the versions: a model from another scikit-learn or sklearn_relish
    # with the same file format loaded silently, and an unloadable one could not say which.
    from sklearn_relish import _persistence

    here = _persistence.package_versions()
    save_model(fitted, tmp_path / "same.joblib")
    load_model(tmp_path / "same.joblib")
    assert not [w for w in recwarn if "was saved with" in str(w.message)]
    monkeypatch.setattr(_persistence, "package_versions",
                        lambda: {**here, "scikit-learn": "1.6.0", "torch": "2.5.1"})
    save_model(fitted, tmp_path / "old.joblib")
    monkeypatch.undo()
    with pytest.warns(UserWarning, match=r"saved with scikit-learn 1\.6\.0 \(here "
                      rf"{here['scikit-learn']}\), torch 2\.5\.1"):
        model = load_model(tmp_path / "old.joblib")
    np.testing.assert_array_equal(model.predict(PROBE), fitted.predict(PROBE))


def test_save_refuses_to_overwrite(fitted, tmp_path):
    path = tmp_path / "model.joblib"
    path.write_bytes(b"someone's precious file")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_model(fitted, path)
    assert path.read_bytes() == b"someone's precious file"
    assert os.listdir(tmp_path) == ["model.joblib"]
    save_model(fitted, path, overwrite=True)
    np.testing.assert_array_equal(load_model(path).predict(PROBE), fitted.predict(PROBE))


def test_a_moved_backbone_folder_is_named_and_can_be_pointed_at(tmp_path):
    # The folder moved (another machine, a renamed disk): predict said "no such folder",
    # and set_params(backbone=...) waits for the next fit, so no public way was left.
    folder = build_tiny_llama(tmp_path / "llama")
    model = small_regressor(folder).fit(TEXTS, TARGETS)
    expected = model.predict(PROBE)
    path = save_model(model, tmp_path / "model.joblib")
    os.rename(folder, tmp_path / "moved")
    clear_backbones()
    clear_cache()
    with pytest.raises(ValueError, match=r"no such folder.*This model was fitted on that "
                                         r"folder; if it has moved.*moved_backbones="):
        load_model(path).predict(PROBE)
    moved = load_model(path, moved_backbones={folder: str(tmp_path / "moved")})
    np.testing.assert_array_equal(moved.predict(PROBE), expected)
    # The weights there are checked: another backbone under the old name is refused.
    build_tiny_llama(tmp_path / "other", seed=1)
    other = load_model(path, moved_backbones={folder: str(tmp_path / "other")})
    with pytest.raises(BackboneMismatchError):
        other.predict(PROBE)
    with pytest.raises(ValueError, match="was not fitted on it; it records"):
        load_model(path, moved_backbones={"/elsewhere": str(tmp_path / "moved")})
    with pytest.raises(ValueError, match="is not a folder"):
        load_model(path, moved_backbones={folder: str(tmp_path / "nowhere")})


def test_a_relative_backbone_folder_is_recorded_whole(tmp_path, monkeypatch):
    # "llama" was recorded as given: loaded from another working directory, the model
    # tried it as a Hugging Face id and failed with a network error.
    build_tiny_llama(tmp_path / "llama")
    monkeypatch.chdir(tmp_path)
    model = small_regressor("llama").fit(TEXTS, TARGETS)
    expected = model.predict(PROBE)
    assert model.get_params()["backbone"] == "llama"  # the parameter is the user's
    save_model(model, tmp_path / "model.joblib")
    monkeypatch.chdir(tmp_path.parent)
    clear_backbones()
    clear_cache()
    np.testing.assert_array_equal(load_model(tmp_path / "model.joblib").predict(PROBE),
                                  expected)
    # A pathlib.Path is a folder too (it was refused, where cache_dir took one).
    from_path = small_regressor(tmp_path / "llama").fit(TEXTS, TARGETS)
    assert from_path.featurizer_.backbone == str(tmp_path / "llama")
    np.testing.assert_array_equal(from_path.predict(PROBE), expected)


def test_an_unfitted_estimator_or_a_folder_is_refused_by_save_model(fitted, tmp_path):
    # A search's `estimator` saved for its `best_estimator_` was written and loaded without
    # a word, to fail at predict on the serving machine.
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError, match="save_model saves fitted models"):
        save_model(RelishTextRegressor(), tmp_path / "unfitted.joblib")
    (tmp_path / "folder").mkdir()
    with pytest.raises(IsADirectoryError, match="it is a folder"):
        save_model(fitted, tmp_path / "folder", overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["folder"]


def test_save_names_a_missing_folder_and_keeps_a_dangling_link(fitted, tmp_path):
    with pytest.raises(FileNotFoundError, match="the folder .*nowhere does not exist"):
        save_model(fitted, tmp_path / "nowhere" / "model.joblib")
    (tmp_path / "data.csv").write_text("x\n")  # a file where the folder should be
    with pytest.raises(NotADirectoryError, match=r"data\.csv is a file, not a folder"):
        save_model(fitted, tmp_path / "data.csv" / "model.joblib")
    (tmp_path / "data.csv").unlink()
    link = tmp_path / "model.joblib"
    link.symlink_to(tmp_path / "not-there-yet.joblib")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_model(fitted, link)
    assert link.is_symlink() and sorted(os.listdir(tmp_path)) == ["model.joblib"]


def test_a_file_that_appears_during_the_save_is_kept(fitted, tmp_path, monkeypatch):
    # Another process writes the path while the model is being pickled: checking first and
    # renaming after would replace its file.
    import joblib

    path = tmp_path / "model.joblib"
    dump = joblib.dump

    def dump_while_another_writes(value, stream):
        path.write_bytes(b"written meanwhile")
        return dump(value, stream)

    monkeypatch.setattr(joblib, "dump", dump_while_another_writes)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_model(fitted, path)
    assert path.read_bytes() == b"written meanwhile"
    assert os.listdir(tmp_path) == ["model.joblib"]


def test_saved_files_get_the_umask_s_permissions_not_private_ones(fitted, tmp_path):
    umask = os.umask(0o022)
    try:
        mode = save_model(fitted, tmp_path / "model.joblib").stat().st_mode & 0o777
    finally:
        os.umask(umask)
    assert mode == 0o644  # as joblib.dump would make it; mkstemp made 0600


@pytest.mark.parametrize("damage", ["first-half", "last-byte-missing", "garbage", "empty"])
def test_damaged_file_is_a_clear_value_error(fitted, tmp_path, damage):
    good = save_model(fitted, tmp_path / "good.joblib").read_bytes()
    content = {
        "first-half": good[: len(good) // 2],
        "last-byte-missing": good[:-1],
        "garbage": np.random.default_rng(0).bytes(4096),
        "empty": b"",
    }[damage]
    bad = tmp_path / "bad.joblib"
    bad.write_bytes(content)
    with pytest.raises(ValueError, match="damaged or truncated"):
        load_model(bad)


def test_a_table_given_as_the_model_is_named_not_a_model_file(tmp_path):
    table = tmp_path / "new.csv"
    table.write_text("text,score\ngreat,3\n")
    with pytest.raises(ValueError, match=r"new.csv is not a model file") as error:
        load_model(table)
    assert "backup" not in str(error.value)  # nothing of the user's needs restoring
    assert table.read_text() == "text,score\ngreat,3\n"


@pytest.mark.parametrize("seed", range(10))
def test_flipped_bytes_are_refused_not_loaded(fitted, tmp_path, seed):
    # A pickle with a few flipped bytes in its weights still unpickles and predicts
    # nonsense; the checksum that save_model writes is what catches it, wherever the
    # bytes are (the header included).
    good = bytearray(save_model(fitted, tmp_path / "good.joblib").read_bytes())
    rng = np.random.default_rng(seed)
    for position in rng.choice(len(good), size=5, replace=False):
        good[position] ^= 1 << int(rng.integers(8))
    bad = tmp_path / "bad.joblib"
    bad.write_bytes(bytes(good))
    with pytest.raises(ValueError, match="damaged or truncated"):
        load_model(bad)


@pytest.mark.parametrize("keep", [1, 10, 30, 95, 96, 200, -100, -97, -95, -64, -20, -1])
def test_cut_files_are_refused(fitted, tmp_path, keep):
    good = save_model(fitted, tmp_path / "good.joblib").read_bytes()
    bad = tmp_path / "bad.joblib"
    bad.write_bytes(good[:keep])
    with pytest.raises(ValueError, match="damaged or truncated"):
        load_model(bad)


@pytest.mark.parametrize("compress", range(1, 33))
def test_compressed_joblib_files_load_whatever_their_last_byte(compress, tmp_path):
    # Their last byte is any byte: one ending in a newline was taken for a damaged
    # checksum line. Each level and payload gives another ending.
    path = tmp_path / "small.joblib"
    value = _Predictor()
    value.payload = np.random.default_rng(compress).random(64)
    joblib.dump(value, path, compress=("zlib", compress % 9 + 1))
    np.testing.assert_array_equal(load_model(path).payload, value.payload)


def test_plain_joblib_file_cut_short_is_a_value_error(fitted, tmp_path):
    # Files from joblib.dump carry no checksum, but a cut one must still fail clearly
    # (it used to raise a bare struct.error).
    path = tmp_path / "plain.joblib"
    joblib.dump(fitted, path)
    np.testing.assert_array_equal(load_model(path).predict(PROBE), fitted.predict(PROBE))
    path.write_bytes(path.read_bytes()[:10])
    with pytest.raises(ValueError, match="damaged or truncated"):
        load_model(path)


def test_newer_file_format_asks_for_an_upgrade(fitted, tmp_path):
    path = save_model(fitted, tmp_path / "model.joblib")
    content = path.read_bytes()
    path.write_bytes(content.replace(b"sklearn_relish-model 2 ", b"sklearn_relish-model 7 ", 1))
    with pytest.raises(ValueError, match="newer sklearn_relish"):
        load_model(path)


def test_an_intact_file_of_a_newer_format_is_refused_too(fitted, tmp_path):
    # Its digest matches (a later version signed it): it must not be read as format 1.
    import hashlib

    payload = save_model(fitted, tmp_path / "model.joblib").read_bytes().rsplit(b"\n", 2)[0]
    digest = hashlib.sha256(b"sklearn_relish-model 3 " + payload).hexdigest()
    newer = tmp_path / "newer.joblib"
    newer.write_bytes(b"%s\nsklearn_relish-model 3 sha256=%s\n" % (payload, digest.encode()))
    with pytest.raises(ValueError, match=r"newer sklearn_relish \(model file format 3\); "):
        load_model(newer)


def _format_1(model, path):
    """A file as sklearn_relish wrote them before format 2: the checksum line first."""
    import hashlib

    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    payload = buffer.getvalue()
    digest = hashlib.sha256(b"sklearn_relish-model 1 " + payload).hexdigest()
    path.write_bytes(b"sklearn_relish-model 1 sha256=%s\n%s" % (digest.encode(), payload))
    return path


def test_joblib_load_reads_what_save_model_writes(fitted, tmp_path):
    # The checksum line comes after the pickle: a CLI model opens with plain joblib too.
    path = save_model(fitted, tmp_path / "model.joblib")
    np.testing.assert_array_equal(joblib.load(path).predict(PROBE), fitted.predict(PROBE))


def test_format_1_files_still_load_and_are_checked(fitted, tmp_path):
    path = _format_1(fitted, tmp_path / "old.joblib")
    np.testing.assert_array_equal(load_model(path).predict(PROBE), fitted.predict(PROBE))
    damaged = bytearray(path.read_bytes())
    damaged[len(damaged) // 2] ^= 0x10
    path.write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match="checksum does not match"):
        load_model(path)


@pytest.mark.parametrize("where", ["magic", "newline", "both"])
def test_a_damaged_checksum_line_never_passes_for_a_plain_joblib_file(fitted, tmp_path, where):
    # Else a flipped byte in the line would skip the check of the flips in the pickle.
    content = bytearray(save_model(fitted, tmp_path / "model.joblib").read_bytes())
    line = content.rindex(b"sklearn_relish-model")
    content[len(content) // 2] ^= 0x01  # damage in the pickle as well
    if where in ("magic", "both"):
        content[line + 3] ^= 0x20
    if where in ("newline", "both"):
        content[-1] ^= 0x01
    path = tmp_path / "bad.joblib"
    path.write_bytes(bytes(content))
    with pytest.raises(ValueError, match="damaged or truncated"):
        load_model(path)


def test_intact_file_that_cannot_unpickle_says_so(tmp_path, monkeypatch):
    path = save_model(_Predictor(), tmp_path / "model.joblib")
    monkeypatch.delattr(__import__(__name__), "_Predictor")  # its class is gone here
    with pytest.raises(ValueError, match="intact but cannot be loaded here"):
        load_model(path)


class _Predictor:
    def predict(self, X):
        return X


def test_full_disk_while_saving_keeps_the_old_file(fitted, tmp_path, monkeypatch):
    path = save_model(fitted, tmp_path / "model.joblib")
    before = path.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(joblib, "dump", disk_full)
    with pytest.raises(OSError, match="No space left") as raised:
        save_model(fitted, path, overwrite=True)
    assert raised.value.filename == str(path)  # which file could not be written
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.joblib"]  # no temporary file left behind


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="No model file"):
        load_model(tmp_path / "nothing-here.joblib")
    with pytest.raises(FileNotFoundError, match="it is a folder"):
        load_model(tmp_path)  # a folder is not a model file


# -- trust_remote_code -------------------------------------------------------------------------
def test_trust_remote_code_is_off_by_default():
    assert RelishTextRegressor().trust_remote_code is False


@pytest.mark.parametrize("trust", [False, True])
def test_trust_remote_code_reaches_transformers_and_the_pickle(tiny_llama, monkeypatch, trust):
    calls = []

    def recording(name, original):
        def wrapper(*args, **kwargs):
            calls.append((name, kwargs.get("trust_remote_code", "absent")))
            return original(*args, **kwargs)

        return wrapper

    for cls in (transformers.AutoModel, transformers.AutoTokenizer):
        monkeypatch.setattr(cls, "from_pretrained", recording(cls.__name__, cls.from_pretrained))
    clear_backbones()
    model = small_regressor(tiny_llama, trust_remote_code=trust).fit(TEXTS, TARGETS)
    assert sorted(calls) == [("AutoModel", trust), ("AutoTokenizer", trust)]
    restored = round_trip(model)
    assert restored.featurizer_.trust_remote_code is trust
    clear_backbones()
    calls.clear()
    restored.predict(["good"])  # the re-load after unpickling asks the same
    assert sorted(calls) == [("AutoModel", trust), ("AutoTokenizer", trust)]
