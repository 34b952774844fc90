"""Offline preparation of a dataset folder: check the layout, precompute the polar aerial maps (and CVACT's
cropped ground panoramas) next to the originals, resumably and in parallel.

The library behind ``python -m experiments.prepare``; NumPy / OpenCV only (the worker processes never import
TensorFlow).
"""

from __future__ import annotations

import os
import re
import sys
import types

from common.errors import CVGLError


DEFAULT_SIZES = ("122x671", "112x616")
# How each default size's maps are rounded by the preparation script of the models trained at that size
# (common.data.polar.ROUNDINGS): 122x671 truncates (numpy astype), 112x616 byte-scales (scipy.misc.imsave);
# any other size is rounded to the nearest integer.
DEFAULT_ROUNDING = {(122, 671): "floor", (112, 616): "bytescale"}
POLAR_RECORD = "polar.json"  # in each size folder: how its maps were rounded


def rounding_for(size, requested: str = "auto") -> str:
    """The rounding ``prepare`` uses for maps of ``size``: ``requested``, or for "auto" the original one."""
    from common.data.polar import ROUNDINGS

    if requested == "auto":
        return DEFAULT_ROUNDING.get(tuple(size), "round")
    if requested not in ROUNDINGS:
        raise CVGLError(f"--polar-rounding {requested!r}: use auto or one of {', '.join(ROUNDINGS)}")
    return requested


def read_polar_record(folder: str) -> dict | None:
    """The ``polar.json`` of a prepared size folder (None when absent: maps of an older prepare, rounded)."""
    import json

    path = os.path.join(folder, POLAR_RECORD)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as fh:
            record = json.load(fh)
        if not isinstance(record, dict) or "rounding" not in record:
            raise ValueError("no 'rounding' key")
        return record
    except (OSError, ValueError) as exc:
        raise CVGLError(f"{path} is unreadable ({exc}); delete it and rerun prepare with --verify") from None


def folder_rounding(folder: str) -> str:
    """How the maps in ``folder`` were rounded ("round" for a folder of an older prepare without a record)."""
    record = read_polar_record(folder)
    return record["rounding"] if record else "round"


def _claim_folder(folder: str, size, rounding: str) -> None:
    """Record ``rounding`` in ``folder``, or refuse when its maps were written another way."""
    import json

    from common.data.polar import ROUNDINGS
    from common.files import write_text

    record = read_polar_record(folder)
    has_maps = os.path.isdir(folder) and any(n.endswith(".png") for n in os.listdir(folder))
    if record is not None and record["rounding"] != rounding and has_maps:
        raise CVGLError(f"{folder} holds polar maps rounded '{record['rounding']}', not '{rounding}'; pass "
                        f"--polar-rounding {record['rounding']} to continue it, or delete the folder to rewrite it")
    if record is None and has_maps and rounding != "round":
        raise CVGLError(f"{folder} holds polar maps of an earlier prepare (rounded to the nearest integer, no "
                        f"{POLAR_RECORD}); pass --polar-rounding round to continue it, or delete the folder to "
                        f"rewrite it '{rounding}'")
    if record is None or record["rounding"] != rounding:
        write_text(os.path.join(folder, POLAR_RECORD), json.dumps(
            {"height": int(size[0]), "width": int(size[1]), "rounding": rounding,
             "definition": ROUNDINGS[rounding]}, indent=2) + "\n")


def parse_size(text: str) -> tuple:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
        if h <= 0 or w <= 0:
            raise ValueError
    except ValueError:
        raise CVGLError(f"--sizes: {text!r} is not HxW (e.g. 122x671)") from None
    return h, w


_LEFTOVER = re.compile(r"\.tmp\d+\.(png|jpg)$")


def _remove_leftovers(folders) -> int:
    """Delete the ``X.tmpPID.png`` files a killed run left in the output folders; returns how many."""
    n = 0
    for folder in folders:
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            if _LEFTOVER.search(name):
                try:
                    os.remove(os.path.join(folder, name))
                    n += 1
                except OSError:
                    pass
    return n


def _atomic_write(path: str, image_bgr) -> None:
    import cv2

    from common.files import atomic_path

    root, ext = os.path.splitext(path)
    with atomic_path(path, tmp=f"{root}.tmp{os.getpid()}{ext}") as tmp:  # the name prepare's restart removes
        if not cv2.imwrite(tmp, image_bgr):
            raise CVGLError(f"cannot write {path}; check free space and permissions")


