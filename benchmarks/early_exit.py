"""What stopping the forward pass at the layer read saves: featurization time by layer.

VADER tweets, no cache (every call runs the LLM), one warm-up call first, then the median
of three timed calls per layer. Layer 0 (the embeddings, which ``train_top_layers`` equal
to the depth reads) runs no block; the middle layer (the default) about half of them; the
last layer all. The README's speed section quotes these figures.
Run: ``python benchmarks/early_exit.py [--backbone NAME] [--n-texts N]``.
"""

import argparse
import statistics
import time

import torch

from sklearn_relish._featurizer import LLMFeaturizer
from sklearn_relish.datasets import load_vader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="embedded:SmolLM2-135M-Instruct-Q4_1")
    parser.add_argument("--n-texts", type=int, default=600)
    args = parser.parse_args()
    texts = list(load_vader("tweets").data[: args.n_texts])
    print(f"{args.backbone}, {len(texts)} VADER tweets, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print("| layer | seconds (median of 3) | vs last layer |")
    print("|---|---:|---:|")
    seconds = {}
    for layer in (-1, 0.5, 0):
        featurizer = LLMFeaturizer(args.backbone, layer=layer, cache=False)
        featurizer.transform(texts[:50], "single")  # load, warm up, early-exit check
        runs = []
        for _ in range(3):
            start = time.perf_counter()
            featurizer.transform(texts, "single")
            runs.append(time.perf_counter() - start)
        seconds[layer] = statistics.median(runs)
        print(f"| {layer} | {seconds[layer]:.2f} | {seconds[layer] / seconds[-1]:.2f}x |",
              flush=True)


if __name__ == "__main__":
    main()
