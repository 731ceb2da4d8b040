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
- the VADER rule-based analyzer (no training; see ``run_vader`` for its NRMSE).

Ablations (the "ablations" part), RELISH on the primary backbone, same seeds and splits:
refinement iterations 1..5, Huber vs MSE, and the hidden layer read (last, 3/4, 1/2, 1/4
of the depth; layers other than the last with and without ``input_norm``).

Each finished fit is appended at once to a JSON-lines file, one row per method x config x
corpus x seed, so an interrupted run resumes where it stopped; ``--summarise`` (also run at
the end) turns the rows into the "## Quality" section of ``benchmarks/RESULTS.md`` and a
scatter plot. Token states are cached on disk (``--cache-dir``), so the LLM runs once per
text and layer across seeds, methods and reruns.

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
import platform
import shlex
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from _machine import cpu_model  # benchmarks/ is on sys.path when run as a script

from sklearn_relish.metrics import nrmse, pearson_r, regression_report, spearman_r

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
SHORT_NAMES = {SMOLLM2: "SmolLM2", MINILM: "MiniLM"}
CORPORA = ("tweets", "nyt", "movies", "amazon")
DEFAULT_ABLATION_CORPORA = ("tweets", "nyt")

HERE = Path(__file__).resolve().parent
DEFAULT_RUNS_FILE = HERE / "quality_runs.jsonl"
DEFAULT_RESULTS = HERE / "RESULTS.md"
DEFAULT_CACHE_DIR = Path("~/.cache/sklearn_relish/states")
# --quick never writes into benchmarks/ unless a path is given explicitly.
QUICK_DIR = Path(tempfile.gettempdir()) / "sklearn_relish_quality_quick"

TEST_SIZE = 0.2
RIDGE_ALPHAS = np.logspace(-3, 5, 17)  # wide: SmolLM2 last-layer states want alpha 1e3+
QUICK_N_TEXTS = 200
QUICK_MAX_EPOCHS = 3

# The RELISH head's defaults, for sizing the parameter-matched MLP baseline.
LATENT_DIM = 256
BLOCK_PARAMS = 789_760  # one refinement block: attention + 2 LayerNorms + feed-forward
N_ITERATIONS = 3

# Fixed orders for the tables; ablation layers as fractions of the backbone's depth.
ABLATION_ITERATIONS = (1, 2, 3, 4, 5)
ABLATION_LOSSES = ("huber", "mse")
ABLATION_LAYERS = (("last", None), ("3/4", 0.75), ("1/2", 0.5), ("1/4", 0.25))
METRICS = ("pearson", "spearman", "nrmse")


# =========================================================================================
# Jobs: what to run, and the key that identifies a finished row
# =========================================================================================
@dataclass
class Settings:
    """What all rows of one run share; part of every row's identity."""

    n_texts: int | None  # None = whole corpus; --quick subsamples
    max_epochs: int  # RELISH's max_epochs (package default unless --quick / --max-epochs)
    cache_dir: str
    lr: float  # RELISH's learning rate (package default unless --lr)


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


def short(backbone: str | None) -> str:
    return SHORT_NAMES.get(backbone, str(backbone).split("/")[-1]) if backbone else ""


def package_default(name: str) -> Any:
    from sklearn_relish import RelishTextRegressor

    return RelishTextRegressor().get_params()[name]


def relish_config(settings: Settings, *, layer: int | float | None = None,
                  n_iterations: int = N_ITERATIONS, loss: str = "huber",
                  input_norm: bool | None = None) -> dict[str, Any]:
    """RELISH's parameters that the ablations vary (unset ones are the package defaults)."""
    layer = package_default("layer") if layer is None else layer
    input_norm = package_default("input_norm") if input_norm is None else input_norm
    return {"layer": layer, "n_iterations": n_iterations, "loss": loss,
            "input_norm": input_norm, "max_epochs": settings.max_epochs, "lr": settings.lr}


def n_hidden_states(backbone: str) -> int:
    """Embeddings + layers, read from the config only (no weights are loaded)."""
    from transformers import AutoConfig

    from sklearn_relish._backbones import resolve_backbone

    return int(AutoConfig.from_pretrained(resolve_backbone(backbone)).num_hidden_layers) + 1


