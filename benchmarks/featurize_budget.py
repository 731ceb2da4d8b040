"""Hand-run: featurization seconds on the CPU per batching rule (the "auto" token budget).

Runs the embedded SmolLM2 (last layer, cache off) over the first 1,200 VADER tweets with a
fixed 32 texts per batch and with ``featurize_batch_size="auto"`` at several budgets of
padded tokens, alternating, ``--repeats`` times each; prints seconds per pass::

    OMP_NUM_THREADS=2 python benchmarks/featurize_budget.py --budgets 512 1024 2048 4096 16384
"""

from __future__ import annotations

import argparse
import time

import torch

from sklearn_relish import _featurizer
from sklearn_relish._backbones import SMOLLM2
from sklearn_relish._featurizer import LLMFeaturizer
from sklearn_relish.datasets import load_vader


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--n-texts", type=int, default=1200)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    texts = list(load_vader("tweets", return_X_y=True)[0][:args.n_texts])
    rules = [("32 texts", 32, None)] + [(f"auto, {b} tokens", "auto", b) for b in args.budgets]
    seconds: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for name, batch_size, budget in rules:
            if budget:
                _featurizer.TOKEN_BUDGET["cpu"] = budget
            featurizer = LLMFeaturizer(SMOLLM2, layer=-1, batch_size=batch_size, cache=False,
                                       device="cpu")
            _ = featurizer.loaded  # loading is not timed
            start = time.perf_counter()
            featurizer.transform(texts, "single")
            seconds.setdefault(name, []).append(time.perf_counter() - start)
    print(f"{len(texts)} tweets, {torch.get_num_threads()} threads")
    for name, values in seconds.items():
        print(f"| {name} | " + " | ".join(f"{v:.1f}" for v in values) + " |")


if __name__ == "__main__":
    main()
