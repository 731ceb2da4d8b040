"""Quality benchmark: RELISH against the paper's baselines on the four VADER corpora.

Every method sees the same splits: for each seed, its own random 80/20 train/test split of
each corpus. Whatever a method tunes (Ridge's alpha, early stopping) is chosen on the
training part only -- by RidgeCV's leave-one-out on the training split, or by a validation
part held out of it -- never on the test part. Metrics are the paper's: Pearson, Spearman
and NRMSE (RMSE / (max - min) of the test targets), x100, mean +- std over seeds.

Methods (the "main" part):

- RELISH (``RelishTextRegressor`` with the package defaults) on SmolLM2 and on MiniLM;
- predictive heads on the same frozen backbone's last layer (the paper's setting) and on
  RELISH's default middle layer: mean-pooled states + Ridge,
  mean-pooled states + an MLP with about as many parameters as the RELISH head, and the
  last token's state + Ridge;
- TF-IDF (word 1-2 grams) + Ridge;
- the VADER rule-based analyzer (no training; see ``run_vader`` for its NRMSE);
- what a practitioner would do instead of a frozen backbone (``quality_finetune.py``): full
  fine-tuning of MiniLM with a regression head, and LoRA + MLP head on SmolLM2; each
  chooses its learning rate and epoch on a 10% hold-out of the training split.

The methods and their labels are in ``quality_methods.py``; the corpora, splits and cached
LLM features in ``quality_data.py``.

Ablations (the "ablations" part), RELISH on the primary backbone, same seeds and splits:
refinement iterations 1..5, Huber vs MSE, and the hidden layer read (last, 3/4, 1/2, 1/4
of the depth; layers other than the last with and without ``input_norm``).

Each finished fit is appended at once to a JSON-lines file, one row per method x config x
corpus x seed, so an interrupted run resumes where it stopped; ``--summarise`` (also run at
the end) turns the rows into the "## Quality" section of ``benchmarks/RESULTS.md`` and a
scatter plot (``quality_report.py``). Token states are cached on disk (``--cache-dir``), so
the LLM runs once per text and layer across seeds, methods and reruns.

Usage::

    python benchmarks/quality.py                      # everything (hours on a laptop CPU)
    python benchmarks/quality.py --part main --corpora tweets nyt
    python benchmarks/quality.py --ablation-n-texts 1000   # full main tables, cheaper ablations
    python benchmarks/quality.py --summarise          # rewrite RESULTS.md from the rows
    python benchmarks/quality.py --quick              # minutes: MiniLM, 200 texts, 1 seed
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from quality_data import CORPORA, DEFAULT_CACHE_DIR, Corpus, FeatureStore, load_corpus, split
from quality_finetune import BACKBONES as FINETUNE_BACKBONES  # benchmarks/ is on sys.path
from quality_methods import (
    ABLATION_ITERATIONS,
    ABLATION_LOSSES,
    METHODS,
    TEST_SIZE,
    Settings,
    ablation_layers,
    baseline_configs,
    finetune_config,
    label,
    relish_config,
    relish_top_config,
)
from quality_report import (
    machine_info,
    predictions_path,
    read_rows,
    replace_section,  # noqa: F401  (re-exported: intervals.py imports it from here)
    summarise,
)

from sklearn_relish._backbones import MINILM, SMOLLM2
from sklearn_relish.metrics import nrmse, pearson_r, regression_report, spearman_r

DEFAULT_ABLATION_CORPORA = ("tweets", "nyt")

HERE = Path(__file__).resolve().parent
DEFAULT_RUNS_FILE = HERE / "quality_runs.jsonl"
DEFAULT_RESULTS = HERE / "RESULTS.md"
# --quick never writes into benchmarks/ unless a path is given explicitly.
QUICK_DIR = Path(tempfile.gettempdir()) / "sklearn_relish_quality_quick"

QUICK_N_TEXTS = 200
QUICK_MAX_EPOCHS = 3
TOP_SELECTOR = "relish_top"  # --methods name of the train_top_layers RELISH row


# =========================================================================================
# Jobs: what to run, and the key that identifies a finished row
# =========================================================================================
@dataclass
class Job:
    method: str  # a key of METHODS
    corpus: str
    seed: int
    backbone: str | None = None  # None for methods without an LLM
    config: dict[str, Any] = field(default_factory=dict)  # RELISH's varied parameters

    def key(self, settings: Settings) -> str:
        """Everything that identifies a row, as canonical JSON (the resume key)."""
        fields = {
            "method": self.method, "corpus": self.corpus, "seed": self.seed,
            "backbone": self.backbone, "config": self.config,
            "n_texts": settings.n_texts, "test_size": TEST_SIZE,
        }
        return json.dumps(fields, sort_keys=True)

    @property
    def layer(self) -> int:
        return self.config.get("layer", -1)


def main_jobs(corpora, seeds, backbones, methods, settings) -> list[Job]:
    jobs = []
    for corpus in corpora:
        for seed in seeds:
            # Cheap methods first, so a partial run already has every baseline.
            jobs += [Job("vader", corpus, seed), Job("tfidf_ridge", corpus, seed)]
            for backbone in backbones:
                # Each head baseline reads the last layer (the paper's setting) and also
                # RELISH's default layer, so no method wins by its layer alone.
                for config in baseline_configs():
                    jobs += [Job(m, corpus, seed, backbone, config)
                             for m in ("meanpool_ridge", "lasttoken_ridge", "meanpool_mlp")]
            for backbone in backbones:
                jobs.append(Job("relish", corpus, seed, backbone, relish_config(settings)))
            # The package's fine-tuning option, on the primary backbone.
            jobs.append(Job("relish", corpus, seed, backbones[0], relish_top_config(settings)))
            # What a practitioner would do instead: train the backbone itself (slowest).
            jobs += [Job(m, corpus, seed, FINETUNE_BACKBONES[m], finetune_config(m, settings))
                     for m in ("finetune", "lora")]
    return [job for job in jobs if selector(job) in methods]


def selector(job: Job) -> str:
    """The ``--methods`` name that selects ``job``: RELISH with trained blocks has its own
    (its rows stay method "relish", so their resume keys are unchanged)."""
    return TOP_SELECTOR if job.config.get("train_top_layers") else job.method


def ablation_jobs(corpora, seeds, backbone, methods, settings) -> list[Job]:
    if "relish" not in methods:
        return []
    configs = [relish_config(settings, n_iterations=n) for n in ABLATION_ITERATIONS]
    configs += [relish_config(settings, loss=loss) for loss in ABLATION_LOSSES]
    for _, layer in ablation_layers(backbone):
        # Intermediate SmolLM2 layers carry massive activations on the first token, which
        # destabilise the head unless the states are normalised: run every layer both ways.
        for norm in (False, True):
            configs.append(relish_config(settings, layer=layer, input_norm=norm))
    return [Job("relish", corpus, seed, backbone, config)
            for corpus in corpora for seed in seeds for config in configs]


def dedupe(jobs: list[Job], settings: Settings) -> list[Job]:
    # The ablations' default config is the main part's RELISH row: run it once.
    seen, unique = set(), []
    for job in jobs:
        key = job.key(settings)
        if key not in seen:
            seen.add(key)
            unique.append(job)
    return unique


# =========================================================================================
# Rows: appended to the JSON-lines log as each fit finishes (the report reads them back)
# =========================================================================================
def append_row(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def keeps_predictions(job: Job) -> bool:
    """The scatter plot's case: tweets, seed 0."""
    return job.corpus == "tweets" and job.seed == 0


