"""Hand-run benchmark of the head's training and prediction speed on cached token states.

Fits ``RelishTextRegressor`` with default settings (SmolLM2, middle layer) on the VADER
tweets' 80/20 splits of ``benchmarks/quality.py``, one fit per seed, with every text's
token states already in ``--cache-dir`` (filled before anything is timed), so only the
head's work is measured:

- seconds per epoch: skorch's own per-epoch ``dur`` (a training pass plus the
  early-stopping hold-out's loss), the median over the fit's epochs;
- ``predict`` seconds on the test split (states from the memory cache);
- Pearson x100 on the test split.

Rows go to ``--out`` (JSON Lines), one per seed, tagged with ``--label`` and the code's
git commit, so that two versions of the package can be compared on the same machine::

    OMP_NUM_THREADS=2 python benchmarks/head_speed.py --label after
    PYTHONPATH=/path/to/old/checkout python benchmarks/head_speed.py --label before
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _machine import cpu_model  # benchmarks/ is on sys.path when run as a script
from quality_data import load_corpus, split
from scipy.stats import pearsonr

import sklearn_relish
from sklearn_relish import RelishTextRegressor

HERE = Path(__file__).parent


def commit_of(module_file: str) -> str:
    folder = Path(module_file).resolve().parent
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=folder,
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="tweets")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n-texts", type=int, default=None, help="subsample (smoke runs)")
    parser.add_argument("--cache-dir", default=str(Path("~/.cache/sklearn_relish/states")
                                                   .expanduser()))
    parser.add_argument("--label", required=True, help="tag for the rows, e.g. before/after")
    parser.add_argument("--out", default=str(HERE / "head_speed_runs.jsonl"))
    parser.add_argument("--param", action="append", default=[],
                        help="extra estimator parameter name=value (Python literal)")
    args = parser.parse_args(argv)
    import ast

    extra = {}
    for item in args.param:
        name, value = item.split("=", 1)
        extra[name] = ast.literal_eval(value)

    corpus = load_corpus(args.corpus, args.n_texts)
    texts, y = corpus.texts, corpus.y
    # Warm the store (and the memory cache) once: the LLM's forward pass is not timed.
    start = time.perf_counter()
    RelishTextRegressor(cache_dir=args.cache_dir, max_epochs=1, early_stopping=False,
                        **extra).fit(texts, y)
    print(f"states ready in {time.perf_counter() - start:.0f} s", flush=True)
    commit = commit_of(sklearn_relish.__file__)
    for seed in args.seeds:
        train, test = split(len(texts), seed)
        model = RelishTextRegressor(cache_dir=args.cache_dir, random_state=seed, **extra)
        start = time.perf_counter()
        model.fit([texts[i] for i in train], y[train])
        fit_seconds = time.perf_counter() - start
        start = time.perf_counter()
        predicted = model.predict([texts[i] for i in test])
        predict_seconds = time.perf_counter() - start
        epochs = [float(d) for d in model.net_.history[:, "dur"]]
        row = {
            "label": args.label, "commit": commit, "corpus": args.corpus, "seed": seed,
            "n_train": len(train), "n_test": len(test), "params": extra,
            "epochs": len(epochs), "best_epoch": int(model.best_iteration_),
            "seconds_per_epoch": statistics.median(epochs), "fit_seconds": fit_seconds,
            "predict_seconds": predict_seconds,
            "pearson": 100 * float(pearsonr(predicted, y[test])[0]),
            "cpu": cpu_model(), "threads": int(__import__("torch").get_num_threads()),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
        }
        print(json.dumps(row), flush=True)
        with open(args.out, "a") as handle:
            handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
