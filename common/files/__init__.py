"""Atomic files: the one way the project writes a file that a reader may see.

:func:`atomic_path` gives a temporary name in the target's own folder; when the block ends the temporary file
is renamed over the target (readers see the old file or the new one, never half of one); when it fails (a full
disk, an interrupt) the temporary file is removed and an ``OSError`` without a file name gets the target's, so
the one-line error names it. ``tmp`` chooses the temporary name where a cleaner of killed processes' leftovers
looks for a pattern (the training checkpoints, prepare's polar maps, synth's images).
"""

from __future__ import annotations

import contextlib
import os


def default_tmp(path: str) -> str:
    """``FOLDER/.tmp-PID-NAME`` next to ``path`` (hidden; the extension kept, for writers that look at it)."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".tmp-{os.getpid()}-{name}")


@contextlib.contextmanager
def atomic_path(path: str, tmp: str | None = None, makedirs: bool = True):
    """``with atomic_path(p) as tmp: write(tmp)``: ``tmp`` becomes ``p`` at the end, or is removed on failure."""
    path = os.fspath(path)
    if makedirs:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = tmp or default_tmp(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(exc, OSError) and exc.filename in (None, tmp):
            exc.filename = path
        raise


def write_bytes(path: str, data: bytes, tmp: str | None = None) -> None:
    with atomic_path(path, tmp) as t, open(t, "wb") as fh:
        fh.write(data)


def write_text(path: str, text: str, tmp: str | None = None) -> None:
    with atomic_path(path, tmp) as t, open(t, "w") as fh:
        fh.write(text)


def plain(obj):
    """``obj`` made of JSON's own types: numpy scalars and arrays to numbers and lists, NaN and infinities to
    None (strict parsers reject bare ``NaN``), tuples to lists, anything else unknown to its ``str``."""
    import math

    import numpy as np

    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return plain(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    return str(obj)


def to_json(obj, **kwargs) -> str:
    """Strict JSON text of ``obj`` (:func:`plain` first; ``allow_nan=False``, so a bare NaN can never appear)."""
    import json

    return json.dumps(plain(obj), allow_nan=False, **kwargs)


def write_json(path: str, obj, indent: int = 2) -> None:
    """``path`` atomically holding the strict JSON of ``obj`` (and a final newline)."""
    write_text(path, to_json(obj, indent=indent) + "\n")
