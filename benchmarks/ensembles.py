"""Do averaged RELISH heads beat one head? Seeds and backbones, chosen on validation only.

An ensemble here is what ``sklearn.ensemble.VotingRegressor`` over several
``RelishTextRegressor`` builds: the unweighted mean of the members' predictions. Members
that share a backbone share its token states (the package's cache), so each extra member
costs one head training and no LLM pass.

Protocol, on one corpus and seed of ``quality.py`` (same 80/20 split): 10% of the training
split is set aside as a validation part that no member trains on (each member's own early
stopping holds out 10% of the rest). Every member is fitted once on the rest, with package
defaults but its backbone and ``random_state``; its validation and test predictions are kept
in ``ensembles_runs.jsonl``, so any combination is scored without refitting. The summary
shows each member, the ensembles fixed in advance (all seeds of a backbone, all members)
and the combination with the best validation Pearson; the test Pearson is shown beside
them and plays no part in any choice. Members train on 90% of what the quality rows train on,
so compare rows within this table, not with ``quality.py``'s.

    python benchmarks/ensembles.py --corpus movies --seed 0 --members gemma:0 gemma:1 smollm2:0
    python benchmarks/ensembles.py --summarise        # rewrite RESULTS.md's section
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from quality_data import DEFAULT_CACHE_DIR, load_corpus, split
from quality_report import machine_info, replace_section
from scipy.stats import pearsonr
from sklearn.model_selection import train_test_split

from sklearn_relish._backbones import MINILM, SMOLLM2
from sklearn_relish._embedded import GEMMA3

HERE = Path(__file__).resolve().parent
RUNS = HERE / "ensembles_runs.jsonl"
# A member's alias names its backbone and any setting that differs from the package's
# defaults. "gemma-k2" is the fine-tuned regime chosen on every corpus's seed-0 hold-out
# (top_layers_select.py): Gemma with its 2 blocks under the layer read trained at lr 1e-4.
# "gemma-l75" reads Gemma's layer at three quarters of its depth instead of the middle: a
# member that sees other states, for diversity.
MEMBERS = {"smollm2": (SMOLLM2, {}), "gemma": (GEMMA3, {}), "minilm": (MINILM, {}),
           "gemma-k2": (GEMMA3, {"train_top_layers": 2, "top_layers_lr": 1e-4}),
           "gemma-l75": (GEMMA3, {"layer": 0.75})}
VALIDATION_SHARE = 0.1


def parts(corpus_name: str, seed: int, n_texts: int | None) -> tuple:
    """(corpus, fit part, validation part, test part) of the seed's split."""
    corpus = load_corpus(corpus_name, n_texts)
    train, test = split(len(corpus.texts), seed)
    fit, valid = train_test_split(train, test_size=VALIDATION_SHARE, random_state=seed)
    return corpus, fit, valid, test


def fit_member(corpus_name: str, seed: int, member: str, n_texts: int | None) -> dict:
    from sklearn_relish import RelishTextRegressor

    alias, random_state = member.split(":")
    corpus, fit, valid, test = parts(corpus_name, seed, n_texts)
    texts = corpus.texts
    backbone, settings = MEMBERS[alias]
    model = RelishTextRegressor(backbone, random_state=int(random_state),
                                cache_dir=str(DEFAULT_CACHE_DIR.expanduser()), **settings)
    # Featurize first, outside the clock: fit seconds are training only (the head, and
    # the trained blocks where the member has them).
    model._featurizer_to_train_on().transform([texts[i] for i in fit], "single")
    start = time.perf_counter()
    model.fit([texts[i] for i in fit], corpus.y[fit])
    fit_s = time.perf_counter() - start
    return {"corpus": corpus_name, "seed": seed, "n_texts": n_texts, "member": member,
            "backbone": model.backbone, "settings": settings, "n_fit": len(fit),
            "valid_index": [int(i) for i in valid], "fit_s": fit_s,
            "valid_pred": [round(float(v), 5) for v in model.predict([texts[i] for i in valid])],
            "test_pred": [round(float(v), 5) for v in model.predict([texts[i] for i in test])],
            "machine": machine_info(),
            "command": shlex.join(["python", "benchmarks/ensembles.py", *sys.argv[1:]]),
            "finished": datetime.datetime.now().isoformat(timespec="seconds")}


def read_rows(runs: Path) -> list[dict]:
    if not runs.exists():
        return []
    return [json.loads(line) for line in runs.read_text().splitlines() if line.strip()]


def candidates(members: list[str]) -> list[tuple[str, ...]]:
    """Every single member, and every combination of two or more of them."""
    return [combo for size in range(1, len(members) + 1)
            for combo in itertools.combinations(sorted(members), size)]


