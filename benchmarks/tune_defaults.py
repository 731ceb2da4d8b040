"""Choose the estimator's defaults on validation data only (run by hand).

For each corpus and seed, the quality benchmark's training split (never its test split) is
split again 80/20; each candidate setting is fitted on the first part and scored (Pearson)
on the second. The mean over seeds per setting is printed as a Markdown table.

    python benchmarks/tune_defaults.py --corpora tweets nyt --n-texts 1000 \\
        --grid '{"lr": [1e-4, 3e-4, 1e-3]}'
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import warnings

import numpy as np
from sklearn.model_selection import train_test_split

sys.path.insert(0, os.path.dirname(__file__))
from quality_data import load_corpus, split  # noqa: E402  the benchmark's own splits

from sklearn_relish import RelishTextRegressor  # noqa: E402
from sklearn_relish.metrics import pearson_r  # noqa: E402


def validation_score(texts, y, train, params: dict, seed: int, cache_dir: str) -> float:
    fit_part, valid_part = train_test_split(train, test_size=0.2, random_state=seed)
    model = RelishTextRegressor(random_state=seed, cache_dir=cache_dir, **params)
    model.fit([texts[i] for i in fit_part], y[fit_part])
    return pearson_r(y[valid_part], model.predict([texts[i] for i in valid_part]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpora", nargs="+", default=["tweets", "nyt"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--n-texts", type=int, default=1000)
    parser.add_argument("--grid", default='{"lr": [1e-4, 3e-4, 1e-3]}')
    parser.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/sklearn_relish/states"))
    args = parser.parse_args()
    warnings.simplefilter("ignore", UserWarning)  # truncation notes; not the point here
    grid = json.loads(args.grid)
    candidates = [dict(zip(grid, values, strict=True))
                  for values in itertools.product(*grid.values())]
    print(f"command: python {' '.join(sys.argv)}\n")
    print("| corpus | " + " | ".join(json.dumps(c) for c in candidates) + " |")
    print("|---" * (len(candidates) + 1) + "|")
    for corpus_name in args.corpora:
        corpus = load_corpus(corpus_name, args.n_texts)
        cells = []
        for params in candidates:
            scores = [100 * validation_score(corpus.texts, corpus.y, split(len(corpus.y), seed)[0],
                                             params, seed, args.cache_dir)
                      for seed in args.seeds]
            cells.append(f"{np.mean(scores):.1f} ± {np.std(scores):.1f}")
        print(f"| {corpus_name} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
