"""What identifies a backbone: every byte of its weights and tokenizer files, and its config.

A fitted model records its backbone's fingerprint and refuses to predict with another
(``BackboneMismatchError``); the token-state cache keys every entry by it, so two
backbones never share states. Both only work if the fingerprint changes whenever the
backbone's output can: any weight, any tokenizer setting (lower-casing, added tokens).

So the checkpoint's files are hashed whole, once. Measured on this 2-core machine, a
2.5 GB file (a 1B-parameter bf16 checkpoint) took 2.5 s from the page cache, where the
weights just loaded usually are, and 8.7 s from a cold disk; an 8B checkpoint (16 GB)
takes about 16 s warm. Each file's digest is then memoised by its path, size,
modification time, ctime and inode under ``relish_home()``, so later loads cost a ``stat``
per file (0.3 ms); a file changed in the 3 s before it was hashed is hashed again at the
next load, since a timestamp tick could hide a second change. Hashing files rather than
tensors also makes the fingerprint the same whatever dtype or device the weights are loaded
in.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import torch

# Weights in the order transformers prefers them: with safetensors present, other
# formats in the folder are not what gets loaded, so they are not hashed.
_WEIGHT_SUFFIXES = ((".safetensors",), (".bin", ".pt", ".pth", ".gguf"))
# Config and tokenizer files (tokenizer.json, vocab.txt, merges.txt, tokenizer.model...).
_EARLIER_OTHER_SUFFIXES = (".json", ".txt", ".model", ".tiktoken", ".jinja")
# ...and the tokenizer files of fastBPE (PhoBERT, BERTweet: bpe.codes), Marian
# (source.spm, target.spm), ProphetNet (prophetnet.tokenizer) and older BPE vocabularies.
_OTHER_SUFFIXES = (*_EARLIER_OTHER_SUFFIXES, ".codes", ".spm", ".tokenizer", ".bpe", ".vocab")
# Files that never change a token state, each set what one rule of this package skipped
# (earlier_fingerprints recomputes the older ones so models fitted under them still load).
_EARLIER_SKIPPED = frozenset({"README.md", "README.txt", "LICENSE", "LICENSE.txt"})
_TRAINER_SKIPPED = _EARLIER_SKIPPED | {
    # What transformers' Trainer writes beside a checkpoint: its log and metrics, which a
    # later evaluate() rewrites without touching a weight.
    "trainer_state.json", "all_results.json", "train_results.json", "eval_results.json",
    "test_results.json", "predict_results.json"}
# Sampling settings for generate(): a folder gains or edits this file (a hub update, a
# save_pretrained of a causal LM) without any hidden state changing.
_SKIPPED = _TRAINER_SKIPPED | {"generation_config.json"}
# A loader setting that tokenizer.save_pretrained writes into tokenizer_config.json; it
# changes nothing the tokenizer does (earlier conversions of the embedded GGUFs hold either).
_LOADER_FLAGS = (b'"local_files_only": true', b'"local_files_only": false')
# Keys of config.json that name how the weights were stored or loaded, not what they are.
_VOLATILE_CONFIG = ("_name_or_path", "transformers_version", "dtype", "torch_dtype",
                    "quantization_config", "architectures", "_commit_hash")
_CHUNK = 1 << 24
_MEMO_LOCK = threading.Lock()
PREFIX = "sha256:"  # new fingerprints; older pickles hold 16 hex digits (legacy_fingerprint)


def checkpoint_files(folder: str | os.PathLike, skipped: frozenset = _SKIPPED,
                     narrow: bool = True, code: bool = False,
                     every_weight: bool = False,
                     suffixes: tuple[str, ...] = _OTHER_SUFFIXES) -> list[Path]:
    """The files of a checkpoint folder that determine the backbone's output.

    With ``narrow``, only the weights transformers loads: ``model.safetensors`` (or
    ``pytorch_model.bin``) when present, else the shards a ``*.index.json`` lists, so a
    duplicate such as Mistral's ``consolidated.safetensors``, there or not depending on how
    the folder was downloaded, neither changes the fingerprint nor costs a hash. With
    ``code`` (``trust_remote_code``), the modeling code (``*.py``) too: it decides the states.
    ``every_weight``: every weight file of every format, for loads that pick another file
    than the default (``variant="fp16"`` reads ``model.fp16.safetensors``,
    ``use_safetensors=False`` the ``.bin``).
    """
    files = [p for p in sorted(Path(folder).iterdir())
             if p.is_file() and p.name not in skipped and not p.name.startswith(".")]
    chosen = [p for p in files if p.suffix in suffixes or (code and p.suffix == ".py")]
    if every_weight:
        return sorted(chosen + [p for p in files
                                if any(p.suffix in group for group in _WEIGHT_SUFFIXES)])
    for suffixes in _WEIGHT_SUFFIXES:
        weights = [p for p in files if p.suffix in suffixes]
        if weights:
            return sorted(chosen + (_loaded_weights(weights, files) if narrow else weights))
    return chosen


def file_stats(folder: Path | None, code: bool = False,
               every_weight: bool = False) -> tuple | None:
    """Size, times and inode of each file :func:`checkpoint_files` lists (None: no folder):
    equal before and after a load only if no file was rewritten in between."""
    if folder is None:
        return None
    try:
        stats = [(p.name, p.stat()) for p in checkpoint_files(folder, code=code,
                                                               every_weight=every_weight)]
    except OSError:
        return None
    return tuple((name, s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_ino)
                 for name, s in stats)


def _loaded_weights(weights: list[Path], files: list[Path]) -> list[Path]:
    # transformers' order: the single default file where there is one, else the shards
    # (a repo may ship both layouts; hashing the shards then missed the file loaded).
    single = [p for p in weights if p.name in ("model.safetensors", "pytorch_model.bin")]
    if single:
        return single
    for index in (p for p in files if p.name.endswith(".index.json")):
        try:
            listed = set(json.loads(index.read_text()).get("weight_map", {}).values())
        except (OSError, ValueError, AttributeError):
            continue  # not an index of shards: hash every weight file as before
        shards = [p for p in weights if p.name in listed]
        if shards:
            return shards
    return weights


def _memo_path() -> Path:
    from ._backbones import relish_home

    return relish_home() / "file-digests.json"


def _read_memo() -> dict[str, Any]:
    try:
        return json.loads(_memo_path().read_text())
    except (OSError, ValueError):
        return {}  # no memo yet, or unreadable: digests are recomputed, never trusted


def _write_memo(memo: dict[str, Any]) -> None:
    from ._files import write_record

    write_record(_memo_path(), memo)  # unwritable: only costs re-hashing next time


_RACY_NS = 3 * 10**9  # the coarsest file timestamps (FAT: 2 s), with a margin
_now_ns = time.time_ns  # the clock, replaceable in tests


def file_digest(path: Path, memo: dict[str, Any]) -> str:
    """SHA-256 of a file, reused from ``memo`` while its stat is unchanged.

    Size and mtime alone are not enough: ``cp -p``, ``rsync -a``, ``tar x`` and fixed build
    timestamps put the old mtime on new weights of the same size. The inode, device and
    ctime (which no tool can set back) change whenever the file is rewritten or replaced,
    but only by a timestamp tick: a file changed in the last few seconds is not memoised.
    """
    started = _now_ns()
    stat = path.stat()
    key = str(path.resolve())
    identity = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev]
    seen = memo.get(key)
    # Older entries ([size, mtime, sha], or without the check) miss and are recomputed.
    if seen and seen[:-2] == identity and seen[-1] == _entry_check(key, seen[:-1]):
        return seen[-2]
    sha = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            sha.update(chunk)
    entry = [*identity, sha.hexdigest()]
    # "Racily clean", as git calls it: a file changed within a timestamp tick of this stat
    # (2 s on FAT, 1 s on ext3 and HFS+) could be rewritten at the same size within the same
    # tick, and the memo could not tell. Its digest is memoised once it is older than that.
    # The change time, which only the kernel sets (an mtime copied ahead by `tar x` or
    # `rsync -a` from a machine whose clock ran fast would never be memoised); Windows'
    # st_ctime is the creation time, so there the modification time.
    changed = stat.st_mtime_ns if os.name == "nt" else stat.st_ctime_ns
    if changed < started - _RACY_NS:
        memo[key] = [*entry, _entry_check(key, entry)]
    return sha.hexdigest()


def _entry_check(key: str, entry: list) -> str:
    """A checksum of a memo entry: a digest damaged on disk (one flipped hex digit parses
    as well as the right one) is recomputed, not trusted as the file's."""
    return hashlib.blake2b(json.dumps([key, *entry]).encode(), digest_size=8).hexdigest()


