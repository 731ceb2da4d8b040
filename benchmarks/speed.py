"""Hand-run speed benchmark of sklearn_relish on VADER tweets.

What it measures, per backbone (SmolLM2-135M and MiniLM-L6 by default):

1. Featurization time of the package (cache off) against
   - the *floor*: a bare transformers forward over the same length-sorted, per-batch padded
     batches and nothing else (no slicing, no float16 copy, no cache bookkeeping);
   - padding every text to ``max_length=256``, as the paper's code did;
   - on MiniLM, sentence-transformers' ``encode(output_value="token_embeddings")``.
2. A 6-candidate x 3-fold ``GridSearchCV`` over head parameters, with the token-state cache
   on and off: wall time and how many texts the LLM actually ran on.
3. Memory of the token-state cache per 1,000 texts, against a padded float32 array.
4. Latency of ``predict`` on one text with a warm backbone, for a new and a cached text.

It prints Markdown tables and appends them, with the machine and the command line, to
``benchmarks/RESULTS.md`` (``--no-write`` skips that). Run it on a quiet machine::

    python benchmarks/speed.py                # full: 1,200 tweets, both backbones
    python benchmarks/speed.py --quick --no-write   # a smoke test: ~100 tweets, MiniLM

The full run should take about half an hour on 2 idle CPU cores, mostly SmolLM2 padded to 256
tokens and the cache-off grid search. Other processes on the same cores make torch's
default threads wait on each other; the output flags such runs as unreliable.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import GridSearchCV, KFold
from speed_report import (  # benchmarks/ is on sys.path when run as a script
    BackboneReport,
    Settings,
    busy_seconds,
    contention_lines,
    machine_info,
    mib,
    render,
    short,
    write_results,
)

import sklearn_relish
from sklearn_relish import RelishTextRegressor
from sklearn_relish._backbones import MINILM, SMOLLM2, LoadedBackbone, resolve_backbone
from sklearn_relish._cache import ENTRY_OVERHEAD
from sklearn_relish._featurizer import LLMFeaturizer
from sklearn_relish.datasets import load_vader

BATCH_SIZE = 32  # one batch size for every method, so that only the method differs
PAPER_MAX_LENGTH = 256  # what the paper's code padded every text to
GRID = {"lr": [1e-3, 3e-3], "n_iterations": [1, 2, 3]}  # 6 candidates
N_FOLDS = 3
N_LATENCY_CALLS = 20
RESULTS = Path(__file__).with_name("RESULTS.md")
SHORT_NAMES = {"smollm2": SMOLLM2, "minilm": MINILM}


def log(message: str) -> None:
    # Progress goes to stderr so that stdout holds only the tables.
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- helpers ---------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    # CUDA kernels run asynchronously: without this a GPU timer stops before the work does.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    function()
    sync(device)
    return time.perf_counter() - start


# -- the featurization methods compared -----------------------------------------------------
# Each takes the texts and returns nothing: only the time matters here. All use batches of
# BATCH_SIZE texts, the backbone's own tokenizer and weights (the very objects the package
# loaded, so dtype, device and attention implementation are identical), and inference mode.

def bare_forward(loaded: LoadedBackbone, texts: list[str], max_length: int) -> None:
    """The floor: tokenize, sort by length, pad per batch, forward; nothing else."""
    tokenizer, model = loaded.tokenizer, loaded.model
    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    with torch.inference_mode():
        for start in range(0, len(order), BATCH_SIZE):
            batch = [ids[i] for i in order[start:start + BATCH_SIZE]]
            padded = tokenizer.pad({"input_ids": batch}, padding=True, return_tensors="pt")
            model(**padded.to(loaded.device), output_hidden_states=True)


def padded_forward(loaded: LoadedBackbone, texts: list[str], max_length: int) -> None:
    """The paper's way: every batch, in input order, padded to ``max_length`` tokens."""
    tokenizer, model = loaded.tokenizer, loaded.model
    with torch.inference_mode():
        for start in range(0, len(texts), BATCH_SIZE):
            padded = tokenizer(texts[start:start + BATCH_SIZE], padding="max_length",
                               truncation=True, max_length=max_length, return_tensors="pt")
            model(**padded.to(loaded.device), output_hidden_states=True)


