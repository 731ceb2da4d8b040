"""Choose ``train_top_layers`` and ``top_layers_lr`` on validation data only.

For each (k, lr) RELISH is fitted on the benchmark's training split of a corpus (the same
80/20 split as ``quality.py``); the estimator's own early-stopping hold-out (10% of that
training split, never trained on) gives the validation loss that decides. The test
Pearson is recorded beside it but plays no part in the choice. Rows go to
``top_layers_runs.jsonl``; ``--summarise`` prints the table for RESULTS.md.

    python benchmarks/top_layers_select.py --corpus tweets --grid 0:3e-4 2:5e-5 2:2e-4
    python benchmarks/top_layers_select.py --summarise
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from quality_data import DEFAULT_CACHE_DIR, load_corpus, split
from quality_methods import cached_layer
from scipy.stats import pearsonr

RUNS = Path(__file__).resolve().parent / "top_layers_runs.jsonl"


def run(corpus_name: str, seed: int, k: int, lr: float, backbone: str | None,
        layer: float | None) -> dict:
    from sklearn_relish import DEFAULT_BACKBONE, RelishTextRegressor

    corpus = load_corpus(corpus_name, None)
    train, test = split(len(corpus.texts), seed)
    model = RelishTextRegressor(backbone or DEFAULT_BACKBONE, random_state=seed,
                                cache_dir=str(DEFAULT_CACHE_DIR.expanduser()),
                                train_top_layers=k, top_layers_lr=lr)
    if layer is not None:
        model.set_params(layer=layer)
    # Featurize first, outside the clock: fit seconds are training only, as in quality.py.
    model._make_featurizer(layer=cached_layer(model)).transform(
        [corpus.texts[i] for i in train], "single")
    start = time.perf_counter()
    model.fit([corpus.texts[i] for i in train], corpus.y[train])
    fit_s = time.perf_counter() - start
    pred = model.predict([corpus.texts[i] for i in test])
    return {"corpus": corpus_name, "seed": seed, "backbone": model.backbone,
            "layer": model.layer, "train_top_layers": k, "top_layers_lr": lr if k else None,
            "valid_loss": min(model.validation_loss_curve_),
            "test_pearson": 100 * float(pearsonr(pred, corpus.y[test])[0]),
            "epochs": model.n_iter_, "best_epoch": model.best_iteration_,
            "fit_s": fit_s, "seconds_per_epoch": fit_s / model.n_iter_}


def summarise() -> str:
    rows = [json.loads(line) for line in RUNS.read_text().splitlines() if line.strip()]
    lines = ["| corpus | seed | backbone | layer read | top blocks trained | their lr | "
             "validation loss ↓ | test Pearson | epochs (best) | s/epoch |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["corpus"], r["seed"], r["backbone"],
                                         r["train_top_layers"], r["top_layers_lr"] or 0)):
        # Bold: the lowest hold-out loss of the corpus and seed, whatever the backbone
        # (a split with a single row chose nothing: no bold).
        rivals = [x["valid_loss"] for x in rows
                  if (x["corpus"], x["seed"]) == (r["corpus"], r["seed"])]
        mark = "**" if len(rivals) > 1 and np.isclose(r["valid_loss"], min(rivals)) else ""
        lines.append(
            f"| {r['corpus']} | {r['seed']} | {r['backbone'].split(':')[-1]} | "
            f"{r.get('layer', 0.5)} | {r['train_top_layers']} | {r['top_layers_lr'] or '-'} | "
            f"{mark}{r['valid_loss']:.4f}{mark} | {r['test_pearson']:.1f} | "
            f"{r['epochs']} ({r['best_epoch']}) | {r['seconds_per_epoch']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="tweets")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backbone", default=None)
    parser.add_argument("--grid", nargs="*", default=["0:3e-4", "2:5e-5", "2:2e-4"],
                        help="k:lr or k:lr:layer (k=0 is frozen RELISH; its lr is ignored; "
                             "the layer defaults to the package's)")
    parser.add_argument("--summarise", action="store_true")
    args = parser.parse_args(argv)
    if args.summarise:
        print(summarise())
        return 0
    for pair in args.grid:
        k, lr, *layer = pair.split(":")
        read = (int(layer[0]) if layer[0].lstrip("-").isdigit() else float(layer[0])) if layer \
            else None
        row = run(args.corpus, args.seed, int(k), float(lr), args.backbone, read)
        print(json.dumps(row), flush=True)
        with RUNS.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
