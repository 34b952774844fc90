"""Readers for the CVUSA and CVACT on-disk layouts: one split -> a list of :class:`PairRecord`.

Layouts (see the dataset papers: Zhai et al. CVPR 2017 / Hu et al. CVPR 2018 for the CVUSA subset, Liu & Li
CVPR 2019 for CVACT; the file patterns are the ones SAFA and GeoDTR read):

CVUSA (``root/``)::

    splits/train-19zl.csv, splits/val-19zl.csv   no header; aerial path, ground path, annotation path
    bingmap/19/<id>.jpg                          aerial, 750 x 750
    streetview/panos/<id>.jpg                    ground panorama, 224 x 1232, north at the centre column
    polarmap/19/<id>.png                         canonical polar aerial (record.polar)
    coordinates.csv                              optional: id,lat,lon,easting,northing -> record.position

CVACT (``root/``)::

    ACT_data.mat                 panoIds, utm (N x 2), trainSet.trainInd, valSet.valInd, valSetAll.valInd
                                 (MATLAB structs, 1-based indices)
    ANU_data_small/              train (and val) images
    ANU_data_test/               valSetAll images; val is read from here too (as GeoDTR does)
       streetview/<id>_grdView.jpg                 ground, 832 x 1664
       satview_polish/<id>_satView_polish.jpg      aerial, 1200 x 1200
       polarmap/<id>_satView_polish.png            canonical polar aerial (record.polar)
       streetview_processed/<id>_grdView.png       centre crop rows 208:624 (record.ground_prepared)

Splits: CVUSA "train" / "val"; CVACT "train" (trainSet), "val" (valSet, 8,884) and "test" (valSetAll, 92,802,
the 5 m protocol). A CVACT val image that is absent from ANU_data_test but present in ANU_data_small is read
from ANU_data_small (the same image: both parts come from the same capture); the reader says how many.

**Prepared files for several input sizes.** GeoDTR uses 122x671 polar maps, SAFA/MGTL 112x616. The canonical
``record.polar`` path is left to whatever the user already has (e.g. polar maps downloaded with SAFA);
``experiments.prepare`` writes one folder per size next to it, :func:`prepared_polar_path`::

    CVUSA  polarmap/19/<id>.png  ->  polarmap/19_<H>x<W>/<id>.png
    CVACT  polarmap/<id>_satView_polish.png  ->  polarmap_<H>x<W>/<id>_satView_polish.png

The pipeline uses, per pair, the size-suffixed file if it exists, else the canonical file if its PNG header
says it has the right size, else it computes the polar map on the fly from the raw aerial image (exactly the
same formula), so a folder that was only partly prepared still gives correct batches for every spec.
The CVACT ground crop is size-independent (full resolution), so it has a single folder.

Missing files: every pair whose ground or aerial image is absent is listed by name; the reader fails with a
:class:`CVGLError` unless ``allow_missing=True``, which prints exactly which pairs were dropped.
"""

from __future__ import annotations

import csv
import os
import sys

import numpy as np

from common.data.records import PairRecord
from common.errors import CVGLError, require_dir

DATASETS = ("cvusa", "cvact")
SPLITS = {"cvusa": ("train", "val"), "cvact": ("train", "val", "test")}
PUBLISHED_COUNTS = {
    "cvusa": {"train": 35532, "val": 8884},
    "cvact": {"train": 35532, "val": 8884, "test": 92802},
}
CVUSA_CSV = {"train": "splits/train-19zl.csv", "val": "splits/val-19zl.csv"}
CVACT_MAT = "ACT_data.mat"
CVACT_MAT_FIELDS = {"train": ("trainSet", "trainInd"), "val": ("valSet", "valInd"),
                    "test": ("valSetAll", "valInd")}
# Expected ground width / height (used by prepare to catch a wrong image size).
GROUND_ASPECT = {"cvusa": 1232 / 224, "cvact": 1664 / 832}


def size_tag(size) -> str:
    return f"{int(size[0])}x{int(size[1])}"


def prepared_polar_path(record: PairRecord, size) -> str:
    """Where ``experiments.prepare`` writes the polar map of ``record`` at ``size`` = (H, W)."""
    folder, name = os.path.split(record.polar)
    return os.path.join(f"{folder}_{size_tag(size)}", name)


def crop_rows(height: int):
    """Row range [top, bottom) of the CVACT centre crop for a panorama of ``height`` rows: the centre half,
    ``height // 4`` to ``height // 4 + height // 2`` (208:624 for 832 rows; the export's in-graph crop uses
    the same rule)."""
    top = int(height) // 4
    return top, top + int(height) // 2


