"""Tables in and out for the ``relish`` command: CSV, TSV, Parquet and JSON Lines.

Every problem a user can cause (a missing file or column, an empty file, an output that
exists) is a :class:`CommandError` with one line that names it; outputs are written to a
temporary file and renamed into place, so an existing file is never half-overwritten.
"""

from __future__ import annotations

import codecs
import contextlib
import math
import numbers
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ._files import write_atomically
from ._inputs import is_missing

READERS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet",
           ".jsonl": "jsonl", ".ndjson": "jsonl"}


class CommandError(Exception):
    """A problem with the command's input or output, shown as one line (exit status 2)."""


def _pandas():
    try:
        import pandas
    except ImportError:
        raise CommandError(
            "the relish command needs pandas: pip install 'sklearn-relish[cli]'"
        ) from None
    return pandas


def file_kind(path: Path) -> str:
    """The reader for a path's suffix (csv, tsv, parquet, jsonl); an unknown one is named."""
    try:
        return READERS[path.suffix.lower()]
    except KeyError:
        raise CommandError(
            f"{path}: unknown file type {path.suffix!r}; use one of "
            f"{', '.join(sorted(READERS))}"
        ) from None


def read_table(path: str | os.PathLike, text_columns: Iterable[str] = (),
               verbatim: bool = False) -> Any:
    """A non-empty DataFrame read from ``path``, with no NA guessing in CSV and TSV.

    ``text_columns`` of a CSV or TSV are read as strings even where every cell looks like a
    number (codes, years: "007" stays "007", not the integer 7); with ``verbatim`` every
    column is, so a table written back (``relish predict``) keeps the user's cells as they
    were ("02139" and "1.10" unchanged). An empty cell is missing either way.
    """
    pandas = _pandas()
    path = Path(path)
    kind = file_kind(path)
    if not path.is_file():
        raise CommandError(f"{path}: no such file")
    try:
        if kind in ("csv", "tsv"):
            # keep_default_na=False: a text "NA" or "null" is text; an empty cell is
            # missing, so a fit names its row rather than learning from "".
            table = pandas.read_csv(path, sep="\t" if kind == "tsv" else ",",
                                    keep_default_na=False, na_values=[""],
                                    dtype=str if verbatim else dict.fromkeys(text_columns, str),
                                    quoting=_quoting(kind))
        elif kind == "parquet":
            table = pandas.read_parquet(path)
        else:
            table = _read_json_lines(path, pandas)
    except pandas.errors.EmptyDataError:
        raise CommandError(f"{path}: the file is empty") from None
    except ImportError as error:  # parquet without pyarrow
        raise CommandError(f"{path}: {error}") from None
    except UnicodeDecodeError:
        raise CommandError(f"{path}: is not UTF-8 text ({_first_non_utf8(path)}); save it "
                           "as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
    except (ValueError, OSError, pandas.errors.ParserError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        extra = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", reason)
        if extra:  # one row with a trailing separator: pandas' C-parser message
            expected, line, saw = extra.groups()
            raise CommandError(
                f"{path}: line {line} has {saw} fields, but the rows above it have "
                f"{expected} (a trailing separator?{_semicolon_hint(path, kind)}); give "
                "every row one field per column") from None
        raise CommandError(f"{path}: cannot be read as {kind}: {reason}") from None
    if kind in ("csv", "tsv") and not _is_default_index(table.index):
        # pandas takes rows with more fields than the header for an index column and
        # shifts every column left: the texts would be read from the wrong column.
        raise CommandError(
            f"{path}: its rows have more fields than its header names (a trailing "
            f"separator?{_semicolon_hint(path, kind)}); give every row one field per "
            "column")
    if kind == "parquet" and not _is_default_index(table.index):
        table = table.reset_index()  # the stored row ids stay in the written-back table
    if kind in ("csv", "tsv"):
        table.columns = _header(path, kind, len(table.columns))
        if len(table.columns) == 1:
            _refuse_blank_lines(path, kind)
        if kind == "tsv":
            _refuse_csv_quoting(table, path)
    if table.empty:
        raise CommandError(f"{path}: the file has no rows")
    return table


def _refuse_blank_lines(path: Path, kind: str) -> None:
    """In a one-column file a blank line between rows is an empty text, or a stray line:
    pandas skips it, which returned fewer predictions than the file has rows, silently.
    Blank lines at the end (an editor's) are no rows either way. Blank as pandas means it:
    the line itself is empty or whitespace (a quoted ``"  "`` is a text)."""
    import csv

    with open(path, encoding="utf-8-sig", newline="") as file, _no_field_limit():
        lines = _LineRecorder(file)
        reader = csv.reader(lines, delimiter="\t" if kind == "tsv" else ",",
                            quoting=_quoting(kind))
        blank_line, seen_header, start = None, False, 1
        for _ in reader:
            blank = not "".join(lines.taken).strip()
            lines.taken.clear()
            if blank and seen_header and blank_line is None:
                blank_line = start
            elif not blank:
                if blank_line is not None:
                    raise CommandError(
                        f"{path}: line {blank_line} is blank: in a one-column file it would "
                        "be an empty text, which is refused (a blank cell is missing); "
                        "remove the line or write its text")
                seen_header = True
            start = reader.line_num + 1


class _LineRecorder:
    """The file's lines as csv.reader takes them, kept until the row they make is read."""

    def __init__(self, file: Any) -> None:
        self.file, self.taken = file, []

    def __iter__(self) -> _LineRecorder:
        return self

    def __next__(self) -> str:
        line = next(self.file)
        self.taken.append(line)
        return line


@contextlib.contextmanager
def _no_field_limit() -> Iterator[None]:
    """Python's csv refuses cells over 128 KiB, which pandas reads: a guard that stopped
    there would let a blank line after a long text through."""
    import csv

    previous = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)  # a C long everywhere
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _refuse_csv_quoting(table: Any, path: Path) -> None:
    """A TSV written the CSV way (pandas' ``to_csv(sep="\\t")``, Excel) quotes a cell that
    holds a quote (doubling it) or a line break: read without quoting, as TSV is, its
    texts kept those quotes and the line break split its row, silently. Two patterns no
    natural text makes: a whole cell in quotes with every inner quote doubled; a row
    ending in a cell that opens a quote, with a later row's first cell closing it."""
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    texts = [name for name in table.columns
             if not (is_numeric_dtype(table[name]) or is_bool_dtype(table[name]))]
    if not texts:
        return
    # Both patterns need a cell that starts with a quote: rare, so such rows are found by
    # pandas' vectorised test and only they are looked at cell by cell (a Python loop
    # over every cell made reading 200,000 rows of 10 columns 5 times slower).
    opening = np.zeros(len(table), dtype=bool)
    for name in texts:
        try:  # pandas' string columns test in C; an object column in Python
            starts = table[name].str.startswith('"', na=False)
        except AttributeError:  # no .str: values that are not all text
            starts = table[name].map(lambda cell: isinstance(cell, str) and cell[:1] == '"')
        opening |= starts.to_numpy(bool)
    if not opening.any():
        return
    first_cells = table.iloc[:, 0].tolist()
    rows = np.flatnonzero(opening)
    for row, cells in zip(rows, table.iloc[rows].to_numpy(dtype=object), strict=True):
        for name, cell in zip(table.columns, cells, strict=True):
            if (isinstance(cell, str) and len(cell) > 3 and cell[0] == cell[-1] == '"'
                    and '""' in cell[1:-1] and '"' not in cell[1:-1].replace('""', "")):
                _refuse_quoted(path, row, name, cell, "inner quotes doubled")
        filled = [col for col, cell in enumerate(cells) if not is_missing(cell)]
        last = cells[filled[-1]] if filled else None
        if not (_odd_quotes(last) and last.startswith('"')):
            continue
        if any(_odd_quotes(cell) and cell.endswith('"')  # closed within 100 lines
               for cell in first_cells[row + 1:row + 101]):
            _refuse_quoted(path, row, table.columns[filled[-1]], last,
                           "a line break inside quotes")


def _odd_quotes(cell: Any) -> bool:
    return isinstance(cell, str) and cell.count('"') % 2 == 1


def _refuse_quoted(path: Path, row: int, name: Any, cell: str, pattern: str) -> None:
    raise CommandError(
        f"{path}: {row_label(path, row)}: column {name!r} is {cell[:40]!r}"
        f"{'...' if len(cell) > 40 else ''}, quoted the CSV way ({pattern}); a TSV is read "
        "without quoting, so the quotes would stay in the text and a quoted line break "
        "would split the row: save the file as .csv, or write the TSV unquoted")


def _first_non_utf8(path: Path) -> str:
    """``byte 0xe9 on line 3``: where the file first stops being UTF-8. Counted here, in
    the file: the decoder's error counts from the buffer pandas was reading."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as error:
                # The decoder may hold back a chunk's last bytes: count from its own start.
                start = max(error.start - len(error.object) + len(chunk), 0)
                line += chunk.count(b"\n", 0, start)
                return f"byte {chunk[start]:#04x} on line {line}"
            line += chunk.count(b"\n")
    return "an incomplete character at its end"


def _semicolon_hint(path: Path, kind: str) -> str:
    """Where a CSV's header holds a ';' (a European export: ';' between fields, commas in
    the numbers), the comma count is not the problem the user has to fix."""
    if kind != "csv":
        return ""
    with open(path, encoding="utf-8", errors="replace") as file:
        header = file.readline()
    if ";" not in header:
        return ""
    return (" or a ';'-separated export, whose decimal commas split the numbers: save it "
            "as comma-separated, or as TSV")


def _header(path: Path, kind: str, n_columns: int) -> list[str]:
    """The header's names as written: pandas renames a repeated name ``x.1`` (a second
    ``--target x`` column was then silently ignored) and a blank one ``Unnamed: 2``
    (written back under that name). A repeated name is refused; a blank one, such as the
    index column of ``DataFrame.to_csv()``, is kept blank."""
    pandas = _pandas()
    names = pandas.read_csv(path, sep="\t" if kind == "tsv" else ",", header=None, nrows=1,
                            dtype=str, keep_default_na=False, quoting=_quoting(kind))
    names = ["" if pandas.isna(name) else str(name) for name in names.iloc[0].tolist()]
    if len(names) != n_columns:
        raise CommandError(f"{path}: its header names {len(names)} columns, its rows hold "
                           f"{n_columns}")
    for k, name in enumerate(names):
        if name in names[:k]:
            what = f"column {name!r}" if name else "a column without a name"
            raise CommandError(f"{path}: the header has {what} twice (columns "
                               f"{names.index(name) + 1} and {k + 1}); name each column once")
    return names


def _quoting(kind: str) -> int:
    """TSV has no quoting (IANA text/tab-separated-values, GLUE's STS-B...): read with CSV
    quotes, a cell starting with ``"`` swallowed the rows after it, silently."""
    import csv

    return csv.QUOTE_NONE if kind == "tsv" else csv.QUOTE_MINIMAL


def _read_json_lines(path: Path, pandas: Any) -> Any:
    """One JSON object per line, each value kept as JSON gave it.

    pandas' reader fails on a byte-order mark and turns a column of integers with a null
    into floats (an id 7 written back as 7.0); here columns hold the parsed values.
    """
    import json

    records = []
    with open(path, encoding="utf-8-sig") as file:  # -sig: a byte-order mark is skipped
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line, parse_constant=_refuse_constant,
                                    object_pairs_hook=_refuse_duplicate_keys)
            except json.JSONDecodeError as error:
                raise CommandError(f"{path}: line {number} is not JSON ({error.msg})") from None
            except _NotStrictJSON as error:
                raise CommandError(f"{path}: line {number}: {error}") from None
            if not isinstance(record, dict):
                raise CommandError(f"{path}: line {number} is not a JSON object")
            records.append(record)
    if not records:
        raise pandas.errors.EmptyDataError
    return pandas.DataFrame(records, dtype=object)