def _config_digest(config: Any) -> Any:
    """A SHA-256 started with the config, less what names how the weights were stored."""
    settings = config.to_dict()
    for volatile in _VOLATILE_CONFIG:
        settings.pop(volatile, None)
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())


class NoBaseFolder(LookupError):
    """A PEFT adapter's base model has no local folder to fingerprint (hash the tensors)."""


def checkpoint_fingerprint(folder: str | os.PathLike, config: Any, code: bool = False,
                           skipped: frozenset = _SKIPPED,
                           replaced: dict[str, str] | None = None, narrow: bool = True,
                           every_weight: bool = False, suffixes: tuple = _OTHER_SUFFIXES,
                           with_base: bool = True) -> str:
    """Fingerprint of the checkpoint in ``folder``: its files' digests and its config.

    ``code``: the backbone runs the folder's own modeling code (``trust_remote_code``).
    ``every_weight``: see :func:`checkpoint_files`. A PEFT adapter's folder holds only the
    adapter; the base model it names is fingerprinted too (``with_base``), since new base
    weights under the same adapter are another backbone. Raises :class:`NoBaseFolder`
    where that base has no local folder. ``skipped``, ``replaced`` (file name -> digest to
    use instead of the file's), ``narrow``, ``suffixes`` and ``with_base=False`` exist for
    :func:`earlier_fingerprints`.
    """
    digest = _config_digest(config)
    files = checkpoint_files(folder, skipped, narrow, code, every_weight, suffixes)
    for path, file_hash in zip(files, memoised_digests(files), strict=True):
        file_hash = (replaced or {}).get(path.name) or file_hash
        digest.update(f"{path.name}:{file_hash}".encode())
    adapter = Path(folder) / "adapter_config.json"
    if with_base and adapter.is_file():
        base = _adapter_base(adapter)
        digest.update(f"base:{checkpoint_fingerprint(base, config, code)}".encode())
    return PREFIX + digest.hexdigest()[:32]


