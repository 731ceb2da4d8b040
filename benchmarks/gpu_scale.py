"""Hand-run benchmark of paper-scale backbones on one GPU, with random weights (timings only).

Llama configs of about 135M (SmolLM2's shape), 1B (Llama-3.2-1B's) and 8B (Llama-3.1-8B's,
with the tokenizer's smaller vocabulary: 7.2B parameters) are built directly on the GPU in
bfloat16, so no weights need to travel; a real tokenizer (SmolLM2's, from the embedded
backbone, or ``--tokenizer``) turns VADER tweets into realistic token counts. Per config:

- featurization by the package (``featurize_batch_size="auto"``, last layer and middle
  layer with early exit), by the package at 32 texts per batch, against the *floor* (a bare
  forward over the same length-sorted batches) and the authors' way (every text padded to
  256 tokens, 32 per batch); the second of two passes is timed (padding's warm-up is one
  batch: all its batches have one shape);
- head training: seconds per epoch of ``RelishTextRegressor`` on the cached states of
  3,024 tweets (5 epochs, no early stopping), and ``predict`` on 840 cached tweets;
- GPU memory: the weights once built, and the peak of each phase on its own (reset before
  it); the card's name.

    python benchmarks/gpu_scale.py                        # 135m, 1b and 8b on cuda
    python benchmarks/gpu_scale.py --device cpu --tiny --no-write   # smoke test, a minute

Results are appended to ``benchmarks/RESULTS.md`` under "## GPU scale" with the command;
``--rows FILE`` also writes each config's row as JSON the moment it is measured, so a run
cut short by a time limit still returns what it finished.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import shlex
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from sklearn_relish import RelishTextRegressor, _backbones, _featurizer
from sklearn_relish._backbones import LoadedBackbone
from sklearn_relish._featurizer import LLMFeaturizer, plan_batches

CONFIGS = {  # name: (hidden, layers, heads, kv heads, intermediate)
    "tiny": (64, 4, 4, 2, 128),
    "135m": (576, 30, 9, 3, 1536),
    "1b": (2048, 16, 32, 8, 8192),
    "8b": (4096, 32, 32, 8, 14336),
}
PAPER_MAX_LENGTH, PAPER_BATCH = 256, 32
N_TRAIN, N_PREDICT, HEAD_EPOCHS = 3024, 840, 5
RESULTS = Path(__file__).with_name("RESULTS.md")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def timed(function: Callable[[], object], device: torch.device,
          warm_up: Callable[[], object] | None = None) -> float:
    """Seconds of a call after a first one that pays for warm-up (``warm_up``, a shorter
    call of the same shapes, where given), synchronised."""
    (warm_up or function)()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    function()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> str:
    """The peak since the last reset, then reset: each phase is measured on its own."""
    if device.type != "cuda":
        return "-"
    peak = torch.cuda.max_memory_allocated(device) / 1024**3
    reset_peak(device)
    return f"{peak:.1f}"


def allocated_gib(device: torch.device) -> str:
    return f"{torch.cuda.memory_allocated(device) / 1024**3:.1f}" if device.type == "cuda" else "-"


def tokenizer_folder(argument: str | None) -> str:
    if argument:
        return argument
    return _backbones.resolve_backbone(_backbones.SMOLLM2)  # its tokenizer files only


def register_random_backbone(size: str, tokenizer_path: str, device: torch.device,
                             dtype: torch.dtype) -> tuple[str, LoadedBackbone]:
    """Build a random-weight Llama on ``device`` and hand it to the package's registry
    under a name of its own, so estimators find it as if loaded from disk."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaModel

    hidden, layers, heads, kv_heads, intermediate = CONFIGS[size]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    tokenizer.padding_side = "right"
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden,
                         num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv_heads, intermediate_size=intermediate,
                         max_position_embeddings=2048)
    torch.manual_seed(0)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in bfloat16: no float32 copy (29 GB at 8B) first
    try:
        with torch.device(device):
            model = LlamaModel(config).eval().requires_grad_(False)
    finally:
        torch.set_default_dtype(default_dtype)
    name = f"random-llama-{size}"
    loaded = LoadedBackbone(name, model, tokenizer, f"sha256:random-{size}", device, dtype,
                            threading.Lock(), run_tag=str(dtype))
    # Filed under the key the estimators ask for ("cuda" resolved to "cuda:0", as they
    # resolve it): filed under "cuda", they missed it and went to the hub.
    asked = _backbones.resolve_device(str(device))
    _backbones._REGISTRY[_backbones.registry_key(name, asked, dtype, False, {})] = loaded
    return name, loaded


