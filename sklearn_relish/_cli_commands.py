"""``relish fit``, ``relish predict`` and ``relish evaluate``: RELISH for people who live in
CSV files. Each reads a table, validates the columns it needs before any model loads, and
writes its output atomically, never over an existing file without ``--force``."""

from __future__ import annotations

import argparse
import ast
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ._cli_tables import (
    READERS,
    CommandError,
    columns,
    file_kind,
    read_table,
    refuse_to_overwrite,
    refuse_unwritable_tsv_cells,
    row_error,
    row_label,
    text_columns,
    write_new_file,
    write_table,
)

_BOOLEANS = {"true": True, "yes": True, "on": True, "1": True,
             "false": False, "no": False, "off": False, "0": False}


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """``["lr=1e-3", "backbone=org/model"]`` -> ``{"lr": 0.001, "backbone": "org/model"}``."""
    from . import RelishTextRegressor

    valid = RelishTextRegressor().get_params()
    params = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise CommandError(f"--param {pair!r}: write it as name=value")
        if name not in valid:
            raise CommandError(f"--param {name!r}: not a parameter of RelishTextRegressor; "
                               f"valid: {', '.join(sorted(valid))}")
        if isinstance(valid[name], bool) and raw.strip().lower() in _BOOLEANS:
            # A shell user writes early_stopping=false as often as False.
            params[name] = _BOOLEANS[raw.strip().lower()]
            continue
        try:
            params[name] = ast.literal_eval(raw)  # numbers, True/False/None, lists
        except (ValueError, SyntaxError, TypeError):  # TypeError: {[1]: 2}, unhashable
            params[name] = raw  # plain words: a backbone id, "cqr", "cpu"
    try:
        # Checked here, so a bad value is named as the --param it came from, not as a
        # problem of the data file (which every error of fit() is prefixed with).
        RelishTextRegressor(**params)._validate_params()
    except (ValueError, TypeError) as error:
        given = ", ".join(f"{name}={params[name]!r}" for name in params)
        raise CommandError(f"--param ({given}): {error}") from None
    return params


def _numeric(targets: Any, path: str, role: str = "target") -> Any:
    """Columns as finite numbers; a cell that is not one (or is empty) is named by its row
    and column.

    A CSV column with one word in it is read as text throughout, so the check is done
    here, per cell, rather than left to the estimator (which would see only strings).
    """
    import pandas

    numbers = targets.apply(pandas.to_numeric, errors="coerce")
    # True/False (a CSV column of them, JSON booleans) would count as 1/0, where the
    # text 'True' beside numbers is refused: refused alike.
    booleans = targets.apply(  # per column: DataFrame.map needs pandas 2.1
        lambda column: column.map(lambda cell: isinstance(cell, bool | np.bool_))
    ).to_numpy(bool)
    bad = ~np.isfinite(numbers.to_numpy(float)) | booleans
    if bad.any():
        row, col = np.argwhere(bad)[0]
        cell = targets.iat[row, col]
        shown = repr(cell) if isinstance(cell, str) else str(cell)  # inf, not np.float64(inf)
        what = "empty" if pandas.isna(cell) else f"{shown}, not a finite number"
        raise CommandError(
            f"{path}: {row_label(path, row)}: {role} {targets.columns[col]!r} is {what}")
    return numbers


def _text_names(args: argparse.Namespace) -> list[str]:
    """``--text`` and ``--text-pair``: one column read twice would pair each text with
    itself (pandas refused it as a file without unique column names)."""
    if args.text_pair is not None and args.text_pair == args.text:
        raise CommandError(f"--text and --text-pair name the same column ({args.text!r}); "
                           "a pair needs two columns")
    return [args.text] + ([args.text_pair] if args.text_pair else [])