@dataclass
class Method:
    name: str
    run: Callable[[list[str]], object]
    note: str = ""


def sentence_transformers_method(backbone: str, device: torch.device) -> Method:
    from sentence_transformers import SentenceTransformer

    # The same local folder the package loads from; HF_HUB_OFFLINE keeps it off the network.
    model = SentenceTransformer(resolve_backbone(backbone), device=str(device))

    def run(texts: list[str]) -> object:
        return model.encode(texts, output_value="token_embeddings", batch_size=BATCH_SIZE,
                            show_progress_bar=False)

    return Method("sentence-transformers encode (token_embeddings)", run,
                  f"its own length sort; max_seq_length={model.max_seq_length}")


def featurization(report: BackboneReport, texts: list[str], repeats: int,
                  padded: bool = True) -> None:
    """Time each method over the same texts, after one warm-up batch each."""
    # cache=False: every call really runs the LLM, so repeats measure the same work.
    featurizer = LLMFeaturizer(report.backbone, batch_size=BATCH_SIZE, cache=False)
    start = time.perf_counter()
    loaded = featurizer.loaded  # loads once per process; later users share it
    report.load_s = time.perf_counter() - start
    max_length = featurizer._effective_max_length()

    # The estimator's default reads a middle layer, and the featurizer stops the forward
    # pass there; the floor and the rows above run every layer.
    default_layer = RelishTextRegressor().layer
    at_default = LLMFeaturizer(report.backbone, layer=default_layer, batch_size=BATCH_SIZE,
                               cache=False)
    index = at_default.layer_index(loaded)
    methods = [
        Method("bare transformers forward (floor)",
               lambda t: bare_forward(loaded, t, max_length), "length-sorted, padded per batch"),
        Method("sklearn_relish LLMFeaturizer, cache off",
               lambda t: featurizer.transform(t, "single"), "same batches + fp16 copies"),
        Method(f"sklearn_relish LLMFeaturizer, layer={default_layer} (the default), cache off",
               lambda t: at_default.transform(t, "single"),
               f"stops after block {index} of {loaded.n_hidden_states - 1}"),
    ]
    if padded:
        methods.append(Method(f"pad every text to max_length={PAPER_MAX_LENGTH}",
                              lambda t: padded_forward(loaded, t, PAPER_MAX_LENGTH),
                              "as the paper's code"))
    if report.backbone == MINILM:
        methods.append(sentence_transformers_method(report.backbone, loaded.device))

    # Warm-up: the first batch pays for lazy allocations and kernel selection.
    for method in methods:
        method.run(texts[:BATCH_SIZE])

    # Repeats are interleaved, so that a burst of load on a shared machine hits every
    # method alike instead of one; the median of the repeats is reported.
    times: dict[str, list[float]] = {m.name: [] for m in methods}
    for repeat in range(repeats):
        for method in methods:
            seconds = timed(lambda m=method: m.run(texts), loaded.device)
            times[method.name].append(seconds)
            log(f"{short(report.backbone)}: {method.name}: {seconds:.2f} s "
                f"(repeat {repeat + 1}/{repeats})")

    floor = statistics.median(times[methods[0].name])
    for method in methods:
        seconds = statistics.median(times[method.name])
        report.featurization.append([
            short(report.backbone), method.name, f"{seconds:.2f}",
            f"{len(texts) / seconds:.0f}", f"{seconds / floor:.2f}", method.note,
        ])