def ablation_layers(backbone: str) -> list[tuple[str, int | float]]:
    """(label, layer) for last, 3/4, 1/2 and 1/4 of the depth.

    Shares of depth are passed to the estimator as floats, as its ``layer`` default is, so
    the default's own layer is not fitted twice under two names.
    """
    n_layers = n_hidden_states(backbone) - 1  # hidden state k is the output of layer k
    return [("last", -1) if frac is None else (f"{name} depth (layer {round(frac * n_layers)})",
                                               frac)
            for name, frac in ABLATION_LAYERS]


def baseline_configs() -> list[dict[str, Any]]:
    """Last layer (config {} for rows recorded before layers were varied) and RELISH's."""
    return [{}, {"layer": package_default("layer")}]


def method_label(method: str, backbone: str | None, config: dict | None) -> str:
    """Table label; baselines name their layer when it is not the last."""
    name = label(method, backbone)
    layer = (config or {}).get("layer")
    if METHODS[method].baseline and layer is not None and layer != -1:
        where = "middle layer" if layer == 0.5 else f"layer {layer}"
        name = name[:-1] + f", {where})" if name.endswith(")") else f"{name}, {where}"
    return name


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
    return [job for job in jobs if job.method in methods]


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
# Data, splits and cached LLM features
# =========================================================================================
@dataclass
class Corpus:
    name: str
    texts: list[str]
    y: np.ndarray
    n_total: int  # size of the full corpus, before any --quick subsampling


def load_corpus(name: str, n_texts: int | None) -> Corpus:
    from sklearn_relish.datasets import load_vader

    texts, y = load_vader(name, return_X_y=True)
    n_total = len(texts)
    if n_texts is not None and n_texts < n_total:
        # A fixed subsample (independent of the seed), so all seeds share the same texts.
        keep = np.sort(np.random.RandomState(12345).permutation(n_total)[:n_texts])
        texts, y = [texts[i] for i in keep], y[keep]
    return Corpus(name, texts, y, n_total)


def split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The seed's 80/20 train/test split, shared by every method."""
    from sklearn.model_selection import train_test_split

    return train_test_split(np.arange(n), test_size=TEST_SIZE, random_state=seed)


class FeatureStore:
    """Token states of a corpus, computed once per (backbone, layer) and pooled once.

    Warming the package's token-state cache here, before any fit is timed, keeps the LLM's
    forward pass out of every method's fit seconds; RELISH then reads the same cache entries
    (memory, or the disk folder shared with later runs).
    """

    def __init__(self, cache_dir: str) -> None:
        self.cache_dir = cache_dir
        self._pooled: dict[tuple, dict[str, np.ndarray]] = {}
        self._warm: set[tuple] = set()

    def featurizer(self, backbone: str, layer: int):
        from sklearn_relish._featurizer import LLMFeaturizer

        return LLMFeaturizer(backbone, layer=layer, max_length=512, cache=True,
                             cache_dir=self.cache_dir)

    def states(self, corpus: Corpus, backbone: str, layer: int) -> list:
        from sklearn_relish import cache_info

        featurizer = self.featurizer(backbone, layer)
        start = time.perf_counter()
        featurizer.loaded  # noqa: B018 -- load the backbone now, outside the texts/s timing
        if time.perf_counter() - start > 1:
            print(f"  loaded {short(backbone)} in {time.perf_counter() - start:.1f} s",
                  flush=True)
        before, start = cache_info()["llm_texts"], time.perf_counter()
        states = featurizer.transform(corpus.texts, "single")
        seconds, ran = time.perf_counter() - start, cache_info()["llm_texts"] - before
        if (corpus.name, backbone, layer) not in self._warm:
            self._warm.add((corpus.name, backbone, layer))
            rate = f", {ran / seconds:.0f} texts/s" if ran else ""
            print(f"  featurized {corpus.name} with {short(backbone)} layer {layer}: "
                  f"{len(states)} texts, {ran} through the LLM, {len(states) - ran} cached, "
                  f"{seconds:.1f} s{rate}", flush=True)
        return states

    def forget_pooled(self) -> None:
        self._pooled.clear()

    def warm(self, corpus: Corpus, backbone: str, layer: int) -> None:
        if (corpus.name, backbone, layer) not in self._warm:
            self.states(corpus, backbone, layer)

    def pooled(self, corpus: Corpus, backbone: str, pooling: str,
               layer: int | float = -1) -> np.ndarray:
        """(n_texts, d) float32: mean over tokens, or the last token (zeros if empty)."""
        key = (corpus.name, backbone, layer)
        if key not in self._pooled:
            states = self.states(corpus, backbone, layer)
            d = states[0].shape[1]
            zeros = np.zeros(d, dtype=np.float32)
            self._pooled[key] = {
                "mean": np.stack([s.float().mean(0).numpy() if len(s) else zeros
                                  for s in states]),
                "last": np.stack([s[-1].float().numpy() if len(s) else zeros
                                  for s in states]),
            }
        return self._pooled[key][pooling]