@contextmanager
def token_budget(device_type: str, budget: int) -> Iterator[None]:
    """``featurize_batch_size="auto"`` with another budget of padded tokens per batch."""
    default = _featurizer.TOKEN_BUDGET[device_type]
    _featurizer.TOKEN_BUDGET[device_type] = budget
    try:
        yield
    finally:
        _featurizer.TOKEN_BUDGET[device_type] = default


def bare_forward(loaded: LoadedBackbone, texts: list[str], device_type: str):
    """The floor: tokenize, cut into the package's own batches, pad, run; nothing else."""
    def run():
        ids = loaded.tokenizer(texts)["input_ids"]
        batches = plan_batches([len(i) for i in ids], "auto", device_type)
        with torch.inference_mode():
            for batch in batches:
                padded = loaded.tokenizer.pad({"input_ids": [ids[i] for i in batch]},
                                              padding=True, return_tensors="pt")
                loaded.model(**padded.to(loaded.device))
    return run


def padded_forward(loaded: LoadedBackbone, texts: list[str]):
    """The authors' way: input order, every text padded to 256 tokens, 32 per batch."""
    def run():
        with torch.inference_mode():
            for start in range(0, len(texts), PAPER_BATCH):
                padded = loaded.tokenizer(texts[start:start + PAPER_BATCH], padding="max_length",
                                          truncation=True, max_length=PAPER_MAX_LENGTH,
                                          return_tensors="pt")
                loaded.model(**padded.to(loaded.device))
    return run


def measure(size: str, texts: list[str], y: np.ndarray, args, device: torch.device) -> dict:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    reset_peak(device)
    start = time.perf_counter()
    name, loaded = register_random_backbone(size, args.tokenizer, device, dtype)
    n_params = sum(p.numel() for p in loaded.model.parameters())
    row: dict = {"config": size, "params_b": n_params / 1e9, "card": card_name(device),
                 "build_s": time.perf_counter() - start, "weights_gib": allocated_gib(device),
                 "build_peak_gib": peak_gib(device)}
    common = dict(device=str(device), dtype=str(dtype).removeprefix("torch."), cache=False)
    ids = loaded.tokenizer(texts)["input_ids"]
    batches = plan_batches([len(i) for i in ids], "auto", device.type)
    log(f"{size}: {n_params / 1e9:.2f}B parameters, {sum(map(len, ids))} tokens, "
        f"{len(batches)} auto batches")
    row["package_s"] = timed(lambda: LLMFeaturizer(name, layer=-1, **common).transform(
        texts, "single"), device)
    row["package_gib"] = peak_gib(device)
    # The CUDA default (16,384 padded tokens a batch) is a guess until timed beside others.
    row["budget_s"], row["budget_gib"] = {}, {}
    for budget in args.budgets:
        reset_peak(device)
        try:
            with token_budget(device.type, budget):
                row["budget_s"][budget] = timed(lambda: LLMFeaturizer(
                    name, layer=-1, **common).transform(texts, "single"), device)
        except torch.OutOfMemoryError:  # a budget too large for the card: noted, row kept
            row["budget_s"][budget] = float("nan")
            gc.collect()
            torch.cuda.empty_cache()
        row["budget_gib"][budget] = peak_gib(device)
    row["floor_s"] = timed(bare_forward(loaded, texts, device.type), device)
    row["batch32_s"] = timed(lambda: LLMFeaturizer(name, layer=-1, batch_size=32, **common)
                             .transform(texts, "single"), device)
    row["middle_s"] = timed(lambda: LLMFeaturizer(name, layer=0.5, **common).transform(
        texts, "single"), device)
    reset_peak(device)  # the peak below is padding's own
    row["padded_s"] = (timed(padded_forward(loaded, texts), device,
                             warm_up=padded_forward(loaded, texts[:PAPER_BATCH]))
                       if not args.no_padded else float("nan"))
    row["padded_gib"] = peak_gib(device)

    train, test = texts[:N_TRAIN], texts[N_TRAIN:N_TRAIN + N_PREDICT]
    model = RelishTextRegressor(name, layer=-1, device=str(device), max_epochs=1,
                                early_stopping=False, random_state=0,
                                backbone_dtype=common["dtype"])
    model.fit(train, y[:N_TRAIN])  # featurizes once (and warms up): the timed fit reads the cache
    reset_peak(device)  # the head's peak, without the featurization's
    model.set_params(max_epochs=HEAD_EPOCHS).fit(train, y[:N_TRAIN])
    epochs = [float(d) for d in model.net_.history[:, "dur"]]
    row["epoch_s"] = float(np.median(epochs))
    row["head_gib"] = peak_gib(device)
    row["predict_s"] = timed(lambda: model.predict(test), device)
    _backbones.clear_backbones()  # the last references go when this frame returns
    return row


