"""The report half of ``benchmarks/speed.py``: its tables, the machine, the contention check."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from _machine import cpu_model  # benchmarks/ is on sys.path when run as a script


@dataclass(frozen=True)
class Settings:
    """What every method shared, named in the tables' headings."""

    batch_size: int
    max_length: int  # what the padded baseline pads to
    grid: dict[str, list[float]]
    n_folds: int


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    cells = [[str(c) for c in row] for row in rows]
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def short(backbone: str) -> str:
    return backbone.rsplit("/", 1)[-1]


def mib(n_bytes: float) -> str:
    return f"{n_bytes / 1024**2:.1f}"


@dataclass
class BackboneReport:
    """Everything measured on one backbone, as table rows."""

    backbone: str
    load_s: float = 0.0
    featurization: list[list[object]] = field(default_factory=list)
    memory: list[object] = field(default_factory=list)
    grid: list[list[object]] = field(default_factory=list)
    latency: list[list[object]] = field(default_factory=list)


def busy_seconds() -> tuple[float, int]:
    """CPU seconds all processes have spent busy since boot, and the CPUs they ran on.

    Read from /proc/stat, which counts the CPUs this machine (or container) sees; (0, 1)
    where it is missing, which reports no contention rather than failing.
    """
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return 0.0, 1
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, lines[0].split()[1:9])
    n_cpus = sum(1 for line in lines if line.startswith("cpu") and line[3].isdigit())
    busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    return busy, max(1, n_cpus)

def contention_lines(busy_start: float, own_start: float, wall_start: float) -> list[str]:
    """Bullets on how much CPU other processes took while this one ran, and a warning.

    With one thread per core, every parallel torch op waits for all its threads; when
    another process holds a core, that is a scheduler time slice (~ms) per op, and small
    ops (the head's training) run up to ~100x slower. So the CPU time other processes used
    during the run (whole-system busy time minus this process's own) is reported.
    """
    busy_end, n_cpus = busy_seconds()
    others = (busy_end - busy_start) - (time.process_time() - own_start)
    share = max(0.0, others) / ((time.perf_counter() - wall_start) * n_cpus)
    lines = [f"- other processes used {share:.0%} of the machine's CPU time during the run"]
    if share > 0.1:
        lines.append("- **warning: the machine was busy during this run; timings are "
                     "unreliable, rerun on a quiet machine**")
    return lines


# -- report ----------------------------------------------------------------------------------
def machine_info() -> list[str]:
    """CPU, cores, load, torch and GPU, as Markdown bullets (call before the work starts)."""
    cpu = cpu_model()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return [
        f"- CPU: {cpu}, {os.cpu_count()} logical cores "
        f"(load average at start: {os.getloadavg()[0]:.2f})",
        f"- torch {torch.__version__}, {torch.get_num_threads()} intra-op thread(s); "
        f"Python {platform.python_version()}",
        f"- GPU: {gpu}",
    ]


def render(reports: list[BackboneReport], args: argparse.Namespace, n_texts: int,
           avg_chars: float, settings: Settings) -> str:
    batch_size, max_length, grid, n_folds = (settings.batch_size, settings.max_length,
                                              settings.grid, settings.n_folds)
    padded = "" if args.no_padded else (
        f"Padded baseline uses max_length={max_length}, as the paper's code did; ")
    parts = [
        f"### Featurization of {n_texts} VADER tweets (mean {avg_chars:.0f} characters), "
        f"batch size {batch_size}, median of {args.repeats} run(s) after one warm-up batch",
        "",
        padded + "the package and the floor use dynamic padding (max_length=512, no tweet is "
        "that long). Backbone load times (not included): "
        + ", ".join(f"{short(r.backbone)} {r.load_s:.1f} s" for r in reports) + ".",
        "",
        markdown_table(["backbone", "method", "seconds", "texts/s", "x floor", "note"],
                       [row for r in reports for row in r.featurization]),
    ]
    if any(r.memory for r in reports):
        parts += [
            "",
            f"### Token-state cache memory (after featurizing the {n_texts} tweets)",
            "",
            markdown_table(
                ["backbone", "entries", "d", "tokens/text", "cache MiB per 1,000 texts (fp16)",
                 f"padded fp32 @{max_length} MiB per 1,000", "padded / cache",
                 "cold featurize s", "all-hit featurize ms"],
                [r.memory for r in reports if r.memory]),
        ]
    if any(r.grid for r in reports):
        parts += [
            "",
            f"### GridSearchCV: {len(grid['lr']) * len(grid['n_iterations'])} candidates "
            f"({grid}) x {n_folds} folds, max_epochs={args.max_epochs}, "
            "early_stopping=False, n_jobs=1",
            "",
            markdown_table(
                ["backbone", "cache", "texts", "fits", "wall s", "llm_texts", "expected",
                 "LLM passes per text", "best CV R²"],
                [row for r in reports for row in r.grid]),
            "",
            f"### predict latency on one text, warm backbone (fitted on {args.grid_n} tweets)",
            "",
            markdown_table(["backbone", "text", "calls", "median ms", "min ms", "max ms"],
                           [row for r in reports for row in r.latency]),
        ]
    return "\n".join(parts) + "\n"


def write_results(body: str, machine: list[str], path: Path, quick: bool) -> None:
    header = "" if path.exists() else "# Benchmark results\n"
    section = "\n".join([
        f"\n## Speed, {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}"
        + (" (--quick smoke test: not representative)" if quick else ""),
        "",
        f"Command: `{shlex.join(sys.orig_argv)}`",
        "",
        *machine,
        "",
        body,
    ])
    with path.open("a", encoding="utf-8") as handle:
        handle.write(header + section)