def read_split(dataset: str, root, split: str, allow_missing: bool = False) -> list:
    """Read one split of a dataset folder. See the module docstring for layouts and missing-file rules."""
    records = list_split(dataset, root, split)
    bad = read_bad_pairs(root)
    return check_missing(records, f"{str(dataset).lower()}/{split}", allow_missing, bad)


BAD_PAIRS_FILE = "bad_pairs.txt"


def read_bad_pairs(root) -> dict:
    """{id: problem} from ``root/bad_pairs.txt``, which ``experiments.prepare`` writes when it finds
    unreadable or wrongly sized images (one ``id<TAB>problem`` per line); {} if there is none."""
    path = os.path.join(os.fspath(root), BAD_PAIRS_FILE)
    if not os.path.isfile(path):
        return {}
    out = {}
    with open(path) as fh:
        for line in fh:
            if line.strip():
                rid, _, problem = line.rstrip("\n").partition("\t")
                out[rid] = problem or "listed in " + path
    return out


def list_split(dataset: str, root, split: str) -> list:
    """Every pair the split lists, whether or not its files exist (``read_split`` checks them)."""
    dataset = str(dataset).lower()
    if dataset not in DATASETS:
        raise CVGLError(f"unknown dataset {dataset!r}; use one of {', '.join(DATASETS)}")
    if split not in SPLITS[dataset]:
        raise CVGLError(f"{dataset} has no split {split!r}; use one of {', '.join(SPLITS[dataset])}")
    root = os.path.abspath(os.fspath(root))
    require_dir(root, f"{dataset.upper()} root folder", "pass the folder that holds the dataset with --root")
    if dataset == "cvusa":
        return _read_cvusa(root, split)
    return _read_cvact(root, split)


def find_missing(records, bad=None) -> list:
    """[(record, [problems])] for every record whose ground or aerial image file is absent, empty or cut
    short (:func:`common.data.images.image_problem`: head and tail bytes only, no decoding), or that is in
    ``bad``, the {id: problem} table of :func:`read_bad_pairs`."""
    from common.data.images import image_problem

    out = []
    bad = bad or {}
    for r in records:
        problems = [f"no file {p}" if not os.path.isfile(p) else image_problem(p) for p in (r.ground, r.aerial)]
        problems = [p for p in problems if p]
        if r.id in bad:
            problems.append(bad[r.id])
        if problems:
            out.append((r, problems))
    return out


def check_missing(records, what: str, allow_missing: bool, bad=None) -> list:
    """Drop (allow_missing) or refuse (else) the records with missing or bad images, naming every file."""
    missing = find_missing(records, bad)
    if not missing:
        return records
    for rec, problems in missing:
        for p in problems:
            print(f"{'dropped' if allow_missing else 'missing'} pair {rec.id}: {p}", file=sys.stderr)
    n_files = sum(len(p) for _, p in missing)
    if not allow_missing:
        first = missing[0][1][0]
        raise CVGLError(
            f"{what}: {n_files} image file(s) of {len(missing)} pair(s) are missing or bad (listed above, "
            f"first: {first}); restore them, or pass --allow-missing (allow_missing=True) to drop those pairs"
        )
    bad = {rec.id for rec, _ in missing}
    kept = [r for r in records if r.id not in bad]
    print(f"{what}: dropped {len(missing)} pair(s) with missing or bad images; {len(kept)} of {len(records)} kept",
          file=sys.stderr)
    return kept