def _adapter_base(adapter_config: Path) -> Path:
    """The local folder of the base model a PEFT adapter names (a path or a hub id)."""
    from ._backbones import _checkpoint_folder

    try:
        settings = json.loads(adapter_config.read_text())
        base = settings["base_model_name_or_path"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise NoBaseFolder(f"{adapter_config} names no base model") from error
    if not isinstance(base, str) or not base:
        raise NoBaseFolder(f"{adapter_config} names no base model")
    folder = _checkpoint_folder(base, {"revision": settings.get("revision")})
    if folder is None or folder.resolve() == adapter_config.parent.resolve():
        raise NoBaseFolder(f"the base model {base!r} of {adapter_config} is not on disk")
    return folder


def memoised_digests(paths: list[Path]) -> list[str]:
    """SHA-256 of each file, through the digest memo (read once, written if it grew)."""
    with _MEMO_LOCK:
        memo = _read_memo()
        before = dict(memo)
        digests = [file_digest(path, memo) for path in paths]
        if memo != before:
            _write_memo(memo)
    return digests


def earlier_fingerprints(folder: str | os.PathLike, config: Any) -> set[str]:
    """What earlier rules of this package made of the same files, so models fitted then load.

    Rules that changed without the backbone changing: Trainer files and
    ``generation_config.json`` beside the weights were hashed, the embedded conversions
    wrote ``local_files_only`` as whatever HF_HUB_OFFLINE said, every weight file was
    hashed (not only those loaded), remote code was not, nor were the tokenizer files of
    fastBPE, Marian and ProphetNet, nor a PEFT adapter's base model. Computed only when a
    stored fingerprint does not match.
    """
    replacements: list[dict[str, str]] = [{}]
    tokenizer_config = Path(folder) / "tokenizer_config.json"
    if tokenizer_config.is_file():
        text = tokenizer_config.read_bytes()
        for flag, other in (_LOADER_FLAGS, _LOADER_FLAGS[::-1]):
            if flag in text:
                flipped = hashlib.sha256(text.replace(flag, other)).hexdigest()
                replacements.append({tokenizer_config.name: flipped})
    return {checkpoint_fingerprint(folder, config, code=False, skipped=skipped,
                                   replaced=replaced, narrow=narrow, suffixes=suffixes,
                                   with_base=False)
            for skipped in (_SKIPPED, _TRAINER_SKIPPED, _EARLIER_SKIPPED)
            for replaced in replacements
            for narrow in (True, False)
            for suffixes in {_OTHER_SUFFIXES, _EARLIER_OTHER_SUFFIXES}}


def legacy_fingerprint(model: Any) -> str:
    """The fingerprint sklearn_relish 0.1.0 wrote into pickles (config and sampled weights).

    Kept only so that models saved by 0.1.0 still load: it samples 256 values per tensor
    and ignores the tokenizer, which is why new models use :func:`checkpoint_fingerprint`.
    """
    digest = _config_digest(model.config)
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // 256)
        sample = flat[::step][:256].to("cpu", torch.float32).numpy()
        digest.update(f"{name}:{tuple(tensor.shape)}".encode())
        digest.update(sample.round(4).tobytes())
    return digest.hexdigest()[:16]


def tensor_fingerprint(model: Any) -> str:
    """Fallback for a model with no checkpoint folder known: its config and every tensor.

    Slower than memoised file digests and dependent on the load dtype, but still covers
    every weight. (The tokenizer is not covered here: it has no files either.)
    """
    digest = _config_digest(model.config)
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().contiguous().view(-1).view(dtype=torch.uint8).cpu().numpy())
    return PREFIX + digest.hexdigest()[:32]