def cache_memory(report: BackboneReport, texts: list[str]) -> None:
    """Bytes the in-memory cache holds after featurizing the texts, per 1,000 texts."""
    sklearn_relish.clear_cache()
    featurizer = LLMFeaturizer(report.backbone, batch_size=BATCH_SIZE, cache=True)
    loaded = featurizer.loaded
    device = loaded.device
    cold = timed(lambda: featurizer.transform(texts, "single"), device)
    # A second pass finds every text in the cache: what a grid-search fold pays.
    warm = timed(lambda: featurizer.transform(texts, "single"), device)
    info = sklearn_relish.cache_info()
    # The cache counts numel x 2 bytes per entry plus a fixed overhead for its objects;
    # check the states' part against the storage really held, which would be a whole
    # padded batch if an entry were a view instead of a copy.
    states = featurizer.transform(texts, "single")
    held = sum({s.untyped_storage().data_ptr(): s.untyped_storage().nbytes()
                for s in states}.values())
    entries = info["entries"]
    n_bytes = info["bytes"] - entries * ENTRY_OVERHEAD
    if abs(held - n_bytes) > 0.01 * n_bytes:
        log(f"{short(report.backbone)}: cache claims {n_bytes} bytes of states but its "
            f"tensors hold {held}")
    d = loaded.hidden_size
    tokens_per_text = n_bytes / (entries * d * 2)  # entries are unpadded float16
    padded = 1000 * PAPER_MAX_LENGTH * d * 4  # a float32 array padded to 256 tokens
    per_1000 = n_bytes / entries * 1000
    report.memory = [
        short(report.backbone), entries, d, f"{tokens_per_text:.1f}", mib(per_1000),
        mib(padded), f"{padded / per_1000:.0f}x", f"{cold:.2f}", f"{warm * 1000:.1f}",
    ]
    sklearn_relish.clear_cache()


def grid_search(report: BackboneReport, texts: list[str], y: np.ndarray,
                max_epochs: int) -> RelishTextRegressor:
    """GridSearchCV with the cache on and off; returns the cache-on refitted estimator."""
    n_candidates = len(GRID["lr"]) * len(GRID["n_iterations"])
    # Every candidate fits on each training fold and predicts its test fold, so without a
    # cache the LLM reads each text once per candidate and fold, plus once for the refit.
    expected = {True: len(set(texts)), False: n_candidates * N_FOLDS * len(texts) + len(texts)}
    best = None
    for cache in (True, False):
        estimator = RelishTextRegressor(report.backbone, cache=cache, max_epochs=max_epochs,
                                        early_stopping=False, featurize_batch_size=BATCH_SIZE,
                                        random_state=0)
        search = GridSearchCV(estimator, GRID, cv=KFold(N_FOLDS, shuffle=True, random_state=0),
                              n_jobs=1, refit=True)
        sklearn_relish.clear_cache()  # also zeroes the llm_texts counter
        start = time.perf_counter()
        search.fit(texts, y)
        seconds = time.perf_counter() - start
        llm_texts = sklearn_relish.cache_info()["llm_texts"]
        log(f"{short(report.backbone)}: grid search, cache={cache}: {seconds:.1f} s, "
            f"llm_texts={llm_texts}")
        report.grid.append([
            short(report.backbone), "on" if cache else "off", len(texts),
            f"{n_candidates} x {N_FOLDS} + refit", f"{seconds:.1f}", llm_texts,
            expected[cache], f"{llm_texts / len(set(texts)):.1f}",
            f"{search.best_score_:.3f}",
        ])
        if cache:
            best = search.best_estimator_
    sklearn_relish.clear_cache()
    return best


def predict_latency(report: BackboneReport, estimator: RelishTextRegressor,
                    fresh: list[str]) -> None:
    """Median wall time of ``predict([text])`` with the backbone already loaded."""
    estimator.predict([fresh[0]])  # warm-up: first call of the head, lazy allocations
    cached_text = fresh[0]

    new_times = []
    for text in fresh[1:N_LATENCY_CALLS + 1]:
        before = sklearn_relish.cache_info()["llm_texts"]
        start = time.perf_counter()
        estimator.predict([text])
        new_times.append(time.perf_counter() - start)
        # Proves the LLM really ran: a cache hit here would measure the wrong thing.
        assert sklearn_relish.cache_info()["llm_texts"] == before + 1, "text was cached"

    cached_times = []
    for _ in range(N_LATENCY_CALLS):
        start = time.perf_counter()
        estimator.predict([cached_text])
        cached_times.append(time.perf_counter() - start)

    for kind, times in (("new text (LLM runs)", new_times), ("cached text", cached_times)):
        report.latency.append([
            short(report.backbone), kind, len(times), f"{statistics.median(times) * 1000:.1f}",
            f"{min(times) * 1000:.1f}", f"{max(times) * 1000:.1f}",
        ])


