"""One error type for every bad input the user can fix, and the CLI wrapper that prints it as one line.

Rule of the project: a missing file, a corrupt image, a wrong layout, a mismatched checkpoint or a NaN loss
raises :class:`CVGLError` whose message names the thing and says what to do. Command-line entry points run
through :func:`run_cli`, which prints ``error: <message>`` on stderr and exits with status 2, without a
traceback (set ``CVGL_TRACEBACK=1`` to see one).
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Sequence


class CVGLError(Exception):
    """A user-fixable problem. The message must name the file/key/value and the fix."""


def require_file(path, what: str, fix: str) -> str:
    """Return ``str(path)`` if it is an existing file, else raise CVGLError naming it."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CVGLError(f"{what} not found: {path} ({fix})")
    return path


def require_dir(path, what: str, fix: str) -> str:
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise CVGLError(f"{what} not found: {path} ({fix})")
    return path


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Run ``main(argv)`` and turn CVGLError into one clear line and exit status 2."""
    try:
        code = main(argv)
    except CVGLError as exc:
        if os.environ.get("CVGL_TRACEBACK"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(int(code or 0))