def fit(args: argparse.Namespace) -> int:
    from . import RelishTextRegressor, save_model

    params = parse_params(args.param)
    if len(set(args.target)) != len(args.target):
        # A model of two copies of one target predicted one column under one name twice.
        raise CommandError(f"--target names a column twice: {args.target}")
    names = _text_names(args)
    table = read_table(args.data, text_columns=names)
    texts = text_columns(table, names, args.data)
    targets = _numeric(columns(table, args.target, args.data, "target"), args.data)
    y = targets.iloc[:, 0] if len(args.target) == 1 else targets
    weights = (_numeric(columns(table, [args.sample_weight], args.data, "sample-weight"),
                        args.data, "sample weight").iloc[:, 0]
               if args.sample_weight else None)
    if weights is not None and (weights < 0).any():
        row = int(np.flatnonzero(weights.to_numpy() < 0)[0])
        raise CommandError(f"{args.data}: {row_label(args.data, row)}: sample weight "
                           f"{args.sample_weight!r} is {weights.iat[row]}, below 0")
    # Before hours of fitting; --force never replaces the training data itself. A
    # table's name is refused first: "exists, pass --force" invited replacing a table.
    if Path(args.output).suffix.lower() in READERS:  # -o predictions.csv, meant for predict
        raise CommandError(f"{args.output}: fit writes a model file (a pickle), not a "
                           "table; name it e.g. model.joblib")
    output = refuse_to_overwrite(args.output, args.force, inputs=[args.data])
    params.setdefault("verbose", 0 if args.quiet else 1)
    try:
        model = RelishTextRegressor(**params).fit(texts, y, sample_weight=weights)
    except (ValueError, TypeError) as error:
        raise row_error(error, args.data) from None
    save_model(model, output, overwrite=args.force)
    scored = 0 if model.calibration_scores_ is None else len(model.calibration_scores_)
    calibration = (f"{scored} texts scored out of fold over {model.interval_folds} folds"
                   if model.interval_method_ in ("cv", "cv+") else f"{scored} texts held out")
    print(f"fitted on {len(table)} rows of {args.data} ({model.n_iter_} epochs, best "
          f"{model.best_iteration_}; {calibration} for intervals); saved to {output}")
    return 0


def _model_and_texts(args: argparse.Namespace,
                     verbatim: bool = False) -> tuple[Any, Any, Any]:
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    from . import RelishTextRegressor, load_model

    try:
        model = load_model(args.model)
    except ValueError as error:
        if "is not a model file" not in str(error):
            raise
        # Most often the data named first: say which argument is which.
        raise CommandError(f"{error} The model comes first: relish {args.command} MODEL "
                           "DATA") from None
    # save_model keeps any estimator (a Pipeline, an unfitted model): the commands run
    # a fitted RelishTextRegressor, and read its text and target columns off it.
    if not isinstance(model, RelishTextRegressor):
        raise CommandError(
            f"{args.model} holds a {type(model).__name__}, not a RelishTextRegressor; the "
            "relish commands run models written by `relish fit` or a RelishTextRegressor "
            "saved with save_model (use other estimators from Python)")
    try:
        check_is_fitted(model)
    except NotFittedError:
        raise CommandError(f"{args.model} holds a RelishTextRegressor that was never "
                           "fitted; fit it first (relish fit)") from None
    if args.quiet:  # the model keeps the verbosity it was fitted with
        model.set_params(verbose=0)
    fitted_names = [str(name) for name in getattr(model, "feature_names_in_", [])]
    names = fitted_names
    if args.text_pair and not args.text:
        raise CommandError("--text-pair needs --text (the first text column) as well")
    if args.text:
        names = [args.text] + ([args.text_pair] if args.text_pair else [])
        if fitted_names and len(names) != len(fitted_names):
            raise CommandError(
                f"{args.model} was fitted on {len(fitted_names)} text column(s) "
                f"({', '.join(map(repr, fitted_names))}); --text and --text-pair name "
                f"{len(names)}")
        names = _text_names(args)  # after the count: one column as both texts refused
    if not names:
        raise CommandError(f"{args.model} does not record its text columns; pass --text")
    table = read_table(args.data, text_columns=names, verbatim=verbatim)
    texts = text_columns(table, names, args.data)
    if fitted_names:
        # --text maps this file's columns onto those the model was fitted on, in order.
        texts.columns = fitted_names
    return model, table, texts


def _predict(model: Any, texts: Any, path: str, coverage: float | None = None):
    try:
        if coverage is None:
            return model.predict(texts)
        with warnings.catch_warnings():  # the command's own note says it in its terms
            warnings.filterwarnings("ignore", message="The bounds are infinite")
            return model.predict_interval(texts, coverage=coverage)
    except (ValueError, TypeError) as error:
        raise row_error(error, path) from None


def _target_names(model: Any) -> list[str]:
    names = getattr(model, "target_names_", None)
    if names is not None:
        return list(names)
    return ["target"] if np.ndim(model.y_mean_) == 0 else [
        f"target_{i}" for i in range(len(model.y_mean_))]


