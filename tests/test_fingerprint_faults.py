"""Backbone files that change or are damaged never pass as the backbone that was fitted.

Each test is a fault a review reproduced as a silent wrong answer: states of old weights
served under a new fingerprint, a damaged conversion served as the embedded backbone.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TARGETS, TEXTS, build_tiny_llama, small_regressor
from test_fingerprint import private_memo  # noqa: F401  (autouse: a memo and home per test)

from sklearn_relish import _backbones, _fingerprint, clear_backbones, clear_cache


def fingerprint(folder, **backbone_kwargs) -> str:
    return _backbones.load_backbone(str(folder), device=torch.device("cpu"),
                                    dtype=torch.float32,
                                    backbone_kwargs=backbone_kwargs or None).fingerprint


@pytest.mark.parametrize("backbone_kwargs", [{"use_safetensors": True}, {"variant": None}])
def test_a_folder_saved_again_is_read_again_with_any_weight_choosing_kwargs(
        tmp_path, backbone_kwargs):
    # With use_safetensors= or variant= the folder was never re-checked: a fine-tune saved
    # again into it was not read, and its fits carried the old fingerprint and states.
    folder = tmp_path / "ckpt"
    build_tiny_llama(folder, seed=0)
    first = small_regressor(str(folder), backbone_kwargs=backbone_kwargs).fit(TEXTS, TARGETS)
    loads = _backbones.N_LOADS
    build_tiny_llama(folder, seed=1)
    again = small_regressor(str(folder), backbone_kwargs=backbone_kwargs).fit(TEXTS, TARGETS)
    assert _backbones.N_LOADS == loads + 1
    assert again.featurizer_.fingerprint != first.featurizer_.fingerprint


def test_a_folder_rewritten_while_it_loads_is_refused_not_misfiled(tmp_path, monkeypatch):
    # A training job saving a checkpoint into the folder during the load: the old weights
    # were loaded, the new files hashed, and the old weights' states filed under the new
    # fingerprint in the store, to be served to every later fit of the new weights.
    from transformers import AutoModel

    folder = tmp_path / "ckpt"
    build_tiny_llama(folder, seed=0)
    read = AutoModel.from_pretrained

    def read_then_rewritten(*args, **kwargs):
        model = read(*args, **kwargs)
        build_tiny_llama(folder, seed=1)
        return model

    monkeypatch.setattr(AutoModel, "from_pretrained", read_then_rewritten)
    store = tmp_path / "store"
    with pytest.raises(ValueError, match="changed while it was being loaded"):
        small_regressor(str(folder), cache_dir=str(store)).fit(TEXTS, TARGETS)
    monkeypatch.setattr(AutoModel, "from_pretrained", read)
    clear_cache()
    served = small_regressor(str(folder), cache_dir=str(store)).fit(TEXTS, TARGETS)
    clear_backbones()
    clear_cache()
    fresh = small_regressor(str(folder), cache_dir=str(tmp_path / "fresh")).fit(TEXTS, TARGETS)
    torch.testing.assert_close(torch.as_tensor(served.predict(TEXTS)),
                               torch.as_tensor(fresh.predict(TEXTS)))


def test_an_adapters_fingerprint_covers_its_base_model(tmp_path):
    # A PEFT adapter folder holds only the adapter: new base weights under the same adapter
    # kept the fingerprint, so old states were served and old models were not refused.
    peft = pytest.importorskip("peft")
    from transformers import AutoTokenizer, LlamaModel

    base = Path(build_tiny_llama(tmp_path / "base", seed=0))
    adapter = tmp_path / "adapter"
    config = peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft.get_peft_model(LlamaModel.from_pretrained(base), config).save_pretrained(adapter)
    AutoTokenizer.from_pretrained(base).save_pretrained(adapter)
    assert json.loads((adapter / "adapter_config.json").read_text())[
        "base_model_name_or_path"] == str(base)
    before = fingerprint(adapter)
    clear_backbones()
    assert fingerprint(adapter) == before  # stable while nothing changes
    build_tiny_llama(base, seed=1)
    clear_backbones()
    assert fingerprint(adapter) != before


def test_tokenizer_files_of_fastbpe_marian_and_prophetnet_are_hashed(tmp_path):
    folder = tmp_path / "tok"
    folder.mkdir()
    names = ["config.json", "vocab.txt", "bpe.codes", "source.spm", "target.spm",
             "prophetnet.tokenizer", "pytorch_model.bin"]
    for name in names:
        (folder / name).write_text(name)
    assert sorted(p.name for p in _fingerprint.checkpoint_files(folder)) == sorted(names)


def test_a_damaged_digest_in_the_memo_is_recomputed(tmp_path):
    # One flipped hex digit still parses: the memo's lie was trusted while the file's stat
    # held, and an unchanged backbone was refused as another.
    folder = Path(build_tiny_llama(tmp_path / "a"))
    good = fingerprint(folder)
    memo = _fingerprint._memo_path()
    entries = json.loads(memo.read_text())
    weights = next(key for key in entries if key.endswith("model.safetensors"))
    digest = entries[weights][-2]
    entries[weights][-2] = ("1" if digest[0] == "0" else "0") + digest[1:]
    memo.write_text(json.dumps(entries))
    clear_backbones()
    assert fingerprint(folder) == good


def _fake_conversion(home: Path, source: Path) -> Path:
    """A conversion folder as _convert_gguf leaves it, from a tiny model's files."""
    target = home / "backbones" / "tiny-000000000000"
    shutil.copytree(source, target)
    return target


