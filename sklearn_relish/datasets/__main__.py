"""Prepare the datasets so that they can be loaded offline.

``make install`` runs ``python -m sklearn_relish.datasets``: it downloads the
VADER sdist from PyPI if needed, extracts the ground truth into the data home
and prints the size of each corpus.
"""

from __future__ import annotations

import argparse
import sys

from ._vader import _CORPORA, load_vader


def main(argv: list[str] | None = None) -> int:
    """Fetch and prepare all VADER corpora, printing their sizes.

    Parameters
    ----------
    argv : list of str, default=None
        Command-line arguments; ``sys.argv[1:]`` when None.

    Returns
    -------
    status : int
        The exit status: 0 on success, 1 on an error (printed in one line).
    """
    summary = (main.__doc__ or "").partition("\n")[0]  # no docstrings under python -OO
    parser = argparse.ArgumentParser(prog="python -m sklearn_relish.datasets",
                                     description=summary)
    parser.add_argument(
        "--data-home",
        default=None,
        help="folder for the data (default: <sklearn get_data_home()>/sklearn_relish)",
    )
    args = parser.parse_args(argv)
    total = 0
    for corpus in _CORPORA:
        try:
            X, _ = load_vader(corpus, return_X_y=True, data_home=args.data_home)
        except (OSError, ValueError) as error:
            # make install runs this: one line that says what to fix, not a traceback.
            print(f"{parser.prog}: error: {error}", file=sys.stderr)
            return 1
        total += len(X)
        print(f"vader {corpus:<7} {len(X):>6,} texts")
    print(f"vader total   {total:>6,} texts")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