def predict(args: argparse.Namespace) -> int:
    # Verbatim: the table is written back with the predictions, its cells as they were.
    from ._intervals import check_coverage

    model, table, texts = _model_and_texts(args, verbatim=True)
    # Everything that can be refused is refused before the predictions are computed.
    output = refuse_to_overwrite(args.output, args.force, inputs=[args.data, args.model])
    if file_kind(output) == "tsv":  # the predictions add numbers only: check the input's cells
        refuse_unwritable_tsv_cells(table, output)
    if args.coverage is not None:
        try:
            check_coverage(args.coverage)
        except (ValueError, TypeError) as error:
            raise CommandError(f"--coverage: {error}") from None
        if getattr(model, "calibration_scores_", None) is None:
            raise CommandError(
                f"{args.model} has no prediction intervals (it was fitted without a "
                "calibration hold-out, e.g. early_stopping=False); drop --coverage or refit")
    names = _target_names(model)
    suffixes = [""] if len(names) == 1 else [f"_{name}" for name in names]
    added = [f"prediction{suffix}" for suffix in suffixes]
    if args.coverage is not None:
        added += [f"{bound}{suffix}" for suffix in suffixes for bound in ("lower", "upper")]
    taken = [name for name in added if name in table.columns]
    if taken:
        raise CommandError(f"{args.data} already has a column {taken[0]!r}, which the "
                           "predictions would overwrite; rename it")
    predictions = _predict(model, texts, args.data).reshape(len(table), -1)
    result = table.copy()
    for j, suffix in enumerate(suffixes):
        result[f"prediction{suffix}"] = predictions[:, j]
    if args.coverage is not None:
        bounds = _predict(model, texts, args.data, args.coverage).reshape(len(table), -1, 2)
        for j, suffix in enumerate(suffixes):
            result[f"lower{suffix}"], result[f"upper{suffix}"] = bounds[:, j, 0], bounds[:, j, 1]
    write_table(result, output, args.force)
    print(f"{len(result)} predictions written to {output}")
    if args.coverage is not None and not np.all(np.isfinite(bounds)):
        # Not an error (the bounds are honest), but a column of inf surprises in a sheet.
        n_scores = len(model.calibration_scores_)
        # A fold-calibrated model already calibrates on every training text.
        folds = model._interval_method() in ("cv", "cv+")
        print(f"note: the bounds are infinite: {n_scores} calibration texts certify a "
              f"coverage of at most {n_scores / (n_scores + 1):.3f}, below {args.coverage}; "
              "lower --coverage, or refit on more texts"
              + ("" if folds else " (or with --param intervals=cv)"), file=sys.stderr)
    return 0


def evaluate(args: argparse.Namespace) -> int:
    from .metrics import regression_report

    model, table, texts = _model_and_texts(args)
    targets = args.target or list(getattr(model, "target_names_", []))
    if not targets:
        raise CommandError(f"{args.model} does not record its target column; pass --target")
    outputs = _outputs_for(targets, getattr(model, "target_names_", None),
                           len(_target_names(model)), args.model)
    truth = _numeric(columns(table, targets, args.data, "target"), args.data).to_numpy(float)
    if len(table) < 2:  # every metric would print nan
        raise CommandError(f"{args.data}: has {len(table)} row; the metrics compare at "
                           "least 2")
    if args.plot and Path(args.plot).suffix.lower() != ".png":
        raise CommandError(f"--plot {args.plot}: the plot is a PNG; name it e.g. "
                           f"{Path(args.plot).stem}.png")
    # The default plot is named after the data and the model, so evaluating a second
    # model on the same file draws its own. A default plot that exists is kept and the
    # metrics still printed (evaluating only reads); a --plot that exists is refused
    # before the predictions, like every output the user names.
    default_plot = Path(f"{Path(args.data).stem}_{Path(args.model).stem}_predicted_vs_true.png")
    plot, not_drawn = None, None
    if args.plot:
        plot = refuse_to_overwrite(args.plot, args.force, inputs=[args.data, args.model])
    elif os.path.lexists(default_plot) and not args.force:
        not_drawn = f"{default_plot} exists (--force replaces it, --plot names another file)"
    else:
        try:
            plot = refuse_to_overwrite(default_plot, args.force,
                                       inputs=[args.data, args.model])
        except CommandError as error:  # a folder it cannot write: the metrics still print
            not_drawn = f"{error} (--plot names another file)"
    predictions = _predict(model, texts, args.data).reshape(len(table), -1)[:, outputs]
    print(f"{'target':<16} {'Pearson':>8} {'Spearman':>9} {'NRMSE':>7} {'R2':>7}   (x100 but R2)")
    for j, name in enumerate(targets):
        report = regression_report(truth[:, j], predictions[:, j])
        print(f"{name:<16} {100 * report['pearson']:8.1f} {100 * report['spearman']:9.1f} "
              f"{100 * report['nrmse']:7.1f} {report['r2']:7.3f}")
    if plot is None:
        print(f"predicted against true values: not drawn, {not_drawn}")
        return 0
    _scatter(truth, predictions, targets, plot, args.force)
    print(f"predicted against true values: {plot}")
    return 0