# -- main ------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 100 texts, grid on 60, MiniLM only (unless "
                             "--backbones is given)")
    parser.add_argument("--backbones", nargs="+", metavar="NAME",
                        help="'smollm2', 'minilm' or Hugging Face ids (default: both; "
                             "--quick: minilm)")
    parser.add_argument("--n", type=int, help="texts to featurize (default 1200; quick 100)")
    parser.add_argument("--grid-n", type=int, help="texts for the grid search (default 600; "
                                                   "quick 60)")
    parser.add_argument("--max-epochs", type=int, default=3, help="head epochs per fit")
    parser.add_argument("--repeats", type=int,
                        help="timed runs per featurization method, interleaved; the median "
                             "is reported (default 1; quick 3)")
    parser.add_argument("--threads", type=int,
                        help="torch intra-op threads (default: torch's own default, one per "
                             "core); 1 gives steadier numbers on a machine shared with others")
    parser.add_argument("--parts", nargs="+", choices=["featurization", "cache", "grid"],
                        default=["featurization", "cache", "grid"],
                        help="what to measure (default: all; featurization always runs, "
                             "grid includes the predict latency)")
    parser.add_argument("--no-padded", action="store_true",
                        help="skip the slow pad-to-256 featurization method")
    parser.add_argument("--no-write", action="store_true",
                        help=f"print only; do not append to {RESULTS.name}")
    parser.add_argument("--results", type=Path, default=RESULTS, help="file to append to")
    args = parser.parse_args(argv)
    args.n = args.n or (100 if args.quick else 1200)
    args.grid_n = args.grid_n or (60 if args.quick else 600)
    args.repeats = args.repeats or (3 if args.quick else 1)  # quick runs are cheap to repeat
    names = args.backbones or (["minilm"] if args.quick else ["smollm2", "minilm"])
    args.backbones = [SHORT_NAMES.get(name.lower(), name) for name in names]
    if args.grid_n > args.n:
        parser.error("--grid-n must not exceed --n")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = machine_info()  # now, so the load average is the one the run started under
    busy_start, _ = busy_seconds()
    own_start, wall_start = time.process_time(), time.perf_counter()
    # sentence-transformers and transformers must not reach for the Hub: every backbone here
    # is a local folder. Set before anything imports huggingface_hub, which reads it once.
    os.environ["HF_HUB_OFFLINE"] = "1"

    X, y = load_vader("tweets", return_X_y=True)
    # A fixed shuffle: the corpus file is ordered, and its last 200 texts are contrived ones.
    order = np.random.default_rng(0).permutation(len(X))
    texts = [X[i] for i in order]
    targets = np.asarray(y)[order]
    featurize_texts = texts[:args.n]
    grid_texts, grid_y = texts[:args.grid_n], targets[:args.grid_n]
    # Latency texts come from the far end of the shuffle, so none was seen before.
    fresh = texts[-(N_LATENCY_CALLS + 1):]
    if len(featurize_texts) + len(fresh) > len(texts):
        raise SystemExit(f"--n is too large: at most {len(texts) - len(fresh)} texts")

    reports = []
    for backbone in args.backbones:
        report = BackboneReport(backbone)
        log(f"{short(backbone)}: featurization of {len(featurize_texts)} texts")
        featurization(report, featurize_texts, args.repeats, padded=not args.no_padded)
        if "cache" in args.parts:
            log(f"{short(backbone)}: cache memory")
            cache_memory(report, featurize_texts)
        if "grid" in args.parts:
            log(f"{short(backbone)}: grid search on {len(grid_texts)} texts")
            estimator = grid_search(report, grid_texts, grid_y, args.max_epochs)
            log(f"{short(backbone)}: predict latency")
            predict_latency(report, estimator, fresh)
        reports.append(report)

    avg_chars = float(np.mean([len(t) for t in featurize_texts]))
    body = render(reports, args, len(featurize_texts), avg_chars,
                  Settings(BATCH_SIZE, PAPER_MAX_LENGTH, GRID, N_FOLDS))
    machine += contention_lines(busy_start, own_start, wall_start)
    if machine[-1].startswith("- **warning"):
        log("warning: the machine was busy during this run; timings are unreliable")
    print("\n".join(machine) + "\n\n" + body)
    if not args.no_write:
        write_results(body, machine, args.results, args.quick)
        log(f"appended to {args.results}")


if __name__ == "__main__":
    main()
