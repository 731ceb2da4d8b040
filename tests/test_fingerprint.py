"""The backbone's fingerprint covers every weight and the tokenizer, whatever the load dtype,
and a changed backbone is refused instead of serving wrong predictions (issue 14, item 1)."""

from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch
from conftest import TARGETS, TEXTS, build_tiny_llama, small_regressor
from safetensors.torch import load_file, save_file

from sklearn_relish import (
    BackboneMismatchError,
    _backbones,
    _fingerprint,
    cache_info,
    clear_backbones,
)


@pytest.fixture(autouse=True)
def private_memo(tmp_path, monkeypatch):
    """Each test gets its own digest memo, so no test reads another's; the files a test
    has just written are memoised as if it loaded them an hour later."""
    monkeypatch.setenv("SKLEARN_RELISH_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(_fingerprint, "_now_ns", lambda: time.time_ns() + 3600 * 10**9)
    clear_backbones()
    yield
    clear_backbones()


def fingerprint(folder, dtype=torch.float32) -> str:
    cpu = torch.device("cpu")
    return _backbones.load_backbone(str(folder), device=cpu, dtype=dtype).fingerprint


def edit_weight(folder, name_part: str, row: int) -> None:
    """Change one row of one tensor in place, as a careless fine-tune or a bad copy would."""
    path = folder / "model.safetensors"
    tensors = load_file(path)
    name = next(n for n in tensors if name_part in n)
    tensors[name][row] += 0.5
    save_file(tensors, path, metadata={"format": "pt"})


def pickled(model):
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    return buffer.getvalue()


def test_a_copy_elsewhere_has_the_same_fingerprint(tmp_path):
    original = build_tiny_llama(tmp_path / "a")
    copy = shutil.copytree(original, tmp_path / "copy")
    assert fingerprint(original).startswith("sha256:")
    assert fingerprint(original) == fingerprint(copy)


def test_load_dtype_does_not_change_the_fingerprint(tmp_path):
    folder = build_tiny_llama(tmp_path / "a")
    assert fingerprint(folder, torch.float32) == fingerprint(folder, torch.bfloat16)


def test_one_edited_weight_changes_the_fingerprint(tmp_path):
    folder = tmp_path / "a"
    build_tiny_llama(folder)
    before = fingerprint(folder)
    clear_backbones()
    edit_weight(folder, "embed_tokens", row=5)
    assert fingerprint(folder) != before


def test_an_edited_tokenizer_changes_the_fingerprint(tmp_path):
    folder = tmp_path / "a"
    build_tiny_llama(folder)
    before = fingerprint(folder)
    clear_backbones()
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["model_max_length"] = 17
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    assert fingerprint(folder) != before


def test_trainer_metrics_written_beside_a_checkpoint_do_not_change_it(tmp_path):
    # trainer.save_metrics("eval", ...) after training: the weights are the same, and a
    # model fitted on them must not be refused as another backbone.
    folder = Path(build_tiny_llama(tmp_path / "a"))
    before = fingerprint(folder)
    clear_backbones()
    (folder / "eval_results.json").write_text(json.dumps({"eval_loss": 0.12}))
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 10}))
    assert fingerprint(folder) == before


def test_generation_settings_do_not_change_it(tmp_path):
    # A hub update or a causal LM's save_pretrained adds or edits generation_config.json;
    # generate() reads it, no hidden state does, so the same model must still predict.
    folder = Path(build_tiny_llama(tmp_path / "a"))
    before = fingerprint(folder)
    clear_backbones()
    (folder / "generation_config.json").write_text(json.dumps({"temperature": 0.7}))
    assert fingerprint(folder) == before
    clear_backbones()
    (folder / "generation_config.json").write_text(json.dumps({"temperature": 0.2}))
    assert fingerprint(folder) == before


def test_digests_are_memoised_and_recomputed_when_a_file_changes(tmp_path, monkeypatch):
    folder = tmp_path / "a"
    build_tiny_llama(folder)
    first = fingerprint(folder)
    hashed = []
    original = _fingerprint.hashlib.sha256
    monkeypatch.setattr(_fingerprint.hashlib, "sha256",
                        lambda *a: hashed.append(1) or original(*a))
    clear_backbones()
    assert fingerprint(folder) == first
    assert len(hashed) == 1  # only the combining hash: every file digest came from the memo
    edit_weight(folder, "embed_tokens", row=3)
    clear_backbones()
    hashed.clear()
    assert fingerprint(folder) != first
    assert len(hashed) == 2  # the edited weights file was hashed again, nothing else