def save_predictions(path: Path, pred_id: str, y_true: np.ndarray, test: np.ndarray,
                     pred: np.ndarray) -> None:
    arrays = dict(np.load(path)) if path.exists() else {}
    arrays[f"y_true_{pred_id}"] = y_true
    arrays[f"test_index_{pred_id}"] = test
    arrays[f"pred_{pred_id}"] = pred
    tmp = path.with_suffix(".tmp.npz")
    path.parent.mkdir(parents=True, exist_ok=True)  # a first --quick run has no folder yet
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    os.replace(tmp, path)

def run_jobs(jobs: list[Job], settings: Settings, runs_file: Path) -> None:
    done = {row["key"] for row in read_rows(runs_file)}
    todo = [job for job in jobs if job.key(settings) not in done]
    print(f"{len(jobs)} rows requested, {len(jobs) - len(todo)} already in {runs_file}, "
          f"{len(todo)} to run.", flush=True)
    if not todo:
        return
    store = FeatureStore(settings.cache_dir)
    if any(job.method == "relish" for job in todo):
        import skorch  # noqa: F401 -- 2 s of imports, not to be charged to the first fit
    machine, command = machine_info(), shlex.join([Path(sys.executable).name, *sys.argv])
    corpora: dict[str, Corpus] = {}
    for i, job in enumerate(todo, 1):
        if job.corpus not in corpora:
            corpora.clear()  # one corpus at a time: its pooled features stay small
            store.forget_pooled()
            corpora[job.corpus] = load_corpus(job.corpus, settings.n_texts)
        corpus = corpora[job.corpus]
        train, test = split(len(corpus.texts), job.seed)
        name = label(job.method, job.backbone)
        extra = describe_config(job.config) if job.method == "relish" else ""
        print(f"[{i}/{len(todo)}] {name}{extra} | {job.corpus} | seed {job.seed} ...",
              flush=True)
        outcome = METHODS[job.method].run(job, corpus, train, test, store, settings)
        y_test = corpus.y[test]
        correlation_pred = (outcome.pred if outcome.pred_for_correlation is None
                            else outcome.pred_for_correlation)
        metrics = {
            "pearson": pearson_r(y_test, correlation_pred),
            "spearman": spearman_r(y_test, correlation_pred),
            "nrmse": nrmse(y_test, outcome.pred),
            "r2": regression_report(y_test, outcome.pred)["r2"],
        }
        key = job.key(settings)
        row = {
            "key": key, **json.loads(key), "label": name, "metrics": metrics,
            "fit_seconds": outcome.fit_seconds, "predict_seconds": outcome.predict_seconds,
            "n_train": len(train), "n_test": len(test), "n_corpus": corpus.n_total,
            "params": outcome.params, "machine": machine, "command": command,
            "finished": datetime.datetime.now().isoformat(timespec="seconds"),
        }
        if keeps_predictions(job):
            row["predictions_id"] = hashlib.sha1(key.encode()).hexdigest()[:12]
            save_predictions(predictions_path(runs_file), row["predictions_id"], y_test, test,
                             outcome.pred)
        append_row(runs_file, row)
        print(f"    done in {outcome.fit_seconds:.1f} s fit + {outcome.predict_seconds:.1f} s "
              f"predict: Pearson {100 * metrics['pearson']:.1f}, Spearman "
              f"{100 * metrics['spearman']:.1f}, NRMSE {100 * metrics['nrmse']:.1f}"
              f"{format_params(outcome.params)}", flush=True)