def fixed_groups(members: list[str]) -> dict[tuple[str, ...], str]:
    """The ensembles one would pick without looking: all seeds of a backbone, everything."""
    groups = {}
    for alias in sorted({m.split(":")[0] for m in members}):
        seeds = tuple(m for m in sorted(members) if m.split(":")[0] == alias)
        if len(seeds) > 1:
            groups[seeds] = f"all {len(seeds)} {alias} seeds"
    everything = tuple(sorted(members))
    if len(everything) > 1 and everything not in groups:
        groups[everything] = f"all {len(everything)} members"
    return groups


def score(combo: tuple[str, ...], rows: dict[str, dict], y_valid: np.ndarray,
          y_test: np.ndarray) -> tuple[float, float, float]:
    """(validation Pearson, test Pearson, summed fit seconds) of the members' mean."""
    valid = np.mean([rows[m]["valid_pred"] for m in combo], axis=0)
    test = np.mean([rows[m]["test_pred"] for m in combo], axis=0)
    return (100 * pearsonr(valid, y_valid)[0], 100 * pearsonr(test, y_test)[0],
            sum(rows[m]["fit_s"] for m in combo))


def weighted(rows: dict[str, dict], y_valid: np.ndarray, y_test: np.ndarray
             ) -> tuple[dict[str, float], float, float, float]:
    """Weights for every member, fitted on the validation part: non-negative least
    squares of its ratings on the members' predictions, scaled to sum to 1 (what
    ``VotingRegressor(weights=...)`` takes). Returns the weights above 0.005, the
    validation Pearson (in-sample: the weights were fitted on it), the test Pearson
    and the summed fit seconds of the members that weigh anything."""
    from sklearn.linear_model import LinearRegression

    names = sorted(rows)
    valid = np.array([rows[m]["valid_pred"] for m in names]).T
    test = np.array([rows[m]["test_pred"] for m in names]).T
    coef = LinearRegression(positive=True).fit(valid, y_valid).coef_
    weights = coef / coef.sum()
    kept = {name: float(w) for name, w in zip(names, weights, strict=True) if w > 0.005}
    return (kept, 100 * pearsonr(valid @ weights, y_valid)[0],
            100 * pearsonr(test @ weights, y_test)[0], sum(rows[m]["fit_s"] for m in kept))


def summarise(runs: Path) -> str:
    rows = read_rows(runs)
    commands = sorted({r["command"] for r in rows})
    # The machines that fitted the rows, not the one that summarises them.
    machines = sorted({r.get("machine", "not recorded") for r in rows})
    out = ["## Ensembles", "",
           f"Rows: {', '.join(f'`{c}`' for c in commands)}. Table: `python "
           f"benchmarks/ensembles.py --summarise`. Fitted on: {'; '.join(machines)}. "
           "Members are RELISH with package defaults but the backbone and random_state "
           "(`gemma-k2`: Gemma with 2 blocks under the head trained at lr 1e-4, the "
           "configuration top_layers_select.py chose on the seed-0 hold-outs; "
           "`gemma-l75`: Gemma's layer at three quarters of its depth), "
           "each fitted on 90% of the seed's training "
           "split; the other 10% is the validation part that scores ensembles (never "
           "trained on). An ensemble is the mean of its members' predictions, as "
           "`VotingRegressor` computes it. Head fit seconds exclude featurization (states "
           "cached first); with trained blocks they are the blocks' and the head's training.", ""]
    # (corpus, n_texts) -> {seed: (trained pair's test, chosen's, weighted's, one rater)}
    per_seed = {}
    for corpus_name, seed, n_texts in sorted({(r["corpus"], r["seed"], r["n_texts"])
                                              for r in rows}, key=str):
        corpus, _, valid, test = parts(corpus_name, seed, n_texts)
        mine = {r["member"]: r for r in rows
                if (r["corpus"], r["seed"], r["n_texts"]) == (corpus_name, seed, n_texts)}
        for member, row in mine.items():
            # Predictions are scored against today's split: a changed corpus or split
            # must not silently pair them with other texts' ratings.
            if row["valid_index"] != [int(i) for i in valid]:
                raise ValueError(f"{member} on {corpus_name} seed {seed} was fitted on another "
                                 "validation split than this code makes; refit its row.")
        scores = {combo: score(combo, mine, corpus.y[valid], corpus.y[test])
                  for combo in candidates(list(mine))}
        chosen = max(scores, key=lambda combo: scores[combo][0])
        shown = {(m,): "one head" for m in sorted(mine)} | fixed_groups(list(mine))
        shown[chosen] = (shown.get(chosen, "") + "; " if chosen in shown else "") + \
            f"best validation Pearson of all {len(scores)} combinations"
        pair = next((combo for combo, what in shown.items() if "gemma-k2 seeds" in what), None)
        weights, weighted_valid, weighted_test, weighted_s = weighted(
            mine, corpus.y[valid], corpus.y[test])
        per_seed.setdefault((corpus_name, n_texts), {})[seed] = (
            scores[pair][1] if pair else float("nan"), scores[chosen][1], weighted_test,
            rater_on(corpus_name, test) if n_texts is None else float("nan"))
        subsample = f", {n_texts}-text subsample" if n_texts else ""
        out += [f"### {corpus_name}, seed {seed}{subsample} ({len(valid)} validation / "
                f"{len(test)} test texts)", "",
                "| members (backbone:random_state) | what | validation Pearson ↑ | "
                "test Pearson | head fits (s) |", "|---|---|---:|---:|---:|"]
        for combo, what in shown.items():
            v, t, seconds = scores[combo]
            mark = "**" if combo == chosen else ""
            out.append(f"| {' + '.join(combo)} | {what} | {mark}{v:.1f}{mark} | {t:.1f} | "
                       f"{seconds:.0f} |")
        out += [f"| {' + '.join(f'{w:.2f} {m}' for m, w in weights.items())} | weights "
                f"fitted on the validation part | ({weighted_valid:.1f}, fitted on it) | "
                f"{weighted_test:.1f} | {weighted_s:.0f} |", ""]
    return "\n".join(out + over_seeds(per_seed))