def card_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def render(rows: list[dict], device: torch.device, n_texts: int, n_tokens: int,
           command: str) -> str:
    card = card_name(device)
    lines = [
        f"## GPU scale, {dt.datetime.now():%Y-%m-%d %H:%M}",
        "",
        f"`{command}` on {card}; torch {torch.__version__}. Random-weight Llama configs in "
        f"{'bfloat16' if device.type == 'cuda' else 'float32'}; {n_texts:,} VADER tweets "
        f"({n_tokens:,} tokens); featurization times are the second of two passes, last "
        f"layer unless said; head: {N_TRAIN:,} cached tweets, median epoch of "
        f"{HEAD_EPOCHS}; predict: {N_PREDICT} cached tweets. Peak GiB: the weights once built, "
        "then each phase's own peak.",
        "",
        "| config | params (B) | package, auto batches (s) | bare forward, same batches (s) "
        "| package / floor | 32 per batch (s) | middle layer, early exit (s) "
        "| padded to 256 (s) | padded / package | head epoch (s) | predict (s) "
        "| GiB: weights / featurize / padded / head |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['params_b']:.2f} | {r['package_s']:.2f} | {r['floor_s']:.2f} "
            f"| {r['package_s'] / r['floor_s']:.2f}x | {r['batch32_s']:.2f} "
            f"| {r['middle_s']:.2f} | {r['padded_s']:.2f} "
            f"| {r['padded_s'] / r['package_s']:.1f}x | {r['epoch_s']:.2f} "
            f"| {r['predict_s']:.2f} | {r['weights_gib']} / {r['package_gib']} / "
            f"{r['padded_gib']} / {r['head_gib']} |")
    default = _featurizer.TOKEN_BUDGET[device.type]
    for r in rows:
        if r["budget_s"]:
            timings = {default: r["package_s"], **r["budget_s"]}
            peaks = {default: r["package_gib"], **r["budget_gib"]}
            lines.append(f"\n{r['config']}, package featurization by token budget a batch "
                         "(nan: out of memory): "
                         + ", ".join(f"{b:,}{' (default)' if b == default else ''}: "
                                     f"{timings[b]:.2f} s, {peaks[b]} GiB"
                                     for b in sorted(timings)))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["135m", "1b", "8b"],
                        choices=sorted(CONFIGS))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true",
                        help="the tiny config on 400 tweets: a smoke test of the script")
    parser.add_argument("--n-texts", type=int, default=4200)
    parser.add_argument("--tokenizer", default=None, help="folder with tokenizer files")
    parser.add_argument("--no-padded", action="store_true", help="skip padding to 256")
    parser.add_argument("--budgets", type=int, nargs="*", default=[4096, 65536],
                        help="other token budgets to time featurization with (none: skip)")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--rows", type=Path, default=None,
                        help="append each config's row to this JSON-lines file once measured")
    args = parser.parse_args(argv)
    if args.tiny:
        args.configs, args.n_texts = ["tiny"], min(args.n_texts, 400)
        global N_TRAIN, N_PREDICT, HEAD_EPOCHS
        # Three quarters trained on, the rest predicted: whatever --n-texts leaves.
        N_TRAIN, HEAD_EPOCHS = args.n_texts * 3 // 4, 2
        N_PREDICT = args.n_texts - N_TRAIN
    args.tokenizer = tokenizer_folder(args.tokenizer)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda needs a GPU; use --device cpu --tiny for a smoke test")
    # As the estimators resolve it ("cuda" is "cuda:0"): the registry key must match theirs.
    device = _backbones.resolve_device(args.device)
    from sklearn_relish.datasets import load_vader

    texts, y = load_vader("tweets", return_X_y=True)
    texts, y = list(texts[:args.n_texts]), np.asarray(y[:args.n_texts], dtype=float)
    rows = []
    for size in args.configs:
        rows.append(measure(size, texts, y, args, device))
        if args.rows:
            with open(args.rows, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(rows[-1]) + "\n")
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the next config starts from an empty card
        log(f"{size}: {rows[-1]}")
    from transformers import AutoTokenizer

    n_tokens = sum(map(len, AutoTokenizer.from_pretrained(args.tokenizer)(texts)["input_ids"]))
    command = shlex.join(["python", "benchmarks/gpu_scale.py", *(argv or sys.argv[1:])])
    report = render(rows, device, len(texts), n_tokens, command)
    print(report)
    if not args.no_write:
        with open(RESULTS, "a", encoding="utf-8") as handle:
            handle.write("\n" + report)


if __name__ == "__main__":
    main()
