"""Sharded embedding: N processes (or machines) each embed a contiguous share of a split, write it atomically,
and a merge gives the one-process descriptors bit for bit.

    python -m experiments.evaluate --weights M --dataset cvact --split test --root DATA --shard 0/4 \\
        --save-descriptors shard0.npz          # ... one process per shard, 0/4 .. 3/4
    python -m experiments.evaluate --dataset cvact --split test --root DATA --descriptors shard*.npz

    python -m experiments.index build --export E --dataset cvusa --root DATA --shard 1/2 --out part1.npz
    python -m experiments.index merge --out INDEX.npz part0.npz part1.npz

**Why bit for bit.** A descriptor depends, to the last bit, on the batch it was computed in (the kernels block
a batch differently by its size). :func:`shard_range` therefore cuts the split on the one-process run's batch
boundaries: every shard's batches are exactly the batches the single process would form, so each row is
computed identically. (Images of one size per split, as every dataset has: the raw-image embedding starts a
new batch where the image size changes.)

A shard file records what it is (``meta``: shard I of N, its record range, the whole split's size and a hash
of its ids and image paths, the model's identity); :func:`merge` refuses shards of different splits or models,
a missing or repeated shard, and ranges that do not tile the split.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from common.errors import CVGLError

SHARD_FORMAT = "cvgl-descriptor-shard-1"


def parse_shard(text: str, flag: str = "--shard"):
    """(i, n) from ``"I/N"``: shard I (0-based) of N."""
    try:
        i, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise CVGLError(f"{flag} must be I/N (shard I of N, I counted from 0), e.g. 0/4; got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise CVGLError(f"{flag} {text}: need N >= 1 and 0 <= I < N (shards are numbered 0 .. N-1)")
    return i, n


def batch_starts(n_records: int, batch_size: int, chunk: int | None = None) -> list:
    """Where the one-process run starts its batches: every ``batch_size`` records, restarting at each
    multiple of ``chunk`` (an index build embeds chunk by chunk)."""
    starts, a = [], 0
    chunk = chunk or n_records or 1
    while a < n_records:
        end = min(a + chunk, n_records)
        starts.extend(range(a, end, batch_size))
        a = end
    return starts


def shard_range(n_records: int, i: int, n: int, batch_size: int, chunk: int | None = None):
    """[start, end) of shard ``i`` of ``n``: about 1/n of the one-process run's batches, cut on their boundaries
    (a shard may be empty when there are fewer batches than shards)."""
    starts = batch_starts(n_records, batch_size, chunk)
    nb = len(starts)
    lo, hi = i * nb // n, (i + 1) * nb // n
    start = starts[lo] if lo < nb else n_records
    end = starts[hi] if hi < nb else n_records
    return start, end


def records_key(records) -> str:
    """SHA-256 of the split's ids and image paths: the same split in every shard."""
    h = hashlib.sha256()
    for r in records:
        h.update(f"{r.id}\0{getattr(r, 'ground', '')}\0{r.aerial}\0".encode())
    return h.hexdigest()


def shard_meta(records, i: int, n: int, start: int, end: int, **identity) -> dict:
    return {"format": SHARD_FORMAT, "shard": [i, n], "range": [start, end], "n_total": len(records),
            "records_key": records_key(records), **identity}


def write_shard(path: str, arrays: dict, meta: dict) -> None:
    """An ``.npz`` with ``arrays`` and ``meta`` (JSON), written atomically."""
    from common.files import atomic_path, to_json

    if not path.endswith(".npz"):
        raise CVGLError(f"a shard is written as .npz: {path}")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, meta=np.asarray(to_json(meta)), **arrays)


def read_shard(path: str):
    """(arrays dict, meta dict or None for a plain descriptors file)."""
    if not os.path.isfile(path):
        raise CVGLError(f"descriptor file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if k != "meta"}
            meta = json.loads(str(z["meta"])) if "meta" in z.files else None
    except Exception as exc:  # noqa: BLE001 - a truncated .npz raises BadZipFile, EOFError, ...
        raise CVGLError(f"{path} is not a readable descriptor file ({type(exc).__name__}: {exc})") from None
    return arrays, meta


def merge(paths, identity_keys=("model",)):
    """(arrays, meta) of shard files merged in record order; CVGLError unless they tile one split exactly."""
    if not paths:
        raise CVGLError("no shard files given")
    parts = [(p, *read_shard(p)) for p in paths]
    plain = [p for p, _, m in parts if m is None or m.get("format") != SHARD_FORMAT]
    if plain:
        if len(parts) == 1:  # one whole descriptors file (evaluate --save-descriptors without --shard)
            return parts[0][1], None
        raise CVGLError(f"{plain[0]} is not a shard file (written with --shard I/N); merge shard files only")
    first = parts[0][2]
    for p, _, m in parts[1:]:
        for key in ("n_total", "records_key", *identity_keys):
            if m.get(key) != first.get(key):
                raise CVGLError(f"shard {p} is of another split or model than {parts[0][0]} ({key} differs: "
                                f"{m.get(key)!r} vs {first.get(key)!r})")
        if m["shard"][1] != first["shard"][1]:
            raise CVGLError(f"shard {p} is one of {m['shard'][1]}, {parts[0][0]} one of {first['shard'][1]}")
    n = first["shard"][1]
    seen = sorted(m["shard"][0] for _, _, m in parts)
    if seen != list(range(n)):
        missing = sorted(set(range(n)) - set(seen))
        extra = sorted({s for s in seen if seen.count(s) > 1})
        raise CVGLError(f"shards of {n}: " + (f"missing {', '.join(f'{s}/{n}' for s in missing)}" if missing else "")
                        + ("; " if missing and extra else "")
                        + (f"repeated {', '.join(f'{s}/{n}' for s in extra)}" if extra else ""))
    parts.sort(key=lambda t: t[2]["shard"][0])
    at = 0
    for p, arrays, m in parts:
        if m["range"][0] != at:
            raise CVGLError(f"shard {p} covers records {m['range'][0]}..{m['range'][1]}, expected to start at {at}")
        at = m["range"][1]
    if at != first["n_total"]:
        raise CVGLError(f"the shards cover {at} of {first['n_total']} records")
    keys = [k for k in parts[0][1]]
    merged = {}
    for k in keys:
        pieces = [a[k] for _, a, _ in parts if k in a]
        if len(pieces) != len(parts):
            raise CVGLError(f"array {k!r} is missing from some shards")
        merged[k] = np.concatenate(pieces, axis=0)
    meta = dict(first)
    meta.pop("shard"), meta.pop("range")
    meta["merged_from"] = n
    return merged, meta