def test_a_damaged_memo_is_recomputed_not_trusted(tmp_path):
    folder = tmp_path / "a"
    build_tiny_llama(folder)
    good = fingerprint(folder)
    # (A memo that lies with a matching stat: test_fingerprint_faults.py.)
    _fingerprint._memo_path().write_text("{not json")
    clear_backbones()
    assert fingerprint(folder) == good


def test_new_weights_with_the_old_size_and_mtime_are_hashed_again(tmp_path):
    # cp -p, rsync -a, tar x or a fixed build timestamp: same size, same mtime, new bytes.
    import os

    folder = tmp_path / "a"
    build_tiny_llama(folder)
    first = fingerprint(folder)
    weights = folder / "model.safetensors"
    before = weights.stat()
    edit_weight(folder, "embed_tokens", row=2)  # += 0.5 in place: the same size
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert weights.stat().st_size == before.st_size
    assert weights.stat().st_mtime_ns == before.st_mtime_ns
    clear_backbones()
    assert fingerprint(folder) != first


def test_only_the_weights_transformers_loads_are_hashed(tmp_path):
    folder = Path(build_tiny_llama(tmp_path / "a"))
    before = fingerprint(folder)
    # A duplicate of the weights that from_pretrained never reads (Mistral's
    # consolidated.safetensors): present or not depending on how the folder was fetched.
    shutil.copy(folder / "model.safetensors", folder / "consolidated.safetensors")
    clear_backbones()
    assert fingerprint(folder) == before
    # Sharded: the shards its index lists, not a stray file beside them.
    sharded = tmp_path / "sharded"
    shutil.copytree(folder, sharded)
    (sharded / "model.safetensors").rename(sharded / "model-00001-of-00001.safetensors")
    names = load_file(sharded / "model-00001-of-00001.safetensors")
    (sharded / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": dict.fromkeys(names, "model-00001-of-00001.safetensors")}))
    hashed = [p.name for p in _fingerprint.checkpoint_files(sharded)]
    assert "model-00001-of-00001.safetensors" in hashed
    assert "consolidated.safetensors" not in hashed


def test_a_single_weights_file_beside_shards_is_the_one_hashed(tmp_path):
    # Some repos ship both layouts. transformers loads model.safetensors first; only the
    # shards were hashed, so editing the file actually loaded served stale states.
    folder = Path(build_tiny_llama(tmp_path / "both"))
    tensors = load_file(folder / "model.safetensors")
    save_file(tensors, folder / "model-00001-of-00001.safetensors", metadata={"format": "pt"})
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": dict.fromkeys(tensors, "model-00001-of-00001.safetensors")}))
    hashed = [p.name for p in _fingerprint.checkpoint_files(folder)]
    assert "model.safetensors" in hashed
    assert "model-00001-of-00001.safetensors" not in hashed
    before = fingerprint(folder)
    edit_weight(folder, "embed_tokens", 3)
    clear_backbones()
    assert fingerprint(folder) != before


def test_weights_saved_again_into_the_same_folder_are_read_again(tmp_path):
    # A fine-tune saved again into the folder mid-session: every later fit and featurizer
    # got the weights loaded first, and their states, until clear_backbones().
    folder = tmp_path / "ckpt"
    build_tiny_llama(folder, seed=0)
    first = small_regressor(str(folder)).fit(TEXTS, TARGETS)
    loads = _backbones.N_LOADS
    again = small_regressor(str(folder)).fit(TEXTS, TARGETS)
    assert _backbones.N_LOADS == loads  # unchanged files: no second load
    assert again.featurizer_.fingerprint == first.featurizer_.fingerprint
    build_tiny_llama(folder, seed=1)  # same folder, new weights
    refit = small_regressor(str(folder)).fit(TEXTS, TARGETS)
    assert _backbones.N_LOADS == loads + 1
    assert refit.featurizer_.fingerprint != first.featurizer_.fingerprint
    # The first model still holds the weights it was fitted on; loaded afresh, it finds
    # the new ones and refuses them.
    with pytest.raises(BackboneMismatchError):
        joblib.load(io.BytesIO(pickled(first))).predict(TEXTS[:2])


def test_a_variant_load_is_fingerprinted_by_the_file_it_reads(tmp_path):
    # variant="fp16" reads model.fp16.safetensors, but the fingerprint hashed
    # model.safetensors: other weights passed as the fitted ones (predictions moved by 1.5).
    folder = Path(build_tiny_llama(tmp_path / "a", seed=0))
    other = Path(build_tiny_llama(tmp_path / "b", seed=1))
    shutil.copy(other / "model.safetensors", folder / "model.fp16.safetensors")
    model = small_regressor(str(folder)).fit(TEXTS, TARGETS)
    variant = small_regressor(str(folder), backbone_kwargs={"variant": "fp16"})
    assert variant.fit(TEXTS, TARGETS).featurizer_.fingerprint != model.featurizer_.fingerprint
    model.set_params(backbone_kwargs={"variant": "fp16"})
    with pytest.raises(BackboneMismatchError):
        model.predict(TEXTS[:2])


def test_a_folder_under_home_is_loaded_as_a_folder(tmp_path, monkeypatch):
    # "~/models/x" reached from_pretrained unexpanded: a repo-id error for a folder that exists.
    monkeypatch.setenv("HOME", str(tmp_path))
    build_tiny_llama(tmp_path / "models" / "tiny")
    model = small_regressor("~/models/tiny").fit(TEXTS, TARGETS)
    assert model.predict(TEXTS[:2]).shape == (2,)


def test_remote_code_is_part_of_the_fingerprint_when_it_runs(tmp_path):
    folder = Path(build_tiny_llama(tmp_path / "a"))
    config = json.loads((folder / "config.json").read_text())
    (folder / "modeling_custom.py").write_text("# the model's own code\n")
    with_code = _fingerprint.checkpoint_fingerprint(folder, _Config(config), code=True)
    (folder / "modeling_custom.py").write_text("# edited code\n")
    assert _fingerprint.checkpoint_fingerprint(folder, _Config(config), code=True) != with_code
    without = _fingerprint.checkpoint_fingerprint(folder, _Config(config))
    (folder / "modeling_custom.py").write_text("# edited again\n")
    assert _fingerprint.checkpoint_fingerprint(folder, _Config(config)) == without


class _Config:
    def __init__(self, settings):
        self.settings = settings

    def to_dict(self):
        return dict(self.settings)


def test_a_memo_that_cannot_be_written_leaves_no_temporary_file(tmp_path, monkeypatch):
    import errno

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_fingerprint.json, "dump", full_disk)
    folder = build_tiny_llama(tmp_path / "a")
    fingerprint(folder)  # hashed, not memoised: no error either
    home = _fingerprint._memo_path().parent
    assert not list(home.glob(".digests-*"))