# =========================================================================================
# Methods: each returns test predictions, fit/predict seconds and what it chose
# =========================================================================================
@dataclass
class Outcome:
    pred: np.ndarray  # test predictions on the target scale
    fit_seconds: float
    predict_seconds: float
    params: dict[str, Any]
    # Predictions that Pearson/Spearman use when they differ from ``pred`` (VADER).
    pred_for_correlation: np.ndarray | None = None


def timed_fit_predict(model, X_train, y_train, X_test) -> tuple[np.ndarray, float, float]:
    start = time.perf_counter()
    model.fit(X_train, y_train)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    pred = np.asarray(model.predict(X_test), dtype=np.float64).ravel()
    return pred, fit_seconds, time.perf_counter() - start


def alpha_note(alpha: float) -> dict[str, Any]:
    # An alpha on the grid's edge means the grid, not the data, decided: worth seeing.
    return {"alpha": float(alpha),
            "alpha_at_grid_edge": bool(alpha in (RIDGE_ALPHAS[0], RIDGE_ALPHAS[-1]))}


def ridge_cv():
    """Standardised features + RidgeCV: alpha by efficient leave-one-out on the train split."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS))


def relish_head_params(d: int) -> int:
    """Trainable parameters of the default RELISH head on d-dimensional token states:
    down-projection, latent, 3 refinement blocks, and the output layer."""
    return d * LATENT_DIM + LATENT_DIM + N_ITERATIONS * BLOCK_PARAMS + LATENT_DIM + LATENT_DIM + 1


def matched_mlp_width(d: int) -> int:
    """One hidden layer with h units has h * (d + 2) + 1 parameters; match the head's."""
    return max(1, round((relish_head_params(d) - 1) / (d + 2)))


def run_pooled_ridge(job, corpus, train, test, store, settings, pooling: str) -> Outcome:
    X = store.pooled(corpus, job.backbone, pooling, job.layer)
    model = ridge_cv()
    pred, fit_s, pred_s = timed_fit_predict(model, X[train], corpus.y[train], X[test])
    return Outcome(pred, fit_s, pred_s, {"pooling": pooling, "layer": job.layer,
                                         **alpha_note(model[-1].alpha_)})


def run_meanpool_ridge(job, corpus, train, test, store, settings) -> Outcome:
    return run_pooled_ridge(job, corpus, train, test, store, settings, "mean")


def run_lasttoken_ridge(job, corpus, train, test, store, settings) -> Outcome:
    # For the decoder the last token has attended to the whole text; for the encoder
    # (MiniLM) it is [SEP], reported as is for symmetry.
    return run_pooled_ridge(job, corpus, train, test, store, settings, "last")


def run_meanpool_mlp(job, corpus, train, test, store, settings) -> Outcome:
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = store.pooled(corpus, job.backbone, "mean", job.layer)
    d = X.shape[1]
    width = matched_mlp_width(d)
    # Standardised features and target, as RELISH standardises its target; early stopping
    # holds out 10% of the training split (never the test part).
    mlp = MLPRegressor(hidden_layer_sizes=(width,), early_stopping=True, random_state=job.seed)
    model = TransformedTargetRegressor(make_pipeline(StandardScaler(), mlp),
                                       transformer=StandardScaler())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        pred, fit_s, pred_s = timed_fit_predict(model, X[train], corpus.y[train], X[test])
    fitted = model.regressor_[-1]
    return Outcome(pred, fit_s, pred_s, {
        "pooling": "mean", "layer": job.layer, "hidden_units": width,
        "mlp_params": width * (d + 2) + 1, "relish_head_params": relish_head_params(d),
        "n_iter": int(fitted.n_iter_),
        "converged": not any(issubclass(w.category, ConvergenceWarning) for w in caught),
    })


