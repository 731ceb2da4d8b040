"""``python -m sklearn_relish``: the ``relish`` command, for an environment not activated."""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