def rater_on(corpus_name: str, test: np.ndarray) -> float:
    """One human rater's Pearson with the ground truth on these test texts (human_rater.py)."""
    from human_rater import rater_agreement, read_ratings, sdist_path

    from sklearn_relish.datasets import load_vader

    bunch = load_vader(corpus_name)
    by_id = read_ratings(sdist_path(), corpus_name)
    return rater_agreement([by_id[i] for i in bunch.ids], bunch.target, test)[0]


def over_seeds(per_seed: dict) -> list[str]:
    """Each corpus's splits side by side, beside one human rater on the same test texts."""
    out = ["### Over the seeds", "",
           "Test Pearson per seed's split, and mean ± sample std (ddof=1) where all three "
           "splits have run. \"Trained pair\": the two `gemma-k2` members averaged, fixed in "
           "advance; \"validation's choice\": the combination with the best validation "
           "Pearson; \"validation-weighted\": every member, weighted by non-negative least "
           "squares on the validation part (added after the validation's choice was level "
           "with one rater on movies; a test of one more idea, not a choice among them). "
           "One human rater: one rating drawn at random per text against the "
           "ground truth, on the same test texts (`benchmarks/human_rater.py`).", "",
           "| corpus | what | seed 0 | seed 1 | seed 2 | mean ± std |",
           "|---|---|---:|---:|---:|---:|"]
    for (corpus_name, n_texts), seeds in sorted(per_seed.items(), key=str):
        if n_texts is not None:
            continue
        for k, what in enumerate(("trained pair", "validation's choice",
                                  "validation-weighted", "one human rater")):
            values = [seeds[s][k] if s in seeds else float("nan") for s in (0, 1, 2)]
            cells = " | ".join("" if np.isnan(v) else f"{v:.1f}" for v in values)
            summary = ("" if np.isnan(values).any()
                       else f"{np.mean(values):.1f} ± {np.std(values, ddof=1):.1f}")
            out.append(f"| {corpus_name} | {what} | {cells} | {summary} |")
    return [*out, ""]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="movies")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--members", nargs="*", default=["gemma:0", "gemma:1", "smollm2:0"],
                        help=f"alias:random_state, alias one of {sorted(MEMBERS)}")
    parser.add_argument("--n-texts", type=int, default=None,
                        help="a fixed subsample of the corpus (smoke runs); default: all")
    parser.add_argument("--runs", type=Path, default=RUNS, help=f"default: {RUNS.name}")
    parser.add_argument("--summarise", action="store_true",
                        help="rewrite the '## Ensembles' section of RESULTS.md from the rows")
    parser.add_argument("--no-write", action="store_true", help="print the summary instead")
    args = parser.parse_args(argv)
    for member in args.members:
        alias, _, random_state = member.partition(":")
        if alias not in MEMBERS or not random_state.isdigit():
            parser.error(f"member {member!r} is not alias:random_state with alias one "
                         f"of {sorted(MEMBERS)}")
    if args.summarise:
        section = summarise(args.runs)
        if args.no_write or args.runs != RUNS:
            print(section)
        else:
            replace_section(HERE / "RESULTS.md", section, heading="## Ensembles")
            print(f"Wrote the Ensembles section of {HERE / 'RESULTS.md'}.")
        return 0
    done = {(r["corpus"], r["seed"], r["n_texts"], r["member"]) for r in read_rows(args.runs)}
    for member in args.members:
        if (args.corpus, args.seed, args.n_texts, member) in done:
            print(f"{member}: already in {args.runs}", flush=True)
            continue
        row = fit_member(args.corpus, args.seed, member, args.n_texts)
        with args.runs.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(f"{member}: fitted in {row['fit_s']:.0f} s", flush=True)
    print(summarise(args.runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