def test_a_conversion_damaged_after_it_was_written_is_not_trusted(tmp_path):
    from sklearn_relish._embedded import _conversion_complete, _conversion_intact

    folder = _fake_conversion(tmp_path / "home", Path(build_tiny_llama(tmp_path / "tiny")))
    assert _conversion_complete(folder) and _conversion_intact(folder)  # records digests
    assert _conversion_intact(folder)  # and finds them again
    tokenizer = folder / "tokenizer.json"
    vocabulary = tokenizer.read_text()
    # Two tokens' ids swapped: valid JSON, every file in place, another tokenizer.
    settings = json.loads(vocabulary)
    ids = settings["model"]["vocab"]
    first, second = sorted(ids)[10:12]
    ids[first], ids[second] = ids[second], ids[first]
    tokenizer.write_text(json.dumps(settings))
    assert _conversion_complete(folder)  # whole, by the structural check
    assert not _conversion_intact(folder)
    tokenizer.write_text(vocabulary)
    assert _conversion_intact(folder)
    (folder / "extra.json").write_text("{}")
    assert not _conversion_intact(folder)  # a file added beside the conversion


def test_the_digest_record_leaves_the_fingerprint_as_it_was(tmp_path):
    # Recorded in a dot file, which the fingerprint skips: no fitted model is refused.
    from sklearn_relish._embedded import _MANIFEST, _conversion_intact

    folder = _fake_conversion(tmp_path / "home", Path(build_tiny_llama(tmp_path / "tiny")))
    before = fingerprint(folder)
    _conversion_intact(folder)
    assert (folder / _MANIFEST).is_file()
    clear_backbones()
    assert fingerprint(folder) == before


def test_a_file_rewritten_within_a_timestamp_tick_is_not_served_from_the_memo(
        tmp_path, monkeypatch):
    # On a file system with 1-2 s timestamps, a same-size rewrite in place within the tick
    # of the hash left size, mtime, ctime and inode as memoised: the old digest was served.
    # Simulated by pinning the file's stat; only the clock says the file is fresh.
    folder = Path(build_tiny_llama(tmp_path / "a"))
    weights = folder / "model.safetensors"
    frozen = weights.stat()
    monkeypatch.setattr(_fingerprint, "_now_ns", lambda: frozen.st_ctime_ns + 10**9)
    before = fingerprint(folder)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # the last byte of a weight: the same size
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(frozen.st_atime_ns, frozen.st_mtime_ns))
    real_stat = Path.stat
    monkeypatch.setattr(Path, "stat", lambda self, **kw: frozen if self == weights
                        else real_stat(self, **kw))
    clear_backbones()
    assert fingerprint(folder) != before


def test_a_file_dated_in_the_future_is_still_memoised(tmp_path, monkeypatch):
    # `tar x` or `rsync -a` from a machine whose clock ran fast dates files ahead: judged
    # by their mtime, such weights were never memoised and were hashed whole at every load.
    folder = Path(build_tiny_llama(tmp_path / "a"))
    weights = folder / "model.safetensors"
    day = 24 * 3600 * 10**9
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + day))
    monkeypatch.setattr(_fingerprint, "_now_ns", lambda: weights.stat().st_ctime_ns + 60 * 10**9)
    fingerprint(folder)
    memo = json.loads(_fingerprint._memo_path().read_text())
    assert str(weights.resolve()) in memo