class _NotStrictJSON(Exception):
    pass


def _refuse_constant(token: str) -> None:
    # Python's json reads NaN and Infinity, which no JSON writer (pandas' included) can
    # write back: predict would turn a user's Infinity into null.
    raise _NotStrictJSON(f"{token} is not JSON; write a number or null")


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    record = dict(pairs)
    if len(record) != len(pairs):
        seen: set[str] = set()
        twice = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise _NotStrictJSON(f"the key {twice!r} appears twice (only one value could be kept)")
    return record


def _is_default_index(index: Any) -> bool:
    pandas = _pandas()
    return (isinstance(index, pandas.RangeIndex) and index.start == 0 and index.step == 1
            and index.name is None)


def columns(table: Any, names: list[str], path: str | os.PathLike, role: str) -> Any:
    """A copy of ``table``'s ``names`` columns; a missing one is named."""
    missing = [name for name in names if name not in table.columns]
    if missing:
        raise CommandError(
            f"{path}: no {role} column {missing[0]!r}; its columns are "
            f"{', '.join(map(repr, table.columns))}"
        )
    return table[names]


def text_columns(table: Any, names: list[str], path: str | os.PathLike) -> Any:
    """The ``names`` columns as the model's texts: numbers (JSON numbers, typed Parquet
    columns: a code or a year) become their decimal strings, in a copy, so the table
    itself is written back unchanged."""
    pandas = _pandas()
    texts = columns(table, names, path, "text").copy()
    for name in names:
        # Numbers only: anything else (a list, a dict) is left for the fit to refuse.
        texts[name] = texts[name].map(
            lambda cell: str(cell) if isinstance(cell, numbers.Number)
            and not pandas.isna(cell) else cell)
    # Named here, in the file's terms: the estimator would say "X[1] is missing" and
    # suggest pandas' fillna to someone who never opened Python.
    missing = texts.isna().to_numpy()
    if missing.any():
        row, col = (int(i) for i in np.argwhere(missing)[0])
        raise CommandError(
            f"{path}: {row_label(path, row)}: text {names[col]!r} is empty (a blank cell, or "
            "a null, is read as missing, not as an empty text); fill it or drop the row")
    return texts