def _job(args):
    """Check and prepare one pair. Returns (id, problem or None, n_written).

    Both images are decoded and checked whenever the pair has work to do (or ``verify``); a pair whose
    outputs all exist is skipped without decoding (resume), unless ``verify``.
    """

    from common.data.readers import GROUND_ASPECT, crop_rows
    from common.data.polar import polar_transform_fast

    from common.data.images import decode_checked, decode_problem

    rid, dataset, aerial, ground, polar_outputs, crop_out, aerial_size, verify, roundings = args
    if verify:  # a prepared file that is empty, truncated or undecodable is redone, not trusted
        for out in [o for _, o in polar_outputs] + ([crop_out] if crop_out else []):
            if os.path.isfile(out) and decode_problem(out):
                os.remove(out)
    todo = [(size, out) for size, out in polar_outputs if not os.path.isfile(out)]
    need_crop = crop_out is not None and not os.path.isfile(crop_out)
    if not (todo or need_crop or verify):
        return rid, None, 0
    decoded = {}
    for path in (aerial, ground):
        decoded[path], problem, warning = decode_checked(path)
        if problem:
            return rid, problem, 0
        if warning:
            print(f"warning: pair {rid}: {warning}", file=sys.stderr)
    img = decoded[aerial]
    if img.shape[0] != img.shape[1]:
        return rid, f"aerial image {aerial} is {img.shape[0]}x{img.shape[1]}, not square", 0
    if tuple(img.shape[:2]) != tuple(aerial_size):
        return rid, (f"aerial image {aerial} is {img.shape[0]}x{img.shape[1]}, the others are "
                     f"{aerial_size[0]}x{aerial_size[1]}"), 0
    grd = decoded[ground]
    aspect = grd.shape[1] / grd.shape[0]
    if abs(aspect / GROUND_ASPECT[dataset] - 1.0) > 0.02:
        return rid, (f"panorama {ground} is {grd.shape[0]}x{grd.shape[1]}, expected width/height "
                     f"{GROUND_ASPECT[dataset]:.2f}"), 0
    written = 0
    for (h, w), out in todo:  # BGR in, BGR out: a per-channel transform (bytescale: over all channels at once)
        _atomic_write(out, polar_transform_fast(img, h, w, rounding=roundings[(h, w)]))
        written += 1
    if need_crop:
        top, bottom = crop_rows(grd.shape[0])
        _atomic_write(crop_out, grd[top:bottom])
        written += 1
    return rid, None, written


def _size_of(path):
    import cv2

    img = cv2.imread(path, cv2.IMREAD_COLOR)
    return None if img is None else img.shape[:2]


def _write_bad_pairs(root, problems, checked_ok) -> None:
    """Record bad pairs in ROOT/bad_pairs.txt so every reader drops (allow_missing) or refuses them; pairs
    decoded fine in this run (``checked_ok``) are taken off the list."""
    from common.data.readers import BAD_PAIRS_FILE, read_bad_pairs

    path = os.path.join(root, BAD_PAIRS_FILE)
    table = {k: v for k, v in read_bad_pairs(root).items() if k not in checked_ok}
    table.update({rid: problem for rid, problem in problems})
    if not table:
        if os.path.isfile(path):
            os.remove(path)
        return
    from common.files import write_text

    write_text(path, "".join(f"{rid}\t{problem}\n" for rid, problem in sorted(table.items())))


def counts_table(dataset: str, rows) -> str:
    from common.data.readers import PUBLISHED_COUNTS

    head = f"{'split':<7}{'listed':>9}{'missing':>9}{'usable':>9}{'published':>11}  note"
    lines = [head, "-" * len(head)]
    for split, listed, missing, usable in rows:
        pub = PUBLISHED_COUNTS[dataset][split]
        note = "" if usable == pub else ("subset/synthetic or incomplete copy" if usable < pub else "more than published")
        lines.append(f"{split:<7}{listed:>9,}{missing:>9,}{usable:>9,}{pub:>11,}  {note}")
    return "\n".join(lines)