def run_tfidf_ridge(job, corpus, train, test, store, settings) -> Outcome:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline

    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                          RidgeCV(alphas=RIDGE_ALPHAS))
    texts = corpus.texts
    pred, fit_s, pred_s = timed_fit_predict(model, [texts[i] for i in train], corpus.y[train],
                                            [texts[i] for i in test])
    return Outcome(pred, fit_s, pred_s, {"n_features": len(model[0].vocabulary_),
                                         **alpha_note(model[-1].alpha_)})


def run_vader(job, corpus, train, test, store, settings) -> Outcome:
    """VADER's compound score in [-1, 1], untrained.

    Pearson and Spearman use the compound score as is. NRMSE needs predictions on the
    target's scale, so the score is mapped by a 1-D linear regression fitted on the
    training split only (this cannot change the correlations, only the scale).
    """
    from sklearn.linear_model import LinearRegression
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    texts = corpus.texts
    start = time.perf_counter()
    score_train = np.array([analyzer.polarity_scores(texts[i])["compound"] for i in train])
    mapping = LinearRegression().fit(score_train[:, None], corpus.y[train])
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    score_test = np.array([analyzer.polarity_scores(texts[i])["compound"] for i in test])
    pred = mapping.predict(score_test[:, None])
    return Outcome(pred, fit_s, time.perf_counter() - start,
                   {"nrmse_mapping": "linear fit of compound on train",
                    "slope": float(mapping.coef_[0]), "intercept": float(mapping.intercept_)},
                   pred_for_correlation=score_test)


def run_relish(job, corpus, train, test, store, settings) -> Outcome:
    from sklearn_relish import RelishTextRegressor

    # States are cached before the clock starts: fit seconds are the head's training.
    store.warm(corpus, job.backbone, job.layer)
    model = RelishTextRegressor(job.backbone, random_state=job.seed,
                                cache_dir=settings.cache_dir, **job.config)
    texts = corpus.texts
    pred, fit_s, pred_s = timed_fit_predict(model, [texts[i] for i in train], corpus.y[train],
                                            [texts[i] for i in test])
    history = model.net_.history
    valid = [row["valid_loss"] for row in history if "valid_loss" in row]
    return Outcome(pred, fit_s, pred_s, {
        **job.config,
        "epochs": len(history),
        "best_epoch": int(np.argmin(valid)) + 1 if valid else len(history),
        "head_params": int(sum(p.numel() for p in model.net_.module_.parameters())),
        "seconds_per_epoch": fit_s / max(1, len(history)),
    })


@dataclass(frozen=True)
class Method:
    label: str  # table label; "{b}" is replaced by the backbone's short name
    run: Any
    baseline: bool  # competes for "best baseline" in the headline


METHODS = {
    "relish": Method("RELISH ({b})", run_relish, False),
    "meanpool_ridge": Method("Mean-pool + Ridge ({b})", run_meanpool_ridge, True),
    "meanpool_mlp": Method("Mean-pool + MLP ({b})", run_meanpool_mlp, True),
    "lasttoken_ridge": Method("Last-token + Ridge ({b})", run_lasttoken_ridge, True),
    "tfidf_ridge": Method("TF-IDF + Ridge", run_tfidf_ridge, True),
    "vader": Method("VADER (rule-based)", run_vader, True),
}


def label(method: str, backbone: str | None) -> str:
    return METHODS[method].label.format(b=short(backbone))


# =========================================================================================
# Rows: the JSON-lines log, and the saved predictions for the scatter plot
# =========================================================================================
def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a crash mid-write: rerun it
                continue
    return rows


