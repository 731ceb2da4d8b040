"""The ``relish`` command: ``demo`` (RELISH vs TF-IDF + Ridge on VADER), and ``fit``,
``predict`` and ``evaluate`` on CSV, TSV, Parquet or JSON Lines files."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ._backbones import DEFAULT_BACKBONE
from ._cli_commands import add_commands
from ._cli_tables import CommandError


def _non_negative(text: str) -> int:
    """argparse type for --verbose: refused when parsed, not after the baseline has run."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _split(n: int, n_train: int, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    # A negative count sliced from the end: -10 trained on all but 10 texts, tested on none.
    for flag, count in (("--n-train", n_train), ("--n-test", n_test)):
        if count < 2:
            raise SystemExit(f"{flag} must be at least 2 (a correlation needs two texts), "
                             f"got {count}.")
    if not 0 <= seed < 2**32:  # numpy's own message did not name the flag
        raise SystemExit(f"--seed must be between 0 and 2**32 - 1, got {seed}.")
    if n_train + n_test > n:
        raise SystemExit(f"--n-train + --n-test ({n_train + n_test}) exceeds the {n} texts.")
    order = np.random.RandomState(seed).permutation(n)
    return order[:n_train], order[n_train : n_train + n_test]


def _tfidf_ridge():
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline

    return make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True),
        RidgeCV(alphas=np.logspace(-2, 2, 9)),
    )


def _format_table(rows: list[tuple[str, dict[str, float], float]]) -> str:
    width = max([32, *(len(name) + 1 for name, _, _ in rows)])  # backbone names run long
    header = (f"{'method':<{width}} {'Pearson':>8} {'Spearman':>9} {'NRMSE':>7} {'R2':>7} "
              f"{'time (s)':>9}")
    lines = [header, "-" * len(header)]
    for name, scores, seconds in rows:
        lines.append(
            f"{name:<{width}} {100 * scores['pearson']:8.1f} {100 * scores['spearman']:9.1f} "
            f"{100 * scores['nrmse']:7.1f} {scores['r2']:7.3f} {seconds:9.1f}"
        )
    return "\n".join(lines)


def demo(args: argparse.Namespace) -> int:
    from . import RelishTextRegressor
    from .datasets import load_vader
    from .metrics import regression_report

    data = load_vader(args.corpus)
    texts, target = data.data, data.target
    train, test = _split(len(texts), args.n_train, args.n_test, args.seed)
    X_train, X_test = [texts[i] for i in train], [texts[i] for i in test]
    y_train, y_test = target[train], target[test]
    print(
        f"VADER {args.corpus} (Hutto & Gilbert, ICWSM 2014): {len(X_train)} train / "
        f"{len(X_test)} test texts, human sentiment on -4..+4 (seed {args.seed})."
    )

    rows = []
    start = time.perf_counter()
    baseline = _tfidf_ridge().fit(X_train, y_train)
    rows.append(("TF-IDF + Ridge", regression_report(y_test, baseline.predict(X_test)),
                 time.perf_counter() - start))

    print(f"RELISH on {args.backbone} (frozen; first use converts/loads the backbone)...")
    start = time.perf_counter()
    model = RelishTextRegressor(args.backbone, random_state=args.seed, verbose=args.verbose)
    model.fit(X_train, y_train)
    rows.append((f"RELISH ({args.backbone.split('/')[-1]})",
                 regression_report(y_test, model.predict(X_test)),
                 time.perf_counter() - start))

    print()
    print(_format_table(rows))
    print("\nPearson, Spearman, NRMSE (RMSE / target range) x100 on the held-out texts; "
          "time is fit + predict, backbone load and featurization included.")
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    # The package's advice names Python parameters; here they are --param settings.
    message = str(message).replace("intervals='cv'", "--param intervals=cv")
    print(f"relish: warning: {message}", file=sys.stderr if file is None else file)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so it unwinds as Ctrl-C does (a subclass of
    KeyboardInterrupt: what the package does for Ctrl-C, it does for this)."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM (a scheduler's stop, a plain ``kill``) ended Python without unwinding, so
    the temporary file of an output being written stayed beside it, hundreds of MB."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is signal.SIG_IGN):
        # Signal handlers belong to the main thread; and a SIGTERM the parent chose to
        # ignore (nohup-like wrappers) stays ignored, as Python leaves an ignored SIGINT.
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="relish", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser(
        "demo", help="RELISH vs TF-IDF + Ridge on VADER sentiment data, with a metrics table"
    )
    demo_parser.add_argument("--corpus", default="tweets",
                             choices=["tweets", "nyt", "movies", "amazon"])
    demo_parser.add_argument("--backbone", default=DEFAULT_BACKBONE)
    demo_parser.add_argument("--n-train", type=int, default=2000)
    demo_parser.add_argument("--n-test", type=int, default=1000)
    demo_parser.add_argument("--seed", type=int, default=0)
    demo_parser.add_argument("--verbose", type=_non_negative, default=1)
    demo_parser.set_defaults(run=demo)
    add_commands(commands)
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings(), _sigterm_unwinds():
            # One line each, in the command's voice: Python's format printed the source
            # line of the package that raised it, which means nothing to a shell user.
            warnings.showwarning = _show_warning
            return args.run(args)
    except Terminated:
        print("relish: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("relish: interrupted", file=sys.stderr)
        return 130
    except (CommandError, ValueError, TypeError, OSError) as error:
        # One line that names the problem; the model, file or column is in the message.
        print(f"relish: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