def refuse_to_overwrite(path: str | os.PathLike, force: bool,
                        inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """``path`` as an output; ``force`` replaces an old file, never one of ``inputs``."""
    path = Path(path)
    for source in inputs:
        if _same_file(path, Path(source)):
            raise CommandError(f"{path} is the command's input {source}; write elsewhere "
                               "(--force only replaces earlier outputs)")
    if path.is_dir():  # found before the work, not by the final rename after it
        raise CommandError(f"{path} is a folder; name a file to write")
    if os.path.lexists(path) and not force:
        raise CommandError(f"{path} exists; pass --force to replace it")
    # Found before the work, not when the temporary file is created after it (a fit's
    # hours lost, and an error that named the hidden temporary file).
    if not path.parent.exists():
        raise CommandError(f"{path}: the folder {path.parent} does not exist")
    if not path.parent.is_dir():
        raise CommandError(f"{path}: {path.parent} is a file, not a folder")
    # A link replaced with --force is written through, beside its target, as
    # write_atomically does: that folder is the one that must take the file.
    folder = Path(os.path.realpath(path)).parent if path.is_symlink() else path.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CommandError(f"{path}: the folder {folder} is not writable here")
    return path


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def write_table(table: Any, path: str | os.PathLike, force: bool) -> Path:
    """Write ``table`` in the format its suffix names, atomically."""
    kind = file_kind(Path(path))

    if kind == "tsv":
        refuse_unwritable_tsv_cells(table, path)

    def write(tmp: str) -> None:
        if kind in ("csv", "tsv"):
            # In a TSV no character is special but tab and line breaks (refused above);
            # csv escapes its quote character even unquoted, so that is one no cell holds.
            table.to_csv(tmp, sep="\t" if kind == "tsv" else ",", index=False,
                         quoting=_quoting(kind), quotechar=_NO_CHARACTER if kind == "tsv" else '"')
        elif kind == "parquet":
            table.to_parquet(tmp, index=False)
        else:
            _write_json_lines(table, tmp)

    return write_new_file(path, force, write)


_NO_CHARACTER = "\x00"


def refuse_unwritable_tsv_cells(table: Any, path: str | os.PathLike) -> None:
    """A tab or line break in a cell cannot be written to an unquoted TSV (nor NUL)."""
    for index, column in enumerate(table.columns):
        cells = table.iloc[:, index]  # by position: two columns may share a name
        if not (cells.dtype == object or _pandas().api.types.is_string_dtype(cells.dtype)):
            continue  # numbers and dates hold no tab
        bad = cells.map(lambda cell: isinstance(cell, str) and any(c in cell for c in "\t\r\n\x00"))
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise CommandError(
                f"{path}: column {column!r}, data row {row + 1}, holds a tab or a line break, "
                "which a TSV cannot hold; write .csv, .parquet or .jsonl instead")


def _write_json_lines(table: Any, tmp: str) -> None:
    """One JSON object per row, every value written exactly: pandas' writer rounded floats
    to 10 significant decimals (1.5e-12 came back as 0.0)."""
    import json

    names = [str(name) for name in table.columns]
    missing = (_pandas().NA, _pandas().NaT)
    with open(tmp, "w", encoding="utf-8") as out:
        for row in table.itertuples(index=False, name=None):
            values = (_json_value(value, missing) for value in row)
            record = dict(zip(names, values, strict=True))
            out.write(json.dumps(record, ensure_ascii=False, allow_nan=False,
                                 default=_json_default) + "\n")


def _json_value(value: Any, missing: tuple = ()) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # as pandas writes them: JSON has no NaN or infinity
    if any(value is marker for marker in missing):  # pandas' NA and NaT
        return None
    return value


def _json_default(value: Any) -> Any:
    if hasattr(value, "isoformat"):  # dates and times (from Parquet)
        return value.isoformat()
    if isinstance(value, np.ndarray):
        return [_json_value(item) for item in value.tolist()]
    return str(value)


def write_new_file(path: str | os.PathLike, force: bool, write: Callable[[str], Any]) -> Path:
    """``write(tmp)`` to a new temporary file beside ``path``, then move it into place;
    without ``force`` a file found at ``path``, even one that appeared meanwhile, is kept."""
    path = refuse_to_overwrite(path, force)
    try:
        return write_atomically(path, write, force)
    except FileExistsError:  # it appeared while the file was being written
        raise CommandError(f"{path} exists; pass --force to replace it") from None


def row_error(error: Exception, path: str | os.PathLike) -> CommandError:
    """Our row-naming errors (``X[5]``, ``y[5]``) in terms of the file: data row 6.

    Only errors about the data name the data file: a backbone folder gone missing is not
    a problem of the table, and "nl.csv: backbone=... no such folder" sent users there.
    """
    import re

    # The estimator's advice is Python's; a shell user fixes the file.
    message = str(error).replace("Convert the column to text first, e.g. X.astype(str).",
                                 "Write it as text in the file.")
    found = re.search(r"\b(?:X|y|sample_weight)\[(\d+)\]", message)
    if found:
        message = f"{row_label(path, int(found.group(1)))}: {message}"
    elif message.startswith("backbone"):  # the model's backbone, not the table
        return CommandError(message)
    return CommandError(f"{path}: {message}")


def row_label(path: str | os.PathLike, row: int) -> str:
    """"data row 6", and in a CSV or TSV the line it starts on, as an editor numbers lines.

    The line is counted, not derived from the row: a quoted cell may span several lines,
    and blank lines are skipped, as pandas skips them.
    """
    label = f"data row {row + 1}"
    kind = READERS.get(Path(path).suffix.lower())
    if kind not in ("csv", "tsv"):
        return label
    import csv

    try:
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as file:
            reader = csv.reader(file, delimiter="\t" if kind == "tsv" else ",",
                                quoting=_quoting(kind))
            data_rows = -1  # the header is the first row that is not blank
            start = 1
            for fields in reader:
                # As pandas: an empty or whitespace-only line is skipped; "," is a row.
                blank = not fields or (len(fields) == 1 and fields[0] != ""
                                       and not fields[0].strip())
                if not blank:
                    if data_rows == row:
                        return f"{label} (line {start})"
                    data_rows += 1
                start = reader.line_num + 1
    except (OSError, csv.Error):
        pass  # the row number alone still names it
    return label
