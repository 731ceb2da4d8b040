"""The quality benchmark's methods, and what its runner and its report share about them.

Each ``run_*`` function fits one method on a split's training part and predicts its test
part (the protocol is described in ``quality.py``); ``METHODS`` names them. The settings,
RELISH's varied parameters, the backbones' short names and the table labels live here too,
so that ``quality.py`` (which runs) and ``quality_report.py`` (which summarises) import them
from one place and not from each other.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from sklearn_relish._backbones import MINILM, SMOLLM2
from sklearn_relish._embedded import GEMMA3

# Rows recorded before the embedded backbones got their own names carry the hub ids that
# sklearn_relish 0.1.x resolved to those same embedded copies: read them as the new names.
LEGACY = {"HuggingFaceTB/SmolLM2-135M-Instruct": SMOLLM2,
          "sentence-transformers/all-MiniLM-L6-v2": MINILM}
SHORT_NAMES = {SMOLLM2: "SmolLM2", MINILM: "MiniLM", GEMMA3: "Gemma 3 270M"}
SHORT_NAMES.update({old: SHORT_NAMES[new] for old, new in LEGACY.items()})

TEST_SIZE = 0.2
RIDGE_ALPHAS = np.logspace(-3, 5, 17)  # wide: SmolLM2 last-layer states want alpha 1e3+

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
# Settings, RELISH's configurations and the table labels
# =========================================================================================
@dataclass
class Settings:
    """What all rows of one run share; part of every row's identity."""

    n_texts: int | None  # None = whole corpus; --quick subsamples
    max_epochs: int  # RELISH's max_epochs (package default unless --quick / --max-epochs)
    cache_dir: str
    lr: float  # RELISH's learning rate (package default unless --lr)
    quick: bool = False  # --quick: the fine-tuning baselines search a one-point grid
    # --tuning-lrs: the fine-tuning baselines' lr grid, narrowed where a full grid would not
    # fit the machine's time; the rows record it, so they never pass for full-grid rows.
    tuning_lrs: tuple[float, ...] | None = None


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


# RELISH with the blocks under its layer fine-tuned: k and their lr chosen on the
# early-stopping hold-out of tweets' seed-0 training split (benchmarks/top_layers_select.py).
TOP_LAYERS = {"train_top_layers": 4, "top_layers_lr": 1e-4}


def relish_top_config(settings: Settings) -> dict[str, Any]:
    # --quick runs on MiniLM, whose middle layer has only 3 blocks below it.
    top = {**TOP_LAYERS, "train_top_layers": 1} if settings.quick else TOP_LAYERS
    return {**relish_config(settings), **top}


def cached_layer(model) -> int | float:
    """The layer whose states ``model``'s fit reads: below its trained blocks, if any
    (the estimator's own rule, so the benchmark warms exactly what the fit will read)."""
    return model._featurizer_to_train_on().layer


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
    k = (config or {}).get("train_top_layers", 0)
    if method == "relish" and k:
        return name[:-1] + f", {k} top block{'s' if k > 1 else ''} trained)"
    layer = (config or {}).get("layer")
    if METHODS[method].baseline and layer is not None and layer != -1:
        where = "middle layer" if layer == 0.5 else f"layer {layer}"
        name = name[:-1] + f", {where})" if name.endswith(")") else f"{name}, {where}"
    return name



def label(method: str, backbone: str | None) -> str:
    return METHODS[method].label.format(b=short(backbone))


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
    model = RelishTextRegressor(job.backbone, random_state=job.seed,
                                cache_dir=settings.cache_dir, **job.config)
    store.warm(corpus, job.backbone, cached_layer(model))
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


def finetune_config(method: str, settings: Settings) -> dict[str, Any]:
    from quality_finetune import QUICK_RECIPES, RECIPES

    config = dict((QUICK_RECIPES if settings.quick else RECIPES)[method])
    if settings.tuning_lrs:
        config["lrs"] = list(settings.tuning_lrs)
    return config


def run_finetuned(job, corpus, train, test, store, settings) -> Outcome:
    """Full fine-tuning or LoRA: the whole model runs in the fit (no cached states)."""
    from quality_finetune import fit_predict

    texts = corpus.texts
    pred, fit_s, pred_s, params = fit_predict(
        job.method, job.backbone, job.config, [texts[i] for i in train], corpus.y[train],
        [texts[i] for i in test], job.seed, log=lambda line: print(line, flush=True))
    return Outcome(pred, fit_s, pred_s, params)


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
    "finetune": Method("Fine-tuned {b} (all weights)", run_finetuned, True),
    "lora": Method("LoRA + MLP ({b})", run_finetuned, True),
}