# ----------------------------------------------------------------------------------------------- CVUSA
def _read_coordinates(root: str):
    path = os.path.join(root, "coordinates.csv")
    if not os.path.isfile(path):
        return None
    table = {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        need = {"id", "easting", "northing"}
        if not reader.fieldnames or not need.issubset(reader.fieldnames):
            raise CVGLError(f"{path}: header must be 'id,lat,lon,easting,northing', got {reader.fieldnames}; "
                            "fix the header or remove the file")
        for line, row in enumerate(reader, start=2):
            try:
                table[row["id"].strip()] = (float(row["easting"]), float(row["northing"]))
            except (TypeError, ValueError):
                raise CVGLError(f"{path} line {line}: easting/northing are not numbers; fix that row") from None
    return table


def inside_root(root: str, rel: str, where: str) -> str:
    """``root/rel`` when it stays inside ``root`` (no absolute path, no ``..`` leaving it); a CVGLError naming
    ``where`` otherwise. Symbolic links inside the root are followed when reading (a dataset may link its
    images); what is written next to them is checked with :func:`check_writable_inside`."""
    if not rel or os.path.isabs(rel) or (os.name == "nt" and os.path.splitdrive(rel)[0]):
        raise CVGLError(f"{where}: path {rel!r} is not relative to the dataset root; every image must lie "
                        "under --root (fix the file)")
    root_n = os.path.normpath(os.path.abspath(root))
    path = os.path.normpath(os.path.join(root_n, rel))
    if os.path.commonpath([root_n, path]) != root_n:
        raise CVGLError(f"{where}: path {rel!r} leaves the dataset root {root} (..); every image must lie under "
                        "--root (fix the file)")
    return path


def check_writable_inside(root: str, path: str) -> str:
    """``path`` if its real location (symbolic links resolved) is inside the real ``root``; else a CVGLError.

    Used before writing a prepared file next to an image, so that a link pointing out of the root can never
    make the project write elsewhere."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.dirname(path))
    if os.path.commonpath([real_root, real]) != real_root:
        raise CVGLError(f"refusing to write {path}: its folder resolves to {real}, outside the dataset root "
                        f"{real_root} (a symbolic link leaving the root?); nothing is written outside --root")
    return path


def _read_cvusa(root: str, split: str) -> list:
    csv_path = os.path.join(root, CVUSA_CSV[split])
    if not os.path.isfile(csv_path):
        raise CVGLError(f"CVUSA split file not found: {csv_path} (some CVUSA copies ship without splits/; "
                        "get train-19zl.csv and val-19zl.csv from the CVUSA subset release)")
    coords = _read_coordinates(root)
    records = []
    with open(csv_path, newline="") as fh:
        for line_no, row in enumerate(csv.reader(fh), start=1):
            row = [c.strip() for c in row]
            if not row or not any(row):
                continue
            if len(row) < 2:
                raise CVGLError(f"{csv_path} line {line_no}: expected 'aerial path, ground path[, annotation]', "
                                f"got {','.join(row)!r}; fix the split file")
            aerial_rel, ground_rel = row[0], row[1]
            where = f"{csv_path} line {line_no}"
            aerial_path, ground_path = inside_root(root, aerial_rel, where), inside_root(root, ground_rel, where)
            pid = os.path.splitext(os.path.basename(aerial_rel))[0]
            polar_rel = os.path.splitext(aerial_rel.replace("bingmap", "polarmap", 1))[0] + ".png"
            position = None
            if coords is not None:
                if pid not in coords:
                    raise CVGLError(f"{os.path.join(root, 'coordinates.csv')}: no row for id {pid} "
                                    f"(listed in {csv_path}); add it or remove coordinates.csv")
                position = coords[pid]
            records.append(PairRecord(id=pid, ground=ground_path, aerial=aerial_path,
                                      polar=inside_root(root, polar_rel, where), position=position))
    if not records:
        raise CVGLError(f"{csv_path} lists no pairs; check the file")
    return records


# ----------------------------------------------------------------------------------------------- CVACT
def _load_mat(path: str) -> dict:
    import scipy.io

    try:
        return scipy.io.loadmat(path)
    except Exception as exc:  # scipy raises several types for a corrupt/stub file
        raise CVGLError(f"cannot read {path} ({type(exc).__name__}: {exc}); a git-LFS stub or partial "
                        "download? get ACT_data.mat again from the SAFA/DSM repositories") from None


def _mat_key(mat: dict, key: str, path: str):
    if key not in mat:
        keys = ", ".join(k for k in mat if not k.startswith("__"))
        raise CVGLError(f"{path} has no key {key!r} (it has: {keys}); use the ACT_data.mat of the CVACT release")
    return mat[key]


def _struct_field(mat: dict, key: str, field: str, path: str) -> np.ndarray:
    value = _mat_key(mat, key, path)
    names = getattr(getattr(value, "dtype", None), "names", None) or ()
    if field not in names:
        raise CVGLError(f"{path}: struct {key!r} has no field {field!r} (fields: {', '.join(names) or 'none'}); "
                        "use the ACT_data.mat of the CVACT release")
    return np.asarray(value[field][0][0]).reshape(-1)


def _pano_ids(mat: dict, path: str) -> list:
    raw = _mat_key(mat, "panoIds", path)
    arr = np.asarray(raw)
    if arr.dtype.kind in "US":  # char matrix -> one string per row
        return [str(s).strip() for s in arr.reshape(-1)]
    out = []  # cell array -> object array of small arrays
    for item in arr.reshape(-1):
        while isinstance(item, np.ndarray) and item.dtype == object and item.size == 1:
            item = item.reshape(-1)[0]
        out.append(str(np.asarray(item).reshape(-1)[0]).strip() if np.size(item) else "")
    return out


def read_cvact_table(root: str):
    """(pano_ids, utm (N, 2) float64, {split: 0-based index array}) from ``root/ACT_data.mat``."""
    path = os.path.join(root, CVACT_MAT)
    if not os.path.isfile(path):
        raise CVGLError(f"CVACT index file not found: {path} (download ACT_data.mat from the SAFA/DSM "
                        "repositories into the CVACT root)")
    mat = _load_mat(path)
    ids = _pano_ids(mat, path)
    bad = [i for i in ids if not i or os.sep in i or "/" in i or i in (".", "..")]
    if bad:
        raise CVGLError(f"{path}: panoIds must be plain file-name stems, got {bad[0]!r}; use the ACT_data.mat of "
                        "the CVACT release")
    utm = np.asarray(_mat_key(mat, "utm", path), dtype=np.float64)
    if utm.ndim != 2 or utm.shape[1] != 2 or utm.shape[0] != len(ids):
        raise CVGLError(f"{path}: 'utm' must be N x 2 with N = len(panoIds) = {len(ids)}, got {utm.shape}; "
                        "use the ACT_data.mat of the CVACT release")
    splits = {}
    for split, (key, field) in CVACT_MAT_FIELDS.items():
        raw_ind = np.asarray(_struct_field(mat, key, field, path), dtype=np.float64)
        if raw_ind.size and not np.all(np.isfinite(raw_ind) & (raw_ind == np.round(raw_ind))):
            raise CVGLError(f"{path}: {key}.{field} holds non-integer indices (e.g. "
                            f"{raw_ind[~(raw_ind == np.round(raw_ind))].reshape(-1)[:1]}); the file is damaged, get "
                            "it again")
        ind = raw_ind.astype(np.int64) - 1  # MATLAB is 1-based
        if ind.size and (ind.min() < 0 or ind.max() >= len(ids)):
            raise CVGLError(f"{path}: {key}.{field} has indices outside 1..{len(ids)}; "
                            "the file is inconsistent, get it again")
        splits[split] = ind
    return ids, utm, splits


def _cvact_record(part_dir: str, pid: str, utm) -> PairRecord:
    return PairRecord(
        id=pid,
        ground=os.path.join(part_dir, "streetview", f"{pid}_grdView.jpg"),
        aerial=os.path.join(part_dir, "satview_polish", f"{pid}_satView_polish.jpg"),
        polar=os.path.join(part_dir, "polarmap", f"{pid}_satView_polish.png"),
        position=(float(utm[0]), float(utm[1])),
        ground_prepared=os.path.join(part_dir, "streetview_processed", f"{pid}_grdView.png"),
    )


def _read_cvact(root: str, split: str) -> list:
    ids, utm, splits = read_cvact_table(root)
    small = os.path.join(root, "ANU_data_small")
    test = os.path.join(root, "ANU_data_test")
    if split == "train":
        require_dir(small, "CVACT train images folder", "unpack ANU_data_small into the CVACT root")
        return [_cvact_record(small, ids[i], utm[i]) for i in splits[split]]
    if split == "test":
        require_dir(test, "CVACT test images folder", "unpack ANU_data_test into the CVACT root")
        return [_cvact_record(test, ids[i], utm[i]) for i in splits[split]]
    # val: from ANU_data_test as GeoDTR; a pair absent there is read from ANU_data_small if present there.
    if not os.path.isdir(test) and not os.path.isdir(small):
        raise CVGLError(f"CVACT images folder not found: {test} (unpack ANU_data_test, or ANU_data_small, "
                        "into the CVACT root)")
    records, fallback = [], 0
    for i in splits[split]:
        rec = _cvact_record(test, ids[i], utm[i])
        if not (os.path.isfile(rec.ground) and os.path.isfile(rec.aerial)):
            alt = _cvact_record(small, ids[i], utm[i])
            if os.path.isfile(alt.ground) and os.path.isfile(alt.aerial):
                rec, fallback = alt, fallback + 1
        records.append(rec)
    if fallback:
        print(f"cvact/val: {fallback} of {len(records)} pair(s) read from ANU_data_small "
              "(absent from ANU_data_test)", file=sys.stderr)
    return records
