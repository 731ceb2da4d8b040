"""How far below its coverage does the default ``intervals="split"`` fall with a small
hold-out, and is it the hold-out's double duty (choosing the epoch, then calibrating)?

Each repetition draws ``--n-train`` VADER tweets (each size in turn) to fit (package
defaults, the embedded MiniLM: fast), ``--n-fresh`` other tweets (by default as many as
the hold-out) and ``--n-test`` more. The fitted model's 80% and 90% intervals
(calibrated on its early-stopping hold-out, which also chose the epoch) are scored on
the test tweets, beside the same head calibrated on the fresh tweets instead (split
conformal on texts that played no part in training). Coverage is averaged over
repetitions; its standard error is taken across them (tweets of one repetition share
one calibration, so their misses are not independent).

    python benchmarks/intervals_small_n.py --reps 100 --n-train 200   # and RESULTS.md
    python benchmarks/intervals_small_n.py --reps 50 --cv --no-write  # and intervals="cv"
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from pathlib import Path

import numpy as np
from quality_report import replace_section

from sklearn_relish import RelishTextRegressor
from sklearn_relish._intervals import score_quantile
from sklearn_relish.datasets import load_vader

BACKBONE = "embedded:all-MiniLM-L6-v2"
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
COVERAGES = (0.8, 0.9)


def one_repetition(texts: list[str], y: np.ndarray, rep: int, n_train: int, n_fresh: int,
                   n_test: int, cv: bool = False) -> dict[str, float]:
    order = np.random.default_rng(rep).permutation(len(texts))
    train, fresh, test = np.split(order[:n_train + n_fresh + n_test],
                                  [n_train, n_train + n_fresh])
    pick = lambda rows: [texts[i] for i in rows]  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the hold-out's small-n warnings, expected here
        model = RelishTextRegressor(BACKBONE, random_state=rep).fit(pick(train), y[train])
    predicted = model.predict(pick(test))
    fresh_scores = np.sort(np.abs(y[fresh] - model.predict(pick(fresh)))).reshape(-1, 1)
    row = {"n_train": n_train, "n_holdout": len(model.calibration_scores_)}
    for coverage in COVERAGES:
        bounds = model.predict_interval(pick(test), coverage=coverage)
        row[f"holdout {coverage}"] = np.mean((bounds[:, 0] <= y[test]) & (y[test] <= bounds[:, 1]))
        margin = score_quantile(fresh_scores, coverage)[0]
        row[f"fresh {coverage}"] = np.mean(np.abs(y[test] - predicted) <= margin)
    if cv:  # the same fit calibrated by 5 fold heads on all its training texts instead
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = RelishTextRegressor(BACKBONE, random_state=rep, intervals="cv").fit(
                pick(train), y[train])
        for coverage in COVERAGES:
            bounds = model.predict_interval(pick(test), coverage=coverage)
            row[f"cv {coverage}"] = np.mean((bounds[:, 0] <= y[test]) & (y[test] <= bounds[:, 1]))
    return row


def report(rows: list[dict], args: argparse.Namespace, seconds: float) -> str:
    out = ["## Intervals with a small hold-out", "",
           f"`python benchmarks/intervals_small_n.py --reps {args.reps}"
           f"{' --cv' if args.cv else ''} --n-train "
           f"{' '.join(map(str, args.n_train))}"
           f"{f' --n-fresh {args.n_fresh}' if args.n_fresh else ''} --n-test "
           f"{args.n_test}` ({seconds:.0f} s). VADER tweets, the embedded MiniLM, package "
           "defaults: each repetition fits n tweets (its hold-out, 10% of them, also chose "
           f"the epoch) and scores {args.n_test} others; \"fresh\" calibrates the same head "
           f"on {args.n_fresh or 'as many'} tweets"
           f"{'' if args.n_fresh else ' as its hold-out holds'}, none of which it saw. "
           "Coverage % over "
           f"{args.reps} repetitions "
           "± its standard error across them.", "",
           "| n fitted | hold-out texts | coverage asked | hold-out (the default) | "
           "fresh texts | difference |" + (' `intervals="cv"` |' if args.cv else ""),
           f"|---:|---:|---:|---:|---:|---:|{'---:|' if args.cv else ''}"]
    se = lambda v: v.std(ddof=1) / np.sqrt(len(v))  # noqa: E731
    for n_train in args.n_train:
        mine = [r for r in rows if r["n_train"] == n_train]
        n_holdout = "/".join(str(n) for n in sorted({int(r["n_holdout"]) for r in mine}))
        for coverage in COVERAGES:
            held = np.array([r[f"holdout {coverage}"] for r in mine])
            fresh = np.array([r[f"fresh {coverage}"] for r in mine])
            out.append(
                f"| {n_train} | {n_holdout} | {100 * coverage:.0f} | {100 * held.mean():.1f} "
                f"± {100 * se(held):.1f} | {100 * fresh.mean():.1f} ± {100 * se(fresh):.1f} | "
                f"{100 * (held - fresh).mean():+.1f} ± {100 * se(held - fresh):.1f} |"
                + (f" {100 * np.mean([r[f'cv {coverage}'] for r in mine]):.1f} ± "
                   f"{100 * se(np.array([r[f'cv {coverage}'] for r in mine])):.1f} |"
                   if args.cv else ""))
    return "\n".join([*out, ""])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=100)
    parser.add_argument("--n-train", type=int, nargs="+", default=[200])
    parser.add_argument("--n-fresh", type=int, default=None,
                        help="default: as many as the hold-out (10%% of --n-train)")
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--cv", action="store_true",
                        help="also fit with intervals='cv' (5 more head fits a repetition)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    bunch = load_vader("tweets")
    texts, y = list(bunch.data), np.asarray(bunch.target, dtype=float)
    start, rows = time.perf_counter(), []
    for n_train in args.n_train:
        for rep in range(args.reps):
            n_fresh = args.n_fresh or math.ceil(0.1 * n_train)
            rows.append(one_repetition(texts, y, rep, n_train, n_fresh, args.n_test,
                                       args.cv))
            print(f"n={n_train} {rep + 1}/{args.reps}",
                  {k: round(float(v), 3) for k, v in rows[-1].items()}, flush=True)
    section = report(rows, args, time.perf_counter() - start)
    print(section)
    if not args.no_write:
        replace_section(RESULTS, section, heading=section.splitlines()[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