def test_model_refuses_a_backbone_edited_in_place(tmp_path):
    folder = tmp_path / "a"
    build_tiny_llama(folder)
    model = small_regressor(str(folder)).fit(TEXTS, TARGETS)
    saved = pickled(model)
    edit_weight(folder, "embed_tokens", row=7)
    clear_backbones()
    restored = joblib.load(io.BytesIO(saved))
    with pytest.raises(BackboneMismatchError, match="not the one this model was trained on"):
        restored.predict(TEXTS[:2])


def set_tokenizer_flag(folder, value: bool) -> None:
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["local_files_only"] = value
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def fitted_under_an_earlier_rule(folder: Path, skipped: frozenset) -> tuple:
    """A model's pickle as a rule that skipped only ``skipped`` wrote it, and its predictions."""
    model = small_regressor(str(folder)).fit(TEXTS, TARGETS)
    expected = model.predict(TEXTS[:2])
    config = model.featurizer_.loaded.model.config
    earlier = _fingerprint.checkpoint_fingerprint(folder, config, skipped=skipped)
    assert earlier != model.featurizer_.fingerprint
    model.featurizer_.fingerprint = earlier  # what the earlier rule stored in the pickle
    return pickled(model), expected


def test_a_model_fitted_when_generation_settings_were_hashed_still_loads(tmp_path):
    folder = Path(build_tiny_llama(tmp_path / "a"))
    (folder / "generation_config.json").write_text(json.dumps({"temperature": 0.7}))
    saved, expected = fitted_under_an_earlier_rule(folder, _fingerprint._TRAINER_SKIPPED)
    clear_backbones()
    np.testing.assert_allclose(joblib.load(io.BytesIO(saved)).predict(TEXTS[:2]), expected,
                               rtol=1e-6)
    # A weight edited under it is still another backbone.
    edit_weight(folder, "embed_tokens", row=7)
    clear_backbones()
    with pytest.raises(BackboneMismatchError):
        joblib.load(io.BytesIO(saved)).predict(TEXTS[:2])


