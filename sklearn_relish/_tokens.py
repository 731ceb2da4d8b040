"""Texts and marked text pairs to token ids, with the truncated ones counted.

Tokenizing is kept apart from running the backbone: the ids are plain lists, padded only
when a batch is made, so each text is tokenized once whatever batch it lands in.
"""

from __future__ import annotations

import string
import threading
from typing import Any

from ._inputs import PAIR_MARK

# transformers' log level is process-wide: one lock for everyone who lowers it for a moment.
_LOG_LEVEL_LOCK = threading.Lock()


def tokenize(tokenizer: Any, texts: list[str],
             max_length: int) -> tuple[dict[str, list[list[int]]], list[bool]]:
    """Token ids of ``texts`` cut to ``max_length``, and which of them were cut.

    transformers' own truncation warning is silenced for the call: the featurizer reports
    truncation itself, with a count.
    """
    from transformers.utils import logging as hf_logging

    with _LOG_LEVEL_LOCK:
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            return _tokenize_quietly(tokenizer, texts, max_length)
        finally:
            hf_logging.set_verbosity(verbosity)


def _tokenize_quietly(tokenizer: Any, texts: list[str], max_length: int):
    encoded = _encode(tokenizer, texts)
    truncated = [len(row) > max_length for row in encoded["input_ids"]]
    long_rows = [i for i, cut in enumerate(truncated) if cut]
    if long_rows:
        # Re-tokenize with the tokenizer's own truncation so special tokens survive
        # (a pair loses tokens from its longer text first).
        cut = _encode(tokenizer, [texts[i] for i in long_rows], truncation=True,
                      max_length=max_length)
        for name, rows in cut.items():
            for i, row in zip(long_rows, rows, strict=True):
                encoded[name][i] = row
    return encoded, truncated


def _encode(tokenizer: Any, texts: list[str], **kwargs) -> dict[str, list[list[int]]]:
    """Token ids (and segment ids, where the tokenizer makes them) of texts and marked pairs.

    Pairs joined by ``PAIR_MARK`` go through the tokenizer's pair encoding; the result
    keeps the input order.
    """
    pairs = [i for i, text in enumerate(texts) if PAIR_MARK in text]
    if not pairs:
        return _ids_only(tokenizer(texts, add_special_tokens=True, **kwargs))
    singles = [i for i, text in enumerate(texts) if PAIR_MARK not in text]
    firsts, seconds = zip(*(texts[i].split(PAIR_MARK, 1) for i in pairs), strict=True)
    parts = [(pairs, _ids_only(tokenizer(list(firsts), list(seconds), add_special_tokens=True,
                                         **kwargs)))]
    if singles:
        parts.append((singles, _ids_only(tokenizer([texts[i] for i in singles],
                                                   add_special_tokens=True, **kwargs))))
    merged: dict[str, list] = {name: [None] * len(texts) for name in parts[0][1]}
    for rows, encoded in parts:
        for name in merged:
            for i, row in zip(rows, encoded[name], strict=True):
                merged[name][i] = row
    return merged


def _ids_only(encoding) -> dict[str, list[list[int]]]:
    # The attention mask is rebuilt by padding; segment ids matter to BERT-like models.
    return {name: list(encoding[name]) for name in ("input_ids", "token_type_ids")
            if name in encoding}


def tokens_before_text(tokenizer: Any, prompt: str) -> int:
    """Tokens a prompt puts before its first text, special tokens included: truncation
    cuts the end, so a ``max_length`` at or below this keeps no token of any text."""
    prefix = next(iter(string.Formatter().parse(prompt)), ("",))[0] or ""
    return len(tokenizer(prefix, add_special_tokens=True)["input_ids"])
