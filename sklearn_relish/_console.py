"""What the package prints, and where its warnings point.

``verbose`` fits print skorch's table of epochs, coloured only where colour shows: skorch
colours each best value with ANSI escape codes. In a terminal or a notebook they
are colours; piped to a log file (``relish fit ... > fit.log``, a cluster job's output)
they were ``^[[36m0.9042^[[0m`` in every line.
"""

from __future__ import annotations

import os
import re
import sys

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def colours_shown() -> bool:
    """Whether stdout renders colour: a terminal or a Jupyter kernel, unless ``NO_COLOR``."""
    if os.environ.get("NO_COLOR"):  # https://no-color.org
        return False
    if "ipykernel" in sys.modules:  # notebooks render ANSI colours; their stdout is no tty
        return True
    return bool(getattr(sys.stdout, "isatty", lambda: False)())


def print_epoch_line(text: str) -> None:
    """skorch's ``PrintLog`` sink: its lines, without colour codes where none would show."""
    print(text if colours_shown() else _ANSI.sub("", text), flush=True)


def user_stacklevel() -> int:
    """The ``stacklevel`` of the first caller outside this package and the libraries it
    runs under (scikit-learn, joblib: a Pipeline with ``memory=`` calls through both).

    A fixed level pointed into the package (predict's chunk loop) or into scikit-learn's
    ``set_output`` wrapper, so Python's once-per-location filter showed the first
    truncation warning and hid every later call's; the user's own line is the location.
    """
    import joblib
    import sklearn

    inside = tuple(os.path.dirname(os.path.abspath(module)) + os.sep
                   for module in (__file__, sklearn.__file__, joblib.__file__))
    frame, level = sys._getframe(2), 2  # level 1: the function that calls warnings.warn
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(inside):
        frame, level = frame.f_back, level + 1
    return level
