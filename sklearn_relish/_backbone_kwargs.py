"""``backbone_kwargs``: what users pass on to ``from_pretrained``, checked and keyed.

The estimator owns some arguments (dtype, device, trust_remote_code) and refuses them
here; the rest reach transformers as given. A canonical key of them separates registry
entries and cache keys; a ``device_map`` naming GPUs this process lacks is refused by name.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from typing import Any

import torch

# from_pretrained arguments that estimator parameters own: one way to say each thing.
_OWNED_KWARGS = {"dtype": "backbone_dtype", "torch_dtype": "backbone_dtype",
                 "trust_remote_code": "trust_remote_code", "device": "device",
                 "output_hidden_states": None, "gguf_file": None}
# Arguments that say which files to read: the tokenizer needs them as much as the model.
_FILE_KWARGS = ("revision", "subfolder", "cache_dir", "token", "local_files_only")


def check_backbone_kwargs(kwargs: Any) -> dict[str, Any]:
    """Validate ``backbone_kwargs``: None or a dict of ``from_pretrained`` arguments."""
    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise TypeError(
            f"backbone_kwargs must be a dict of from_pretrained arguments (str keys) or None; "
            f"got {type(kwargs).__name__}."
        )
    for key in kwargs:
        if key in _OWNED_KWARGS:
            owner = _OWNED_KWARGS[key]
            raise ValueError(
                f"backbone_kwargs may not set {key!r}: "
                + (f"use the estimator's {owner}= parameter instead." if owner
                   else "the package sets it itself.")
            )
    # A deep copy: transformers and accelerate rewrite nested arguments in place
    # (max_memory={"cpu": "10GB"} became {"cpu": 10000000000}), which changed the user's
    # dict and made the same dict miss the registry: the weights were loaded twice.
    return copy.deepcopy(dict(kwargs))


def shown(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` for an error message: a Hugging Face token is not printed into logs."""
    return {key: "***" if "token" in str(key).lower() and value not in (None, False, True)
            else value for key, value in kwargs.items()}


def _describe(value: Any) -> Any:
    # Config objects (BitsAndBytesConfig...) are described by their settings, so two equal
    # configs share a registry entry and a cache key.
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return repr(value)


def _sortable(value: Any) -> Any:
    # json cannot sort a dict whose keys mix types, and accelerate's max_memory does just
    # that ({0: "20GiB", "cpu": "64GiB"}): such keys are written as their repr.
    if isinstance(value, dict):
        if len({type(key) for key in value}) > 1:
            value = {repr(key): item for key, item in value.items()}
        return {key: _sortable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_sortable(item) for item in value]
    return value


def kwargs_key(kwargs: dict[str, Any]) -> str:
    """A canonical, hashable description of ``backbone_kwargs``."""
    return json.dumps(_sortable(kwargs), sort_keys=True, default=_describe)


# from_pretrained settings that load another weights file than the folder's default.
_OTHER_WEIGHTS = {"variant", "use_safetensors"}


def _other_accelerator() -> bool:
    accelerator = getattr(torch, "accelerator", None)
    try:
        return bool(accelerator and accelerator.is_available()
                    and accelerator.current_accelerator().type != "cuda")
    except (RuntimeError, AttributeError):
        return False


def _check_device_map(device_map: Any) -> None:
    """A ``device_map`` naming GPUs this process does not have is refused by name (torch
    would stop with "Torch not compiled with CUDA enabled" from inside accelerate)."""
    values = device_map.values() if isinstance(device_map, dict) else [device_map]
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for value in values:
        if isinstance(value, bool):
            continue  # not a device: left for transformers to judge
        if isinstance(value, int):
            # accelerate reads a bare integer as an index of the machine's accelerator,
            # which need not be CUDA (XPU, NPU): checked only when there is none or CUDA.
            if _other_accelerator():
                continue
            index = value
        elif isinstance(value, (str, torch.device)):
            try:
                placed = torch.device(value)
            except (RuntimeError, TypeError):
                continue  # "auto", "balanced", "disk": placement strategies, not devices
            if placed.type != "cuda":
                continue
            index = placed.index or 0
        else:
            continue
        if index >= visible:
            where = (f"CUDA device {index}, but this process sees {visible}" if visible
                     else "a CUDA device, but CUDA is not available here")
            raise ValueError(
                f"backbone_kwargs['device_map'] places weights on {value!r}: {where}. Use "
                "device_map='auto', another index, or leave device_map out (on a fitted "
                "model: set_params(backbone_kwargs=...)).")


def _placement(device: torch.device, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Load straight onto the GPU where accelerate can place the weights (no host copy);
    a ``device_map`` of the user's own wins."""
    if "device_map" in kwargs or device.type != "cuda":
        return {}
    if importlib.util.find_spec("accelerate") is None:
        return {}
    return {"device_map": {"": str(device)}}