def prepare_dataset(dataset: str, root: str, sizes=DEFAULT_SIZES, splits=None, workers: int = 1,
                    check_only: bool = False, allow_missing: bool = False, verify: bool = False,
                    polar_rounding: str = "auto") -> int:
    """Check a dataset folder, print its counts table, write the polar maps (and CVACT's ground crops).

    Resumable (finished files are skipped), atomic per file, parallel over ``workers`` processes; bad pairs
    are listed in ``ROOT/bad_pairs.txt`` and raise a CVGLError unless ``allow_missing``. Returns 0.
    """
    args = types.SimpleNamespace(dataset=dataset, root=root, sizes=list(sizes), splits=splits, workers=workers,
                                 check_only=check_only, allow_missing=allow_missing, verify=verify)
    from common.data.readers import (SPLITS, check_missing, check_writable_inside, find_missing, list_split,
                                     prepared_polar_path)

    sizes = [parse_size(s) for s in args.sizes]
    roundings = {size: rounding_for(size, polar_rounding) for size in sizes}
    splits = args.splits or list(SPLITS[args.dataset])
    for s in splits:
        if s not in SPLITS[args.dataset]:
            raise CVGLError(f"--splits: {args.dataset} has no split {s!r}; use {' '.join(SPLITS[args.dataset])}")
    if args.workers < 1:
        raise CVGLError("--workers must be at least 1")

    # 1. layout and counts
    per_split, rows, any_missing = {}, [], []
    for split in splits:
        records = list_split(args.dataset, args.root, split)
        missing = find_missing(records)
        any_missing += [(split, m) for m in missing]
        per_split[split] = records
        rows.append((split, len(records), len(missing), len(records) - len(missing)))
    print(f"{args.dataset.upper()} at {os.path.abspath(args.root)}")
    print(counts_table(args.dataset, rows))
    for split in splits:
        per_split[split] = check_missing(per_split[split], f"{args.dataset}/{split}", args.allow_missing)

    # every aerial image of a dataset must have one size (the polar grid and the 'wrong size' check)
    first = next((recs[0] for recs in per_split.values() if recs), None)
    if first is None:
        raise CVGLError(f"{args.root}: no usable pairs; check the layout")
    ref = _size_of(first.aerial)
    if ref is None:
        raise CVGLError(f"unreadable image {first.aerial}; re-download it or drop the pair (--allow-missing)")
    if ref[0] != ref[1]:
        raise CVGLError(f"aerial image {first.aerial} is {ref[0]}x{ref[1]}, not square; the polar transform "
                        "needs square aerial images (is --dataset right?)")
    if args.check_only:
        print(f"check only: layout ok, aerial images {ref[0]}x{ref[1]}; nothing written")
        return 0

    # 2. precompute
    jobs, seen = [], set()
    for split, recs in per_split.items():
        for r in recs:
            if r.aerial in seen:  # CVACT val and test share pairs
                continue
            seen.add(r.aerial)
            outs = [(size, check_writable_inside(args.root, prepared_polar_path(r, size))) for size in sizes]
            if r.ground_prepared:
                check_writable_inside(args.root, r.ground_prepared)
            jobs.append((r.id, args.dataset, r.aerial, r.ground, outs, r.ground_prepared, ref, args.verify,
                         roundings))
    from common.data.polar import ROUNDINGS

    for size in sizes:
        folders = {os.path.dirname(o) for job in jobs for sz, o in job[4] if sz == size}
        for folder in sorted(folders):
            _claim_folder(folder, size, roundings[size])
        print(f"polar maps {size[0]}x{size[1]}: {roundings[size]} ({ROUNDINGS[roundings[size]]})")
    removed = _remove_leftovers({os.path.dirname(o) for job in jobs for o in [x for _, x in job[4]] + [job[5]] if o})
    if removed:
        print(f"removed {removed} temporary file(s) of an interrupted earlier run", file=sys.stderr)
    problems, written, checked_ok = [], 0, set()
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="prepare", unit="pair", file=sys.stderr, disable=None)
    if args.workers == 1 or len(jobs) < 8:
        results = map(_job, jobs)
        pool = None
    else:
        import multiprocessing as mp

        pool = mp.get_context("spawn").Pool(args.workers)
        results = pool.imap_unordered(_job, jobs, chunksize=max(1, min(64, len(jobs) // (args.workers * 8))))
    try:
        for rid, problem, n in results:
            written += n
            if problem:
                problems.append((rid, problem))
            elif n or args.verify:
                checked_ok.add(rid)
            bar.update(1)
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    for rid, problem in problems:
        print(f"{'dropped' if args.allow_missing else 'bad'} pair {rid}: {problem}", file=sys.stderr)
    print(f"prepared {len(jobs) - len(problems):,} pair(s), wrote {written:,} file(s) "
          f"(polar sizes {', '.join(f'{h}x{w}' for h, w in sizes)}"
          f"{'; CVACT ground crops' if args.dataset == 'cvact' else ''}); finished files were skipped")
    _write_bad_pairs(args.root, problems, checked_ok)
    if problems and not args.allow_missing:
        raise CVGLError(f"{len(problems)} pair(s) have bad images (listed above, first: {problems[0][1]}); "
                        f"they are recorded in {os.path.join(args.root, 'bad_pairs.txt')}, so train / evaluate "
                        "/ index refuse them; replace those files, or pass --allow-missing (here and there) to "
                        "drop the pairs")
    return 0