def append_row(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def predictions_path(runs_file: Path) -> Path:
    return runs_file.with_name(runs_file.stem + "_predictions.npz")


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
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    os.replace(tmp, path)


def machine_info() -> str:
    import torch

    cpu = cpu_model()
    device = (f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available()
              else ", CPU only")
    return (f"{cpu}, {os.cpu_count()} cores (torch uses {torch.get_num_threads()} threads)"
            f"{device}, torch {torch.__version__}, Python {platform.python_version()}")


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
# Summary: RESULTS.md's "## Quality" section and the scatter plot
# =========================================================================================
@dataclass
class Cell:
    """One method x config x corpus over seeds."""

    rows: list[dict]

    def values(self, metric: str) -> np.ndarray:
        return np.array([100 * row["metrics"][metric] for row in self.rows])

    def mean(self, metric: str) -> float:
        return float(self.values(metric).mean())

    def std(self, metric: str) -> float:
        # Sample std over seeds (ddof=1); undefined for a single seed.
        values = self.values(metric)
        return float(values.std(ddof=1)) if len(values) > 1 else float("nan")

    def text(self, metric: str) -> str:
        std = self.std(metric)
        return f"{self.mean(metric):.1f}" + ("" if np.isnan(std) else f" ± {std:.1f}")

    def by_seed(self, metric: str) -> dict[int, float]:
        return {row["seed"]: 100 * row["metrics"][metric] for row in self.rows}

    @property
    def fit_seconds(self) -> float:
        return float(np.mean([row["fit_seconds"] for row in self.rows]))


class Summary:
    def __init__(self, rows, settings, corpora, ablation_corpora, seeds, primary, secondary,
                 ablation_n_texts=None):
        self.settings, self.seeds = settings, list(seeds)
        self.corpora, self.ablation_corpora = list(corpora), list(ablation_corpora)
        self.primary, self.secondary = primary, secondary
        self.ablation_n_texts = ablation_n_texts
        self.default_relish = relish_config(settings)
        # Main tables and ablations may use different corpus sizes (ablations are many
        # fits), so each reads its own rows.
        self.cells = self._group(rows, settings.n_texts, self.corpora)
        self.ablation_cells = self._group(rows, ablation_n_texts, self.ablation_corpora)
        self.rows = list({row["key"]: row for cells in (self.cells, self.ablation_cells)
                          for cell in cells.values() for row in cell.rows}.values())

    def _group(self, rows, n_texts, corpora) -> dict[tuple, Cell]:
        s, cells = self.settings, defaultdict(list)
        for row in rows:
            if (row["n_texts"] == n_texts and row["seed"] in self.seeds
                    and row["corpus"] in corpora
                    and row["config"].get("max_epochs", s.max_epochs) == s.max_epochs
                    and (row["method"] != "relish" or row["config"].get("lr") == s.lr)):
                cells[self._cell_key(row)].append(row)
        return {k: Cell(sorted(v, key=lambda r: r["seed"])) for k, v in cells.items()}

    @staticmethod
    def _cell_key(row) -> tuple:
        return (row["method"], row["backbone"], row["corpus"],
                json.dumps(row["config"], sort_keys=True))

    def cell(self, method, backbone, corpus, config=None) -> Cell | None:
        return self.cells.get((method, backbone, corpus, json.dumps(config or {},
                                                                    sort_keys=True)))

    def seeds_note(self, cell: Cell) -> str:
        n = len(cell.rows)
        return "" if n == len(self.seeds) else f" ({n}/{len(self.seeds)} seeds)"

    # -- main tables ------------------------------------------------------------------
    def main_methods(self) -> list[tuple[str, str | None, dict | None]]:
        backbones = [b for b in (self.primary, self.secondary) if b]
        methods = [("relish", b, self.default_relish) for b in backbones]
        for b in backbones:
            methods += [(m, b, config or None) for config in baseline_configs()
                        for m in ("meanpool_ridge", "meanpool_mlp", "lasttoken_ridge")]
        return methods + [("tfidf_ridge", None, None), ("vader", None, None)]

    def corpus_table(self, corpus: str) -> list[str]:
        lines = ["| Method | Pearson ↑ | Spearman ↑ | NRMSE ↓ | Fit (s) |",
                 "|---|---:|---:|---:|---:|"]
        for method, backbone, config in self.main_methods():
            cell = self.cell(method, backbone, corpus, config)
            if cell is None:
                continue
            name = method_label(method, backbone, config) + ("†" if method == "vader" else "")
            name = f"**{name}**" if method == "relish" and backbone == self.primary else name
            lines.append(f"| {name}{self.seeds_note(cell)} | {cell.text('pearson')} | "
                         f"{cell.text('spearman')} | {cell.text('nrmse')} | "
                         f"{cell.fit_seconds:.1f} |")
        return lines

    def best_baseline(self, corpus: str) -> tuple[str, Cell] | None:
        """The baseline with the highest mean Pearson (the paper's primary metric)."""
        candidates = [(method_label(m, b, c), self.cell(m, b, corpus, c))
                      for m, b, c in self.main_methods() if METHODS[m].baseline]
        candidates = [(name, cell) for name, cell in candidates if cell is not None]
        return max(candidates, key=lambda nc: nc[1].mean("pearson"), default=None)

    def headline(self) -> list[str]:
        lines = [f"| Corpus | RELISH ({short(self.primary)}) Pearson | Best baseline | "
                 "Its Pearson | Margin | Margin > std? | Seeds won | RELISH NRMSE | "
                 "Its NRMSE |",
                 "|---|---:|---|---:|---:|:---:|:---:|---:|---:|"]
        for corpus in self.corpora:
            relish = self.cell("relish", self.primary, corpus, self.default_relish)
            best = self.best_baseline(corpus)
            if relish is None or best is None:
                continue
            name, base = best
            margin = relish.mean("pearson") - base.mean("pearson")
            stds = [relish.std("pearson"), base.std("pearson")]
            exceeds = "n/a (1 seed)" if any(np.isnan(stds)) else (
                "yes" if abs(margin) > max(stds) else "no")
            ours, theirs = relish.by_seed("pearson"), base.by_seed("pearson")
            shared = sorted(set(ours) & set(theirs))
            won = sum(ours[s] > theirs[s] for s in shared)
            lines.append(f"| {corpus} | {relish.text('pearson')} | {name} | "
                         f"{base.text('pearson')} | {margin:+.1f} | {exceeds} | "
                         f"{won}/{len(shared)} | {relish.text('nrmse')} | "
                         f"{base.text('nrmse')} |")
        return lines

    # -- ablations --------------------------------------------------------------------
    def ablation_table(self, corpus: str, variants: list[tuple[str, dict]]) -> list[str]:
        lines = ["| Variant | Pearson ↑ | Spearman ↑ | NRMSE ↓ | Epochs | Fit (s) |",
                 "|---|---:|---:|---:|---:|---:|"]
        for name, config in variants:
            cell = self.ablation_cells.get(("relish", self.primary, corpus,
                                            json.dumps(config, sort_keys=True)))
            if cell is None:
                continue
            epochs = np.mean([row["params"]["epochs"] for row in cell.rows])
            lines.append(f"| {name}{self.seeds_note(cell)} | {cell.text('pearson')} | "
                         f"{cell.text('spearman')} | {cell.text('nrmse')} | {epochs:.1f} | "
                         f"{cell.fit_seconds:.1f} |")
        return lines

    def ablations(self) -> list[str]:
        s, default = self.settings, " (default)"
        iterations = [(f"{n} iteration{'s' if n > 1 else ''}"
                       f"{default if n == N_ITERATIONS else ''}",
                       relish_config(s, n_iterations=n)) for n in ABLATION_ITERATIONS]
        losses = [(loss.capitalize() if loss == "huber" else "MSE", relish_config(s, loss=loss))
                  for loss in ABLATION_LOSSES]
        losses[0] = (losses[0][0] + default, losses[0][1])
        layers = []
        try:
            depth = ablation_layers(self.primary)
        except Exception:  # backbone not installed here: label layers from the rows
            depth = sorted({(str(r["config"]["layer"]), r["config"]["layer"])
                            for r in self.rows if r["method"] == "relish"}, key=lambda t: -t[1])
        default_layer = (package_default("layer"), package_default("input_norm"))
        for name, layer in depth:
            for norm in (False, True):
                where = "last layer (-1)" if layer == -1 else name
                layers.append((f"{where}{', input_norm' if norm else ''}"
                               f"{default if (layer, norm) == default_layer else ''}",
                               relish_config(s, layer=layer, input_norm=norm)))
        lines = []
        for corpus in self.ablation_corpora:
            for title, variants in (("refinement iterations", iterations),
                                    ("loss", losses), ("hidden layer", layers)):
                table = self.ablation_table(corpus, variants)
                if len(table) > 2:
                    lines += [f"#### {corpus}: {title}", "", *table, ""]
        return lines

    # -- the section --------------------------------------------------------------------
    def markdown(self, command: str, figure: Path | None, results: Path) -> str:
        finished = sorted(row["finished"] for row in self.rows)
        machines = sorted({row["machine"] for row in self.rows}) or [machine_info()]
        commands = sorted({row["command"] for row in self.rows})
        mlp_widths = {short(row["backbone"]): row["params"]["hidden_units"]
                      for row in self.rows if row["method"] == "meanpool_mlp"}
        out = [
            "## Quality", "",
            f"Command: `{command}`  ",
            f"Date: {datetime.date.today().isoformat()}"
            + (f" (fits finished {finished[0]} .. {finished[-1]})" if finished else "") + "  ",
            *[f"Machine: {m}  " for m in machines],
            *([f"Rows recorded by: {', '.join(f'`{c}`' for c in commands)}"]
              if commands and commands != [command] else []),
            "",
            f"Protocol: for each seed ({', '.join(map(str, self.seeds))}) its own random "
            f"{100 - int(100 * TEST_SIZE)}/{int(100 * TEST_SIZE)} train/test split of each "
            "corpus, shared by all methods"
            + (f"; each corpus subsampled to {self.settings.n_texts} texts"
               if self.settings.n_texts else "")
            + ". Everything a method tunes is chosen on the training split only: Ridge's "
            "alpha by RidgeCV's leave-one-out over logspace("
            f"{np.log10(RIDGE_ALPHAS[0]):.0f}, {np.log10(RIDGE_ALPHAS[-1]):.0f}, "
            f"{len(RIDGE_ALPHAS)}) on standardised features; RELISH (package defaults, max_epochs="
            f"{self.settings.max_epochs}) and the MLP stop early on 10% held out of the "
            "training split. Pearson, Spearman and NRMSE (RMSE / (max - min) of the test "
            "targets) are x100, mean ± sample std (ddof=1) over seeds. Backbone baselines "
            "read the same frozen backbone as RELISH, at its last layer (the paper's "
            "setting) and at RELISH's default middle layer; the MLP has one hidden layer sized to "
            "match the RELISH head's parameters"
            + "".join(f" ({', '.join(f'{w} units for {b}' for b, w in mlp_widths.items())})"
                      for _ in [0] if mlp_widths)
            + ", standardised features and target. Fit seconds exclude the backbone's "
            "forward pass: token states are computed once per text and layer, cached, and "
            "shared by all seeds and methods.", "",
            "† VADER is untrained: Pearson and Spearman use its compound score as is; for "
            "NRMSE the score is mapped to the -4..+4 scale by a 1-D linear regression fitted "
            "on the training split only.", "",
        ]
        for corpus in self.corpora:
            n = next((c.rows[0] for k, c in self.cells.items() if k[2] == corpus), None)
            if n is None:
                continue
            out += [f"### {corpus} ({n['n_train']:,} train / {n['n_test']:,} test texts)", "",
                    *self.corpus_table(corpus), ""]
        out += ["### Headline", "",
                f"RELISH on {short(self.primary)} against the baseline with the best mean "
                "Pearson on each corpus. Margin = difference of mean Pearson (x100); "
                "\"Margin > std?\" asks whether it exceeds the larger of the two seed std "
                "devs; \"Seeds won\" compares the same splits seed by seed.", "",
                *self.headline(), ""]
        ablations = self.ablations()
        if ablations:
            size = (f"each corpus subsampled to {self.ablation_n_texts:,} texts, "
                    if self.ablation_n_texts else "")
            out += [f"### Ablations (RELISH on {short(self.primary)})", "",
                    f"Same seeds; {size}80/20 splits as above; one parameter varied from "
                    "the defaults. "
                    "Epochs = mean epochs trained (early stopping restores the best).", "",
                    *ablations]
        if figure is not None:
            rel = os.path.relpath(figure, results.parent)
            out += ["### Predictions", "",
                    f"![Predicted vs true, tweets test split, seed 0]({rel})", ""]
        return "\n".join(out).rstrip() + "\n"

    # -- the figure ---------------------------------------------------------------------
    def scatter(self, predictions: Path, figure: Path) -> bool:
        """RELISH vs the best baseline, predicted vs true, tweets test split of seed 0."""
        if "tweets" not in self.corpora or 0 not in self.seeds or not predictions.exists():
            return False
        relish = self.cell("relish", self.primary, "tweets", self.default_relish)
        best = self.best_baseline("tweets")
        if relish is None or best is None:
            return False
        panels = []
        for name, cell in ((label("relish", self.primary), relish), best):
            row = next((r for r in cell.rows if r["seed"] == 0), None)
            if row is None or "predictions_id" not in row:
                return False
            panels.append((name, row))
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        saved = np.load(predictions)
        fig, axes = plt.subplots(1, 2, figsize=(10, 5), sharex=True, sharey=True)
        for ax, (name, row) in zip(axes, panels, strict=True):
            pid = row["predictions_id"]
            y_true, pred = saved[f"y_true_{pid}"], saved[f"pred_{pid}"]
            ax.scatter(y_true, pred, s=6, alpha=0.4)
            ax.plot([-4, 4], [-4, 4], color="grey", linewidth=1, linestyle="--")
            m = row["metrics"]
            mapped = " (compound, mapped linearly)" if row["method"] == "vader" else ""
            ax.set_title(f"{name}{mapped}\nPearson {100 * m['pearson']:.1f}, "
                         f"NRMSE {100 * m['nrmse']:.1f}")
            ax.set_xlabel("true rating")
        axes[0].set_ylabel("predicted rating")
        fig.suptitle(f"VADER tweets, test split of seed 0 ({len(y_true)} texts)")
        fig.tight_layout()
        figure.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(figure, dpi=120)
        plt.close(fig)
        return True


def replace_section(path: Path, section: str, heading: str = "## Quality") -> None:
    """Put ``section`` in place of the file's ``heading`` section; keep the others intact."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    start = next((i for i, line in enumerate(lines) if line.strip() == heading), None)
    if start is None:
        kept_before, kept_after = lines, []
        if kept_before and kept_before[-1].strip():
            kept_before = [*kept_before, ""]
    else:
        # The section runs to the next level-2 heading (its own ### headings are inside).
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
                   len(lines))
        kept_before, kept_after = lines[:start], lines[end:]
    text = "\n".join([*kept_before, *section.rstrip("\n").splitlines()])
    text += "\n" + ("\n" + "\n".join(kept_after) + "\n" if kept_after else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def summarise(args, settings: Settings, command: str) -> None:
    summary = Summary(read_rows(args.runs_file), settings, args.corpora,
                      args.ablation_corpora, args.seeds, args.backbone, args.secondary,
                      args.ablation_n_texts)
    if not summary.rows:
        print(f"No rows for these settings in {args.runs_file}; nothing to summarise.")
        return
    figure = None
    if not args.no_write:
        figure = args.results.parent / "quality_scatter.png"
        if not summary.scatter(predictions_path(args.runs_file), figure):
            figure = None
    section = summary.markdown(command, figure, args.results)
    if args.no_write:
        print("\n" + section)
        return
    replace_section(args.results, section)
    print(f"Wrote the Quality section of {args.results}"
          + (f" and {figure}" if figure else "") + ".")


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
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS),
                        help="run only these methods (default: all)")
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
    settings = Settings(args.n_texts, args.max_epochs, args.cache_dir, args.lr)
    if not args.summarise:
        backbones = [b for b in (args.backbone, args.secondary) if b]
        ablation_settings = Settings(args.ablation_n_texts, args.max_epochs, args.cache_dir,
                                     args.lr)
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
