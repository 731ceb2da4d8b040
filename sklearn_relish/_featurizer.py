"""Texts in, token states of a frozen LLM out: the only module that runs the backbone.

Texts are looked up in the token-state cache first; the rest are tokenized, sorted by
length into batches (dynamic padding, so short texts cost little), run once under
``torch.inference_mode`` and stored back, unpadded and in half precision.

A batch holds as many texts as fit a budget of padded tokens suited to the device
(``batch_size="auto"``), so short texts travel in large batches and long ones in small
ones; the real tokens of a batch are gathered and cast to float16 on the device and come
back to the host in one copy.
"""

from __future__ import annotations

import os
import string
import warnings
from collections.abc import Iterator
from typing import Any

import torch

from ._backbones import (
    LoadedBackbone,
    count_hidden_states,
    load_backbone,
    position_limit,
    resolve_device,
    resolve_dtype,
)
from ._batching import fill_batches, longest_first
from ._cache import CachedStates, cache_key, count_forward, memory_cache
from ._console import user_stacklevel
from ._early_exit import hidden_states_at
from ._embedded import rename_legacy_backbone, transformers_version_hint
from ._fingerprint import PREFIX, earlier_fingerprints, legacy_fingerprint
from ._inputs import PAIR, SINGLE, check_layer, format_texts
from ._store import StoreUnavailable, TokenStateStore, handed_over, warn_once
from ._tokens import tokenize, tokens_before_text

# Padded tokens per forward pass with batch_size="auto". CPU: as fast as any budget measured
# up to 4,096 (16,384 is slower) and keeps the forward pass's working memory small
# (benchmarks/RESULTS.md, "Featurization batches on the CPU"); CUDA: large batches fill the
# card, a guess to be confirmed by benchmarks/gpu_scale.py.
TOKEN_BUDGET = {"cpu": 1024, "cuda": 16384}
_FLOAT16_MAX = torch.finfo(torch.float16).max


def plan_batches(lengths: list[int], batch_size: int | str, device_type: str) -> list[list[int]]:
    """Indices of non-empty texts, longest first, cut into batches.

    An int is a fixed number of texts per batch; ``"auto"`` fills each batch up to the
    device's budget of padded tokens (texts x the batch's longest text).
    """
    order = [i for i in longest_first(lengths) if lengths[i]]
    if batch_size != "auto":
        return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    return fill_batches(order, lengths, TOKEN_BUDGET.get(device_type, TOKEN_BUDGET["cuda"]))


# Texts whose token states predict and transform hold at once: enough for length-sorted
# batches to pad little, few enough that a million texts never sit in memory together.
PREDICT_CHUNK = 2048


class BackboneMismatchError(ValueError):
    """The backbone found at load time is not the one the estimator was trained on."""