@pytest.mark.parametrize("fitted_with", [False, True])
def test_models_fitted_under_earlier_fingerprint_rules_still_load(tmp_path, fitted_with):
    # Earlier conversions of the embedded GGUFs wrote local_files_only as HF_HUB_OFFLINE
    # said, and Trainer files were hashed: the same weights, so such models still predict.
    folder = Path(build_tiny_llama(tmp_path / "a"))
    set_tokenizer_flag(folder, fitted_with)
    (folder / "eval_results.json").write_text(json.dumps({"eval_loss": 0.1}))
    saved, expected = fitted_under_an_earlier_rule(folder, _fingerprint._EARLIER_SKIPPED)
    set_tokenizer_flag(folder, not fitted_with)
    clear_backbones()
    restored = joblib.load(io.BytesIO(saved))
    np.testing.assert_allclose(restored.predict(TEXTS[:2]), expected, rtol=1e-6)
    # Any other change to the same file is still another backbone.
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["model_max_length"] = 17
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    clear_backbones()
    with pytest.raises(BackboneMismatchError):
        joblib.load(io.BytesIO(saved)).predict(TEXTS[:2])


def test_edited_copy_never_shares_cached_states_with_the_original(tmp_path):
    original = tmp_path / "a"
    build_tiny_llama(original)
    edited = shutil.copytree(original, tmp_path / "edited")
    edit_weight(edited, "embed_tokens", row=10)
    small_regressor(str(original)).fit(TEXTS, TARGETS)
    assert cache_info()["llm_texts"] == len(set(TEXTS))
    # Had the copy's cache keys been the original's, it would have read the original's
    # states (no LLM pass) and trained on them.
    small_regressor(str(edited)).fit(TEXTS, TARGETS)
    assert cache_info()["llm_texts"] == 2 * len(set(TEXTS))


def test_models_saved_with_the_old_fingerprint_still_load(tmp_path):
    folder = tmp_path / "a"
    build_tiny_llama(folder)
    model = small_regressor(str(folder)).fit(TEXTS, TARGETS)
    expected = model.predict(TEXTS[:3])
    old_style = _fingerprint.legacy_fingerprint(model.featurizer_.loaded.model)
    model.featurizer_.fingerprint = old_style  # as pickled by sklearn_relish 0.1.0
    restored = joblib.load(io.BytesIO(pickled(model)))
    np.testing.assert_array_equal(restored.predict(TEXTS[:3]), expected)
    model.featurizer_.fingerprint = "0123456789abcdef"  # an old one of another backbone
    with pytest.raises(BackboneMismatchError):
        joblib.load(io.BytesIO(pickled(model))).predict(TEXTS[:3])


@pytest.mark.parametrize("path", ["./no/such/folder", "/no/such/backbone", "~/missing-model"])
def test_a_missing_local_folder_is_named(path):
    with pytest.raises(ValueError, match="no such folder"):
        small_regressor(path).fit(TEXTS, TARGETS)


@pytest.mark.slow
def test_minilm_lowercasing_turned_off_changes_the_fingerprint(minilm, tmp_path):
    folder = shutil.copytree(_backbones.resolve_backbone(minilm), tmp_path / "cased")
    before = fingerprint(_backbones.resolve_backbone(minilm))
    for name in ("tokenizer_config.json", "tokenizer.json"):
        path = folder / name
        settings = json.loads(path.read_text())
        if name == "tokenizer_config.json":
            settings["do_lower_case"] = False
        else:
            settings["normalizer"]["lowercase"] = False
        path.write_text(json.dumps(settings))
    assert fingerprint(folder) != before
