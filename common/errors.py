"""One error type for every bad input the user can fix, and the CLI wrapper that prints it as one line.

Rule of the project: a missing file, a corrupt image, a wrong layout, a mismatched checkpoint or a NaN loss
raises :class:`CVGLError` whose message names the thing and says what to do. Command-line entry points run
through :func:`run_cli`, which prints ``error: <message>`` on stderr and exits with status 2, without a
traceback (set ``CVGL_TRACEBACK=1`` to see one). A full disk (``ENOSPC`` / ``EDQUOT``, also as h5py's or
TensorFlow's "No space left on device") is one such line too: every file of the project is written to a
temporary name and renamed, so what was finished is whole and a rerun of the same command resumes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import sys
from typing import Callable, Sequence

NO_SPACE_ERRNOS = tuple(e for e in (getattr(errno, "ENOSPC", None), getattr(errno, "EDQUOT", None)) if e)
_NO_SPACE_TEXT = ("no space left on device", "disk quota exceeded")


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
    """Run ``main(argv)`` and turn CVGLError (and a full disk) into one clear line and exit status 2."""
    try:
        code = main(argv)
    except CVGLError as exc:
        if os.environ.get("CVGL_TRACEBACK"):
            raise
        _close_progress_bars()
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - only a full disk is turned into a line; anything else re-raises
        if os.environ.get("CVGL_TRACEBACK") or not is_no_space(exc):
            raise
        _close_progress_bars()
        print(f"error: {no_space_message(exc)}", file=sys.stderr)
        sys.exit(2)
    sys.exit(int(code or 0))


def _close_progress_bars() -> None:
    """End any tqdm bar still open (the error interrupted it), so the ``error:`` line starts a line of its own."""
    tqdm = sys.modules.get("tqdm.std")
    if tqdm is None:
        return
    try:
        for bar in list(getattr(tqdm.tqdm, "_instances", ())):
            bar.close()
    except Exception:  # noqa: BLE001 - a progress bar must never hide the error
        pass


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def is_no_space(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) says the disk or the quota is full."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in NO_SPACE_ERRNOS:
            return True
        if any(t in str(e).lower() for t in _NO_SPACE_TEXT):
            return True
    return False


def _target(path: str) -> str:
    """The file a temporary name stands for: ``DIR/.tmp-PID-NAME`` and ``NAME.tmpPID`` -> ``NAME``."""
    d, base = os.path.split(path)
    m = re.match(r"^\.tmp-\d+-(.+)$", base) or re.match(r"^(.+)\.tmp-?\d*$", base)
    return os.path.join(d, m.group(1)) if m else path


def _no_space_file(exc: BaseException):
    for e in _chain(exc):
        name = getattr(e, "filename", None)
        if isinstance(name, (str, bytes, os.PathLike)) and os.fspath(name):
            return _target(os.fsdecode(name))
        m = re.search(r"\b(?:file)?name = '([^']+)'", str(e))  # h5py: "... filename = 'x.h5', errno = 28 ..."
        if m:
            return _target(m.group(1))
    return None


def no_space_message(exc: BaseException) -> str:
    name = _no_space_file(exc)
    where = f" (writing {name})" if name else ""
    return (f"no space left on device{where}; free space and rerun the same command: finished files are kept "
            "whole and the rest is done again")


@contextlib.contextmanager
def writing(path):
    """Within the block a full disk names ``path``: for writers whose error names no file (TensorFlow's
    SavedModel writer, h5py, matplotlib), so the one line of :func:`run_cli` can say what was being written."""
    try:
        yield
    except Exception as exc:
        if is_no_space(exc) and _no_space_file(exc) is None:
            raise OSError(errno.ENOSPC, "No space left on device", os.fspath(path)) from exc
        raise