def _outputs_for(targets: list[str], fitted: Any, n_outputs: int, model_path: str) -> list[int]:
    """Which of the model's outputs each ``--target`` column is compared with.

    By name when the model records its target names and every column is one of them (any
    subset, any order); by position when none is and there is one column per output (the
    same targets under new column names), or when the model records no names. Anything
    else is ambiguous: pairing by position would silently score one target's predictions
    against another's truth.
    """
    if len(set(targets)) != len(targets):
        raise CommandError(f"--target names a column twice: {targets}")
    named = [] if fitted is None else list(fitted)
    if named and all(name in named for name in targets):
        return [named.index(name) for name in targets]
    if len(targets) == n_outputs and not any(name in named for name in targets):
        return list(range(n_outputs))
    what = f", {named}" if named else " (its target columns are not recorded)"
    raise CommandError(
        f"{model_path} predicts {n_outputs} target(s){what}; pass --target with "
        f"names among those, or one column per target in that order (got {targets})"
    )


def _scatter(truth, predictions, names: list[str], path: Path, force: bool) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")  # no screen needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise CommandError("the plot needs matplotlib: pip install 'sklearn-relish[cli]'") from None
    figure, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 4.2), squeeze=False)
    for j, (axis, name) in enumerate(zip(axes[0], names, strict=True)):
        axis.scatter(truth[:, j], predictions[:, j], s=6, alpha=0.5)
        low, high = min(truth[:, j].min(), predictions[:, j].min()), max(
            truth[:, j].max(), predictions[:, j].max())
        axis.plot([low, high], [low, high], color="grey", linewidth=1)
        axis.set(xlabel=f"true {name}", ylabel=f"predicted {name}")
    figure.tight_layout()
    try:
        # Checked again at the end: a plot that appeared during the predictions is kept.
        write_new_file(path, force, lambda tmp: figure.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(figure)


def add_commands(commands: Any) -> None:
    """The fit, predict and evaluate subcommands, on ``argparse`` subparsers."""
    fit_parser = commands.add_parser("fit", help="fit RELISH on a table of texts and targets")
    fit_parser.add_argument("data", help="CSV, TSV, Parquet or JSON Lines file")
    fit_parser.add_argument("--text", required=True, help="column of texts")
    fit_parser.add_argument("--text-pair", help="column of second texts, for pairs")
    fit_parser.add_argument("--target", required=True, action="append",
                            help="column of targets (repeat for several)")
    fit_parser.add_argument("--sample-weight", help="column of per-row weights")
    fit_parser.add_argument("-o", "--output", required=True, help="model file to write")
    fit_parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                            help="any RelishTextRegressor parameter, e.g. --param lr=1e-3")
    fit_parser.set_defaults(run=fit)

    predict_parser = commands.add_parser("predict", help="predict with a fitted model")
    predict_parser.add_argument("model")
    predict_parser.add_argument("data")
    predict_parser.add_argument("-o", "--output", required=True,
                                help="the input table with prediction columns added")
    predict_parser.add_argument("--coverage", type=float,
                                help="add lower and upper bounds of this coverage, e.g. 0.9")
    predict_parser.set_defaults(run=predict)

    evaluate_parser = commands.add_parser("evaluate", help="the paper's metrics on a table")
    evaluate_parser.add_argument("model")
    evaluate_parser.add_argument("data")
    evaluate_parser.add_argument("--target", action="append",
                                 help="target column(s) (default: the ones fitted on)")
    evaluate_parser.add_argument(
        "--plot", help="PNG of predicted against true values (default: "
        "DATA_MODEL_predicted_vs_true.png in the current folder, drawn unless it exists)")
    evaluate_parser.set_defaults(run=evaluate)

    for sub in (fit_parser, predict_parser, evaluate_parser):
        sub.add_argument("--force", action="store_true", help="replace existing outputs")
        if sub is not fit_parser:
            sub.add_argument("--text", help="text column (default: the one fitted on); "
                             "another name maps this file's column onto the fitted one")
            sub.add_argument("--text-pair", help="second text column, for pairs (with --text)")
        sub.add_argument("--quiet", action="store_true", help="no progress bars")
