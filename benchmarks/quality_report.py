"""The quality benchmark's report: its rows summarised into RESULTS.md and a scatter plot.

Reads the JSON-lines rows that ``quality.py`` appends (one per method x config x corpus x
seed), groups them over seeds and renders the "## Quality" section of
``benchmarks/RESULTS.md`` (per-corpus tables, the headline, the ablations) and
``quality_scatter.png``. ``quality.py --summarise`` calls ``summarise``.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from _machine import cpu_model  # benchmarks/ is on sys.path when run as a script
from quality_finetune import BACKBONES as FINETUNE_BACKBONES
from quality_methods import (
    ABLATION_ITERATIONS,
    ABLATION_LOSSES,
    LEGACY,
    METHODS,
    N_ITERATIONS,
    RIDGE_ALPHAS,
    TEST_SIZE,
    Settings,
    ablation_layers,
    baseline_configs,
    finetune_config,
    label,
    method_label,
    package_default,
    relish_config,
    relish_top_config,
    short,
)


# =========================================================================================
# Rows: the JSON-lines log, the saved predictions for the scatter plot, the machine
# =========================================================================================
def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                rows.append(modernise(json.loads(line)))
            except json.JSONDecodeError:  # a line cut by a crash mid-write: rerun it
                continue
    return rows


def modernise(row: dict) -> dict:
    """A row under a legacy backbone id, renamed (its resume key too) to today's name."""
    if row.get("backbone") in LEGACY:
        row["backbone"] = LEGACY[row["backbone"]]
        key = json.loads(row["key"])
        key["backbone"] = row["backbone"]
        row["key"] = json.dumps(key, sort_keys=True)
    return row


def predictions_path(runs_file: Path) -> Path:
    return runs_file.with_name(runs_file.stem + "_predictions.npz")


def machine_info() -> str:
    import torch

    cpu = cpu_model()
    device = (f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available()
              else ", CPU only")
    return (f"{cpu}, {os.cpu_count()} cores (torch uses {torch.get_num_threads()} threads)"
            f"{device}, torch {torch.__version__}, Python {platform.python_version()}")


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
        # Default RELISH on any other backbone that has rows (an opt-in one, say).
        default = json.dumps(self.default_relish, sort_keys=True)
        others = sorted({b for m, b, _, c in self.cells
                         if m == "relish" and c == default and b not in backbones})
        methods = [("relish", b, self.default_relish) for b in backbones + others]
        methods.append(("relish", self.primary, relish_top_config(self.settings)))
        for b in backbones:
            methods += [(m, b, config or None) for config in baseline_configs()
                        for m in ("meanpool_ridge", "meanpool_mlp", "lasttoken_ridge")]
        finetuned = [(m, FINETUNE_BACKBONES[m], finetune_config(m, self.settings))
                     for m in ("finetune", "lora")]
        return methods + finetuned + [("tfidf_ridge", None, None), ("vader", None, None)]

    def corpus_table(self, corpus: str) -> list[str]:
        lines = ["| Method | Pearson ↑ | Spearman ↑ | NRMSE ↓ | Fit (s) |",
                 "|---|---:|---:|---:|---:|"]
        for method, backbone, config in self.main_methods():
            cell = self.cell(method, backbone, corpus, config)
            if cell is None:
                continue
            name = method_label(method, backbone, config) + ("†" if method == "vader" else "")
            primary = method == "relish" and backbone == self.primary
            name = f"**{name}**" if primary and config == self.default_relish else name
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

