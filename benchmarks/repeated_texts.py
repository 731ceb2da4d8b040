"""Intervals when training texts repeat: one row per rating, as crowd-rated data comes.

Each of ``--texts`` VADER tweets enters the training data ``--ratings`` times, each time
with one of its individual human ratings (from the VADER sdist, as ``human_rater.py``
reads them). New tweets, each with one rating drawn at random, measure the coverage of
90% intervals, with the early-stopping hold-out and the interval folds drawn by text (the
package) and by row (as before: copies of a training text in the hold-out). Backbone:
the embedded MiniLM (fast); the head at package defaults.

    python benchmarks/repeated_texts.py            # print, and rewrite RESULTS.md's section
    python benchmarks/repeated_texts.py --no-write
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from unittest import mock

import numpy as np
from human_rater import read_ratings, sdist_path
from quality_report import replace_section
from scipy.stats import pearsonr

from sklearn_relish import RelishTextRegressor
from sklearn_relish.datasets import load_vader

BACKBONE = "embedded:all-MiniLM-L6-v2"
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def data(n_texts: int, n_ratings: int, n_new: int, seed: int):
    bunch = load_vader("tweets")
    texts, truth = list(bunch.data), np.asarray(bunch.target)
    by_id = read_ratings(sdist_path(), "tweets")
    ratings = [by_id[i] for i in bunch.ids]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(texts))
    train, new = order[:n_texts], order[n_texts:n_texts + n_new]
    X = [texts[i] for i in train for _ in range(n_ratings)]
    y = np.concatenate([rng.choice(ratings[i], n_ratings, replace=False) for i in train])
    new_texts = [texts[i] for i in new]
    new_y = np.array([rng.choice(ratings[i]) for i in new])
    return X, y, new_texts, new_y, truth[new]


def fit_and_score(split_by: str, intervals: str, X, y, new_texts, new_y, new_truth,
                  seed: int, coverage: float) -> dict:
    model = RelishTextRegressor(BACKBONE, intervals=intervals, random_state=seed)
    start = time.perf_counter()
    if split_by == "row":  # the splits as they were: every row its own text
        with mock.patch("sklearn_relish._estimator.distinct_ids",
                        lambda texts: np.arange(len(texts))):
            model.fit(X, y)
    else:
        model.fit(X, y)
    fit_s = time.perf_counter() - start
    low, high = model.predict_interval(new_texts, coverage=coverage).T
    return {"seed": seed, "split by": split_by, "intervals": intervals,
            "coverage": 100 * float(np.mean((low <= new_y) & (new_y <= high))),
            "width": float(np.mean(high - low)),
            "pearson": 100 * float(pearsonr(model.predict(new_texts), new_truth)[0]),
            "best_epoch": model.best_iteration_, "epochs": model.n_iter_,
            "valid_loss": min(model.validation_loss_curve_),
            "n_calibration": len(model.calibration_scores_), "fit_s": fit_s}


def table(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"Command: `python benchmarks/repeated_texts.py --texts {args.texts} --ratings "
        f"{args.ratings} --new {args.new} --seeds {' '.join(map(str, args.seeds))}`. For each "
        f"seed, {args.texts} tweets drawn at random, each "
        f"{args.ratings} times with one of its own human ratings ({args.texts * args.ratings}"
        f" rows); {args.new} other tweets with one random rating each measure the "
        f"{100 * args.coverage:.0f}% intervals; backbone {BACKBONE}, package defaults. "
        "Pearson: predictions against the new tweets' mean rating. Calibration texts: "
        "scores the intervals rest on (one per distinct text when split by text).", "",
        "| seed | hold-out and folds split by | intervals | coverage of new texts % | mean width "
        "| Pearson | best epoch / epochs | hold-out loss | calibration scores | fit (s) |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['seed']} | {r['split by']} | {r['intervals']} | {r['coverage']:.1f} "
            f"| {r['width']:.2f} | {r['pearson']:.1f} | {r['best_epoch']} / {r['epochs']} | "
            f"{r['valid_loss']:.3f} | {r['n_calibration']} | {r['fit_s']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=400)
    parser.add_argument("--ratings", type=int, default=5)
    parser.add_argument("--new", type=int, default=800)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--coverage", type=float, default=0.9)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    rows = []
    for seed in args.seeds:
        X, y, new_texts, new_y, new_truth = data(args.texts, args.ratings, args.new, seed)
        rows += [fit_and_score(split_by, intervals, X, y, new_texts, new_y, new_truth, seed,
                               args.coverage)
                 for split_by in ("row", "text") for intervals in ("split", "cv")]
        print(table(rows, args), flush=True)  # as each seed ends: a long run keeps its rows
    report = table(rows, args)
    if not args.no_write:
        replace_section(RESULTS, f"## Repeated texts\n\n{report}\n",
                        heading="## Repeated texts")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