class LLMFeaturizer:
    """Turns texts (or pairs) into per-text token states of one backbone layer.

    Holds a reference to a shared, lazily loaded backbone; pickles without it (only
    the backbone's identity travels), and checks that identity again after loading.
    """

    def __init__(
        self,
        backbone: str,
        *,
        layer: int | float = -1,
        max_length: int = 512,
        prompt: str | None = None,
        batch_size: int | str = "auto",
        device: str = "auto",
        dtype: str = "auto",
        trust_remote_code: bool = False,
        backbone_kwargs: dict | None = None,
        cache: bool = True,
        cache_dir: str | None = None,
        verbose: int = 0,
    ) -> None:
        self.backbone = backbone
        self.layer = layer
        self.max_length = max_length
        self.prompt = prompt
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
        self.trust_remote_code = trust_remote_code
        self.backbone_kwargs = backbone_kwargs
        self.cache = cache
        self.cache_dir = cache_dir
        self.verbose = verbose
        self.fingerprint: str | None = None  # set on first load, checked on every later one
        # The transformers that made the fingerprinted files, named if a later load differs.
        self.transformers_version: str | None = None
        self._loaded: LoadedBackbone | None = None

    # -- pickling: identity only, never weights -------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_loaded"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        rename_legacy_backbone(state)
        state.setdefault("backbone_kwargs", None)  # added after 0.1.x
        state.setdefault("transformers_version", None)  # not recorded before 0.1.x
        self.__dict__.update(state)

    # -- the backbone ---------------------------------------------------------------------
    @property
    def loaded(self) -> LoadedBackbone:
        if self._loaded is None:
            device = resolve_device(self.device)
            try:
                loaded = load_backbone(
                    self.backbone,
                    device=device,
                    dtype=resolve_dtype(self.dtype, device),
                    trust_remote_code=self.trust_remote_code,
                    backbone_kwargs=self.backbone_kwargs,
                )
            except ValueError as error:
                if self.fingerprint is None or not os.path.isabs(self.backbone) or \
                        os.path.exists(self.backbone):
                    raise
                # A fitted model whose backbone folder moved (another machine, a renamed
                # disk): the way out, which the fingerprint then checks, not just "no such
                # folder" with set_params(backbone=...) that waits for the next fit.
                raise ValueError(
                    f"{error} This model was fitted on that folder; if it has moved, load "
                    f"the model with load_model(file, moved_backbones={{{self.backbone!r}: "
                    "'<its new folder>'}) (the weights there are checked to be the same)."
                ) from error
            if self.fingerprint is not None and not self._same_backbone(loaded):
                raise BackboneMismatchError(
                    f"The backbone {self.backbone!r} found here (fingerprint "
                    f"{loaded.fingerprint}) is not the one this model was trained on "
                    f"(fingerprint {self.fingerprint}); its predictions would be meaningless. "
                    "Install the original backbone, or refit on this one."
                    + transformers_version_hint(self.transformers_version, self.backbone,
                                                loaded.folder)
                )
            if self.fingerprint is None:
                import transformers

                self.transformers_version = transformers.__version__
            self.fingerprint = loaded.fingerprint
            self.layer_index(loaded)  # an out-of-range layer fails here, before any forward
            self._loaded = loaded
        return self._loaded

    def _same_backbone(self, loaded: LoadedBackbone) -> bool:
        if self.fingerprint.startswith(PREFIX):
            if loaded.fingerprint == self.fingerprint:
                return True
            # Fitted when the same files were fingerprinted by an earlier rule?
            return (loaded.folder is not None and not loaded.every_weight
                    and self.fingerprint in earlier_fingerprints(loaded.folder,
                                                                 loaded.model.config))
        # A model pickled by sklearn_relish 0.1.0 holds the older, sampled fingerprint.
        return legacy_fingerprint(loaded.model) == self.fingerprint

    def layer_index(self, loaded: LoadedBackbone | None = None) -> int:
        """The hidden-state index ``layer`` names: a whole number as is, a fraction as a share.

        A float lets one default mean "the middle" for any backbone: 0.5 is layer 15 of
        SmolLM2's 30 and layer 3 of MiniLM's 6. Negative ints count from the last layer.
        Without ``loaded`` (and none loaded yet) only the backbone's config is read.
        """
        loaded = loaded or self._loaded
        n = loaded.n_hidden_states if loaded is not None else count_hidden_states(
            self.backbone, trust_remote_code=self.trust_remote_code,
            backbone_kwargs=self.backbone_kwargs)
        layer = check_layer(self.layer)
        if isinstance(layer, float):
            return int(round(layer * (n - 1)))
        if not -n <= layer < n:
            raise ValueError(
                f"layer={self.layer} is out of range for {self.backbone!r}, which has {n} "
                f"hidden states (valid: {-n}..{n - 1}; -1 is the last layer, or a fraction "
                "strictly between 0 and 1 for a share of the depth)."
            )
        return layer % n  # -1 and n-1 name the same states and share cache entries

    @property
    def hidden_size(self) -> int:
        return self.loaded.hidden_size

    def _effective_max_length(self) -> int:
        # Never ask for more positions than the model has.
        positions = position_limit(self.loaded.model)
        return min(self.max_length, positions) if positions else self.max_length

    def _check_room_for_text(self, loaded: LoadedBackbone, max_length: int,
                             native_pairs: bool) -> None:
        """Refuse a ``max_length`` that the special tokens alone fill, or the prompt's part
        before the text.

        The tokenizer cannot truncate below them (it would keep the text whole), so such
        a limit would silently not apply and a long text would overflow the model.
        """
        specials = loaded.tokenizer.num_special_tokens_to_add(pair=native_pairs)
        needed = specials + (2 if native_pairs else 1)
        if max_length < needed:
            raise ValueError(
                f"max_length={max_length} leaves no room for text: {self.backbone!r} adds "
                f"{specials} special token(s) to each {'pair' if native_pairs else 'text'}; "
                f"use max_length >= {needed}."
            )
        if self.prompt is None:
            return
        with loaded.lock:  # fast tokenizers are not re-entrant
            before = tokens_before_text(loaded.tokenizer, self.prompt)
        if before >= max_length:
            # Every text cut away: one prediction for every text, with only a truncation
            # warning that advised what the user had already done.
            raise ValueError(
                f"max_length={max_length} leaves no room for text: the prompt takes "
                f"{before} tokens (special tokens included) before the text, and the end is "
                "what truncation cuts; raise max_length or shorten the prompt."
            )

    # -- featurization --------------------------------------------------------------------
    def transform(self, texts: list, kind: str) -> list[torch.Tensor]:
        """Token states ``(n_tokens_i, d)``, float16 (bfloat16 beyond its range), in order.

        Every returned tensor is the caller's own copy: the cache's tensors never leave it,
        so editing an output in place cannot change what a later call returns.
        """
        states, n_truncated = self.transform_counted(texts, kind)
        self.warn_truncated(n_truncated, len(texts), kind)
        return states

    def transform_chunks(self, texts: list, kind: str, warn: bool = True
                         ) -> Iterator[tuple[int, list[torch.Tensor]]]:
        """``(offset, states of texts[offset:offset + PREDICT_CHUNK])`` chunk by chunk, so
        a caller that keeps only what it computes from them never holds every text's
        states; one truncation warning for all of them (if ``warn``), once the last chunk
        is read."""
        n_truncated = 0
        for offset in range(0, len(texts), PREDICT_CHUNK):
            states, truncated = self.transform_counted(texts[offset:offset + PREDICT_CHUNK],
                                                       kind)
            n_truncated += truncated
            yield offset, states
        if warn:
            self.warn_truncated(n_truncated, len(texts), kind)

    def transform_counted(self, texts: list, kind: str) -> tuple[list[torch.Tensor], int]:
        """:meth:`transform` without its warning: the states and how many were truncated."""
        keys, found, _ = self._resolve(texts, kind)
        n_truncated = sum(found[key].truncated for key in keys)
        # A copy costs 0.02% of featurizing the text (benchmarks/RESULTS.md, "## Scale");
        # torch has no read-only tensors to share instead.
        return [found[key].states.clone() for key in keys], n_truncated

    def warn_truncated(self, n_truncated: int, n_texts: int, kind: str = SINGLE) -> None:
        if not n_truncated:
            return
        limit = self._effective_max_length()
        advice = ("raise max_length to keep them whole" if limit == self.max_length else
                  f"max_length={self.max_length} is beyond the model's {limit} positions, "
                  "so this is as long as a text can be: split longer texts")
        where = (" The cut falls on text_b first (it comes last): put the shorter text "
                 "second, or raise max_length." if self._cuts_text_b_first(kind) else "")
        warnings.warn(
            f"{n_truncated} of {n_texts} {'pairs' if kind == PAIR else 'texts'} are longer "
            f"than max_length={limit} tokens and were truncated; {advice}.{where}",
            UserWarning, stacklevel=user_stacklevel())

    def _cuts_text_b_first(self, kind: str) -> bool:
        """Whether a cut pair loses text_b before text_a: a pair joined into one string (by
        a prompt, or a decoder's newline) with text_b after text_a, cut at the end, as
        tokenizers cut unless told otherwise. A long text_a can then leave none of text_b
        (the tokenizer's own pair encoding cuts both sides instead)."""
        if kind != PAIR:
            return False
        tokenizer = self.loaded.tokenizer
        if self.prompt is None and tokenizer.sep_token:
            return False
        fields = [name for _, name, _, _ in string.Formatter().parse(self.prompt or "")
                  if name is not None]
        b_after_a = not fields or fields.index("text_b") > fields.index("text_a")
        return b_after_a and getattr(tokenizer, "truncation_side", "right") == "right"

    def _keys(self, texts: list, kind: str) -> tuple[list[str], list[str], int, int]:
        loaded = self.loaded
        # Tokenizers with a separator token have a pair template (BERT-like: segment ids
        # too): pairs go through it. Decoder tokenizers have none: a newline joins them.
        separator = None if loaded.tokenizer.sep_token else "\n"
        prompted = format_texts(texts, kind, self.prompt, separator)
        layer = self.layer_index(loaded)
        max_length = self._effective_max_length()
        self._check_room_for_text(loaded, max_length, native_pairs=separator is None
                                  and kind == PAIR and self.prompt is None)
        keys = [cache_key(loaded.fingerprint, layer, max_length, loaded.run_tag, text)
                for text in prompted]
        return keys, prompted, layer, max_length

    def _resolve(self, texts: list, kind: str) -> tuple[list[str], dict[str, CachedStates], int]:
        """Keys, their states (memory, then store, then the LLM) and how many the LLM ran."""
        keys, prompted, layer, max_length = self._keys(texts, kind)
        found: dict[str, CachedStates] = {}
        memory = memory_cache() if self.cache else None
        store = TokenStateStore(self.cache_dir) if self.cache and self.cache_dir else None
        distinct = list(dict.fromkeys(keys))  # first-seen order
        if memory is not None:
            for key in distinct:
                entry = memory.get(key)
                if entry is not None:
                    found[key] = entry
        if store is not None:
            store = self._sync_store(store, memory, distinct, found)

        todo = {key: text for key, text in zip(keys, prompted, strict=True) if key not in found}
        if todo:
            computed = self._forward(list(todo.values()), layer, max_length)
            for key, entry in zip(todo, computed, strict=True):
                found[key] = entry
                if memory is not None:
                    memory.put(key, entry)
            if store is not None:
                try:
                    store.put_many(zip(todo, computed, strict=True))
                except StoreUnavailable as error:
                    warn_once(store, error, writing=True)
        return keys, found, len(todo)

    @staticmethod
    def _sync_store(store: TokenStateStore, memory, distinct: list[str],
                    found: dict[str, CachedStates]) -> TokenStateStore | None:
        """Read what memory lacks from the store and write to it what memory alone holds.

        A store that cannot be read (not a folder, damaged, newer) is skipped with one
        warning: the cache is an optimisation, never a reason to fail. One that is read but
        cannot be written (read-only, disk full) is still read, and no longer written.
        """
        try:
            unwritten = store.missing([key for key in distinct if key in found])
            for key, entry in store.get_many([k for k in distinct if k not in found]).items():
                found[key] = entry
                if memory is not None:
                    memory.put(key, entry)
        except StoreUnavailable as error:
            warn_once(store, error)
            return None
        try:
            store.put_many((key, found[key]) for key in unwritten)
        except StoreUnavailable as error:
            warn_once(store, error, writing=True)
            return None  # not written again in this call
        return store

    def fill_store(self, texts: list, kind: str, verify: bool = False) -> int:
        """Featurize into ``cache_dir`` the texts it lacks; returns how many the LLM ran on.

        Keeps nothing in memory and returns no states, so a cluster worker's memory stays
        flat; a store that cannot be written raises :class:`StoreUnavailable`. With
        ``verify``, stored rows are read and checked and damaged ones recomputed.
        """
        keys, prompted, layer, max_length = self._keys(texts, kind)
        store = TokenStateStore(self.cache_dir)
        todo = dict(zip(keys, prompted, strict=True))
        todo = {key: todo[key] for key in store.missing(list(todo), verify=verify)}
        if todo:
            # Reads work read-only, so fail before the LLM's work, not after. Only with work
            # to do: a complete chunk neither fails nor waits behind other workers' commits.
            store.check_writable()
            computed = self._forward(list(todo.values()), layer, max_length)
            store.put_many(handed_over(list(todo), computed))
        return len(todo)

    def _forward(self, texts: list[str], layer: int, max_length: int) -> list[CachedStates]:
        loaded = self.loaded
        with loaded.lock:
            encoded, truncated = tokenize(loaded.tokenizer, texts, max_length)
            ids = encoded["input_ids"]
            lengths = [len(row) for row in ids]
            states: list[torch.Tensor | None] = [None] * len(texts)
            empty = torch.zeros(0, loaded.hidden_size, dtype=torch.float16)
            for i in range(len(ids)):
                if not ids[i]:  # an empty text has no token to run; the head handles it
                    states[i] = empty
            # Longest first: the slowest batch shows up early in the progress bar, and
            # similar lengths share a batch, so little compute is spent on padding.
            batches = plan_batches(lengths, self.batch_size, loaded.input_device.type)
            n_texts = sum(map(len, batches))
            for batch in self._progress(batches, n_texts):
                try:
                    real = self._run_batch(
                        {name: [rows[i] for i in batch] for name, rows in encoded.items()},
                        layer)
                except _NonFiniteStates as found:
                    raise _non_finite_error(texts[batch[found.position]], layer,
                                            loaded.dtype) from None
                # One copy from the device; each text then gets its own storage (the cache
                # counts and evicts texts one by one).
                pieces = real.split([lengths[i] for i in batch])
                for i, piece in zip(batch, pieces, strict=True):
                    states[i] = _half(piece)
            count_forward(n_texts)
        return [CachedStates(s, cut) for s, cut in zip(states, truncated, strict=True)]

    @torch.inference_mode()
    def _run_batch(self, batch: dict[str, list[list[int]]], layer: int) -> torch.Tensor:
        """The batch's real tokens' states, ``(total tokens, d)`` float16 on the host.

        Raises :class:`_NonFiniteStates` where any is inf or NaN (float16 weights overflow
        on some backbones): such states became NaN features, a NaN head or an error that
        blamed the lr."""
        loaded = self.loaded
        padded = loaded.tokenizer.pad(batch, padding=True, return_tensors="pt")
        padded = {name: tensor.to(loaded.input_device) for name, tensor in padded.items()}
        hidden = hidden_states_at(loaded, padded, layer)
        real = hidden[padded["attention_mask"].to(hidden.device, torch.bool)]
        low, high = real.aminmax()  # no |states| temporary the size of the batch
        if not (torch.isfinite(low) and torch.isfinite(high)):  # NaN propagates to both
            finite = torch.isfinite(real).all(dim=1).cpu()
            per_text = finite.split([len(row) for row in batch["input_ids"]])
            raise _NonFiniteStates(next(i for i, ok in enumerate(per_text) if not ok.all()))
        if max(-low, high) <= _FLOAT16_MAX:  # the usual case: cast on the device, copy half
            return real.to(torch.float16).cpu()  # rows in batch order, tokens in order
        return real.float().cpu()  # _half then picks each text's dtype from its own states

    def _progress(self, batches: list, n_texts: int):
        if not self.verbose:
            return batches
        from tqdm.auto import tqdm

        return tqdm(batches, desc=f"Featurizing {n_texts} texts", unit="batch")


class _NonFiniteStates(Exception):
    """Row ``position`` of a batch has inf or NaN token states."""

    def __init__(self, position: int) -> None:
        super().__init__(position)
        self.position = position


def _non_finite_error(text: str, layer: int, dtype: torch.dtype) -> ValueError:
    name = str(dtype).removeprefix("torch.")
    advice = {"float16": "Try backbone_dtype='bfloat16' or 'float32'",
              "bfloat16": "Try backbone_dtype='float32'"}.get(
        name, "The backbone itself computes them (damaged weights?)")
    return ValueError(
        f"The backbone's states at layer {layer} are infinite or NaN for the text "
        f"{text!r:.80} (as the backbone reads it, prompt included): its activations "
        f"overflow {name}. {advice}; nothing was cached.")


def _half(states: torch.Tensor) -> torch.Tensor:
    """A text's own 16-bit copy: float16 (more precise) where its states fit, else bfloat16.

    Decided per text, never per batch, so a text's cached states do not depend on which
    texts shared its forward pass; float16 would turn activations above 65,504 into inf.
    """
    if states.dtype == torch.float16 or states.abs().max() <= _FLOAT16_MAX:
        return states.to(torch.float16, copy=True)
    return states.to(torch.bfloat16, copy=True)