def describe_config(config: dict) -> str:
    return (f" [layer {config['layer']}, {config['n_iterations']} it, {config['loss']}"
            f"{', input_norm' if config['input_norm'] else ''}]")


def format_params(params: dict) -> str:
    shown = [f"{k}={params[k]:g}" if isinstance(params[k], float) else f"{k}={params[k]}"
             for k in ("alpha", "epochs", "best_epoch", "hidden_units", "n_iter") if k in params]
    if params.get("alpha_at_grid_edge"):
        shown.append("alpha at the grid's edge")
    return f" ({', '.join(shown)})" if shown else ""


# =========================================================================================
# Command line
# =========================================================================================
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["main", "ablations", "all"], default="all",
                        help="what to run (default: all)")
    parser.add_argument("--corpora", nargs="+", choices=CORPORA, default=list(CORPORA),
                        help="VADER corpora (default: all four)")
    parser.add_argument("--ablation-corpora", nargs="+", choices=CORPORA, default=None,
                        help="corpora for the ablations (default: tweets and nyt, "
                             "those of them in --corpora)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="seeds, one train/test split each (default: 0 1 2; --quick: 0)")
    parser.add_argument("--methods", nargs="+", choices=[*METHODS, TOP_SELECTOR],
                        default=[*METHODS, TOP_SELECTOR],
                        help=f"run only these methods (default: all; {TOP_SELECTOR} is "
                             f"RELISH with train_top_layers on the primary backbone)")
    parser.add_argument("--backbone", default=None,
                        help=f"primary backbone for RELISH, baselines and ablations "
                             f"(default: {SMOLLM2}; --quick: {MINILM})")
    parser.add_argument("--secondary-backbone", default=MINILM,
                        help="second backbone for RELISH and the backbone baselines in the "
                             "main part ('none' to skip; skipped when equal to the primary)")
    parser.add_argument("--max-epochs", type=int, default=None,
                        help=f"RELISH's max_epochs (default: the package's; --quick: "
                             f"{QUICK_MAX_EPOCHS})")
    parser.add_argument("--lr", type=float, default=None,
                        help="RELISH's learning rate (default: the package's)")
    parser.add_argument("--tuning-lrs", nargs="+", type=float, default=None,
                        help="the learning rates the fine-tuning baselines (finetune, lora) "
                             "search (default: their full grid); rows record their grid")
    parser.add_argument("--n-texts", type=int, default=None,
                        help=f"subsample each corpus (default: all; --quick: {QUICK_N_TEXTS})")
    parser.add_argument("--ablation-n-texts", type=int, default=None,
                        help="subsample each corpus for the ablations only (default: "
                             "--n-texts)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: MiniLM, 200 texts per corpus, 1 seed, 3 epochs; "
                             f"rows and results go to {QUICK_DIR} unless paths are given")
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR),
                        help="persistent token-state cache shared by all fits and reruns "
                             f"(default: {DEFAULT_CACHE_DIR})")
    parser.add_argument("--runs-file", type=Path, default=None,
                        help=f"JSON-lines log of finished rows (default: {DEFAULT_RUNS_FILE})")
    parser.add_argument("--results", type=Path, default=None,
                        help=f"Markdown file whose '## Quality' section is rewritten "
                             f"(default: {DEFAULT_RESULTS})")
    parser.add_argument("--summarise", "--summarize", action="store_true",
                        help="only summarise the rows already in --runs-file")
    parser.add_argument("--no-write", action="store_true",
                        help="print the summary instead of writing RESULTS.md and the figure")
    args = parser.parse_args(argv)

    from sklearn_relish import RelishTextRegressor

    quick = args.quick
    args.backbone = args.backbone or (MINILM if quick else SMOLLM2)
    secondary = None if args.secondary_backbone.lower() == "none" else args.secondary_backbone
    args.secondary = None if secondary == args.backbone else secondary
    args.seeds = args.seeds or ([0] if quick else [0, 1, 2])
    args.lr = args.lr or RelishTextRegressor().lr
    args.max_epochs = args.max_epochs or (
        QUICK_MAX_EPOCHS if quick else RelishTextRegressor().max_epochs)
    args.n_texts = args.n_texts or (QUICK_N_TEXTS if quick else None)
    args.ablation_n_texts = args.ablation_n_texts or args.n_texts
    args.runs_file = args.runs_file or (QUICK_DIR / "quality_runs.jsonl" if quick
                                        else DEFAULT_RUNS_FILE)
    args.results = args.results or (QUICK_DIR / "RESULTS.md" if quick else DEFAULT_RESULTS)
    if args.ablation_corpora is None:
        args.ablation_corpora = [c for c in DEFAULT_ABLATION_CORPORA if c in args.corpora]
    args.cache_dir = str(Path(args.cache_dir).expanduser())
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "benchmarks/quality.py",
                          *(sys.argv[1:] if argv is None else argv)])
    tuning_lrs = tuple(args.tuning_lrs) if args.tuning_lrs else None
    settings = Settings(args.n_texts, args.max_epochs, args.cache_dir, args.lr, args.quick,
                        tuning_lrs)
    if not args.summarise:
        backbones = [b for b in (args.backbone, args.secondary) if b]
        ablation_settings = Settings(args.ablation_n_texts, args.max_epochs, args.cache_dir,
                                     args.lr, args.quick, tuning_lrs)
        batches = []  # (jobs, their settings): main and ablation corpus sizes may differ
        if args.part in ("main", "all"):
            batches.append((main_jobs(args.corpora, args.seeds, backbones, args.methods,
                                      settings), settings))
        if args.part in ("ablations", "all"):
            batches.append((ablation_jobs(args.ablation_corpora, args.seeds, args.backbone,
                                          args.methods, ablation_settings), ablation_settings))
        print(f"Quality benchmark: part={args.part}, corpora={args.corpora}, "
              f"seeds={args.seeds}, backbone={args.backbone}"
              + (f" (+ {args.secondary})" if args.secondary else "")
              + f", n_texts={args.n_texts or 'all'} (ablations: {args.ablation_n_texts or 'all'})"
              + f", RELISH max_epochs={args.max_epochs}, "
              f"cache {args.cache_dir}", flush=True)
        start = time.perf_counter()
        for jobs, job_settings in batches:
            run_jobs(dedupe(jobs, job_settings), job_settings, args.runs_file)
        print(f"Runs finished in {(time.perf_counter() - start) / 60:.1f} min.", flush=True)
    summarise(args, settings, command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
