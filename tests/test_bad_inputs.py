"""The bad-input catalogue: each hostile or mistaken input, run through the command line in a fresh process,
gives exit status 2 and one ``error:`` line naming the thing, never a traceback, and changes nothing outside
its outputs. (Exports whose graph holds a foreign op: tests/test_export_security.py; run directories, full
disks and synth flags: tests/test_bad_inputs_runs.py.)
"""

from __future__ import annotations

import json
import os
import shutil

import cv2
import numpy as np
import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _snapshot(folder) -> dict:
    out = {}
    for dp, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(dp, f)
            out[os.path.relpath(p, folder)] = (os.path.getsize(p), os.path.getmtime(p))
    return out


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """A tiny world, a stand-in export, its index, and the bad inputs made from them."""
    import tests.standin_family as fam
    from common.data.readers import read_split
    from common.serving.export import load_export, write_export
    from common.serving.index import build_index
    from common.serving.preprocess import end_to_end
    from tests.helpers.world import tiny_world

    base = tmp_path_factory.mktemp("bad")
    world = tiny_world(base, "cvusa", n_train=8, n_val=8, aerial_size=64, pano_size=(16, 88))
    model = fam.build_model({}, fam.STANDIN_SPEC)
    run = base / "run"
    (run / "checkpoints").mkdir(parents=True)
    weights = str(run / "checkpoints" / "best.keras")
    model.save(weights)
    export = str(base / "export")
    write_export(end_to_end(model), export, {"name": "standin_tiny", "model": {"family": "standin"}})
    index = str(base / "index.npz")
    build_index(load_export(export), read_split("cvusa", world, "val"), index, progress=False)
    b = {"base": str(base), "world": world, "export": export, "index": index, "weights": weights, "run": str(run)}

    rng = np.random.default_rng(0)
    for name, (h, w) in {"q1x1": (1, 1), "q10x10": (10, 10), "qhuge": (400, 2200)}.items():
        b[name] = str(base / f"{name}.png")
        cv2.imwrite(b[name], rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    b["trunc_index"] = str(base / "trunc_index.npz")
    data = open(index, "rb").read()
    open(b["trunc_index"], "wb").write(data[: len(data) // 2])

    csv_rel = os.path.join("splits", "val-19zl.csv")
    for name, first in (("w_escape", "../../outside/sat.jpg"), ("w_abs", "/etc/passwd")):
        copy = str(base / name)
        shutil.copytree(world, copy)
        rows = open(os.path.join(copy, csv_rel)).read().splitlines()
        cells = rows[0].split(",")
        cells[0] = first
        rows[0] = ",".join(cells)
        open(os.path.join(copy, csv_rel), "w").write("\n".join(rows) + "\n")
        b[name] = copy
    trunc = str(base / "w_trunc")
    shutil.copytree(world, trunc)
    aerial = read_split("cvusa", trunc, "val")[0].aerial
    data = open(aerial, "rb").read()
    open(aerial, "wb").write(data[: len(data) // 2])
    b["w_trunc"], b["trunc_file"] = trunc, aerial
    empty = str(base / "w_empty")
    shutil.copytree(world, empty)
    open(read_split("cvusa", empty, "val")[1].ground, "wb").close()
    b["w_empty"] = empty

    unrelated = base / "unrelated"
    unrelated.mkdir()
    (unrelated / "precious.txt").write_text("keep me")
    b["unrelated"] = str(unrelated)

    cfg = yaml.safe_load(open(os.path.join(ROOT, "tests", "standin_family", "configs", "standin_tiny.yaml")))
    for name, edit in {
        "c_epochs_word": lambda c: c["train"].update(epochs="three"),
        "c_lr_word": lambda c: c["train"]["optimizer"].update(learning_rate="fast"),
        "c_lr_negative": lambda c: c["train"]["optimizer"].update(learning_rate=-1e-3),
        "c_batch_float": lambda c: c["train"].update(batch_size=8.7),
        "c_model_string": lambda c: c.update(model="standin"),
        "c_unknown_top": lambda c: c.update(trian={"epochs": 1}),
        "c_optimizer_typo": lambda c: c["train"].update(optimizr=c["train"].pop("optimizer")),
        "c_width_negative": lambda c: c["model"].update(width=-4),
        "c_width_word": lambda c: c["model"].update(width="two"),
    }.items():
        c = json.loads(json.dumps(cfg))
        edit(c)
        b[name] = str(base / f"{name}.yaml")
        open(b[name], "w").write(yaml.safe_dump(c))
    return b


from tests.helpers.cli_cases import assert_one_error as _assert_one_error, run_cases as _run  # noqa: E402


def _check_cases(cases: dict) -> None:
    """Run ``{name: ((module, argv), needles)}`` in one process; each must be one error line with its needles."""
    results = _run([c for c, _ in cases.values()])
    for (name, (_, needles)), res in zip(cases.items(), results):
        try:
            _assert_one_error(res, *needles)
        except AssertionError as exc:
            raise AssertionError(f"case {name!r}: {exc}") from None


@pytest.mark.slow
def test_serving_and_data_bad_inputs(bench, tmp_path):
    b = bench
    loc = ["--export", b["export"], "--index", b["index"], "--out", str(tmp_path / "loc"), "--query"]
    build = ["build", "--export", b["export"], "--dataset", "cvusa", "--root", b["world"], "--split", "val",
             "--out", str(tmp_path / "i.npz")]
    ev = ["--dataset", "cvusa", "--split", "val", "--export", b["export"], "--no-progress", "--out",
          str(tmp_path / "e.json"), "--root"]
    cases = {
        "query 1x1": (("experiments.localize", loc + [b["q1x1"]]), ("1x1 pixels", "too small")),
        "query 10x10": (("experiments.localize", loc + [b["q10x10"]]), ("10x10 pixels",)),
        "truncated index (localize)": (("experiments.localize", loc[:2] + ["--index", b["trunc_index"]] + loc[4:]
                                        + [b["q10x10"]]), ("trunc_index.npz", "unreadable")),
        "truncated index (info)": (("experiments.index", ["info", "--index", b["trunc_index"]]), ("unreadable",)),
        "checkpoint-every 0": (("experiments.index", build + ["--checkpoint-every", "0"]), ("--checkpoint-every",)),
        "checkpoint-every -1": (("experiments.index", build + ["--checkpoint-every", "-1"]), ("--checkpoint-every",)),
        "limit -3": (("experiments.index", build + ["--limit", "-3"]), ("--limit",)),
        "batch-size 0": (("experiments.index", build + ["--batch-size", "0"]), ("--batch-size",)),
        "csv row leaves the root": (("experiments.evaluate", ev + [b["w_escape"]]), ("leaves the dataset root",)),
        "csv row absolute": (("experiments.evaluate", ev + [b["w_abs"]]), ("/etc/passwd", "not relative")),
        "csv row absolute (index)": (("experiments.index", build[:6] + [b["w_abs"]] + build[7:]), ("/etc/passwd",)),
        "truncated jpeg (evaluate)": (("experiments.evaluate", ev + [b["w_trunc"]]), ("truncated JPEG",)),
        "truncated jpeg (prepare)": (("experiments.prepare", ["--dataset", "cvusa", "--root", b["w_trunc"],
                                                             "--workers", "1", "--check-only"]), ("truncated JPEG",)),
        "empty image": (("experiments.evaluate", ev + [b["w_empty"]]), ("0 bytes",)),
        "overwrite unrelated dir": (("experiments.export", ["--weights", b["weights"], "--config", "standin_tiny",
                                                           "--out", b["unrelated"], "--overwrite"]),
                                    ("not an export directory",)),
        "overwrite the source": (("experiments.export", ["--weights", b["weights"], "--config", "standin_tiny",
                                                        "--out", os.path.dirname(b["weights"]), "--overwrite"]),
                                 ("source of this export",)),
    }
    before = {k: _snapshot(b[k]) for k in ("world", "export", "run", "unrelated", "w_trunc")}
    _check_cases(cases)
    for k, snap in before.items():
        assert _snapshot(b[k]) == snap, f"{k} changed"
    assert not os.path.exists(os.path.join(os.path.dirname(b["base"]), "outside"))
    # a much larger query is handled (area-downscaled first), with one line saying so
    ok = _run([("experiments.localize", loc + [b["qhuge"]])])[0]
    assert ok["rc"] == 0 and "area-downscaled" in ok["stderr"] and not ok["traceback"], ok["stderr"][-1500:]


@pytest.mark.slow
def test_config_mistakes(bench, tmp_path):
    b = bench
    cases = {
        "c_epochs_word": ("train.epochs", "three"),
        "c_lr_word": ("learning_rate", "fast"),
        "c_lr_negative": ("learning_rate", "positive"),
        "c_batch_float": ("train.batch_size", "8.7"),
        "c_model_string": ("'model' must be a mapping",),
        "c_unknown_top": ("unknown key 'trian'", "did you mean 'train'"),
        "c_optimizer_typo": ("unknown key 'train.optimizr'", "did you mean 'optimizer'"),
        "c_width_negative": ("standin model cannot be built",),
        "c_width_word": ("standin model cannot be built",),
    }
    runs = {name: str(tmp_path / name) for name in cases}
    results = _run([("experiments.train", ["--config", b[name], "--root", b["world"], "--out", runs[name]])
                    for name in cases])
    for (name, needles), res in zip(cases.items(), results):
        try:
            _assert_one_error(res, *needles)
        except AssertionError as exc:
            raise AssertionError(f"case {name!r}: {exc}") from None
    # a start that failed (bad width) leaves nothing that blocks the corrected rerun in the same --out
    fixed = _run([("experiments.train", ["--config", "standin_tiny", "--root", b["world"], "--out",
                                         runs["c_width_negative"], "--epochs", "1"])])[0]
    assert fixed["rc"] == 0, fixed["stderr"][-2000:]


@pytest.mark.slow
def test_prepare_cleans_up_and_verify_redoes_damaged_outputs(bench, tmp_path):
    """A killed prepare's X.tmpPID.png is removed at the next start; --verify redoes an empty or cut prepared
    map; a CVACT index file with a non-integer index is refused, not truncated."""
    import scipy.io

    from common.data.readers import prepared_polar_path, read_split
    from tests.helpers.world import tiny_world

    world = str(tmp_path / "w")
    shutil.copytree(bench["world"], world)
    prep = ["--dataset", "cvusa", "--root", world, "--workers", "1", "--sizes", "8x44"]
    assert _run([("experiments.prepare", prep)])[0]["rc"] == 0
    rec = read_split("cvusa", world, "val")[0]
    polar = prepared_polar_path(rec, (8, 44))
    leftover = polar.replace(".png", ".tmp4242.png")
    open(leftover, "wb").write(b"\x89PNG half")
    open(polar, "wb").close()  # a zero-byte prepared map
    res = _run([("experiments.prepare", prep + ["--verify"])])[0]
    assert res["rc"] == 0 and not res["traceback"], res["stderr"][-1500:]
    assert "removed 1 temporary file" in res["stderr"]
    assert not os.path.exists(leftover) and cv2.imread(polar) is not None and cv2.imread(polar).shape[:2] == (8, 44)

    cvact = tiny_world(tmp_path, "cvact", n_train=4, n_val=4, n_test=2, aerial_size=64, pano_size=(32, 64))
    mat_path = os.path.join(cvact, "ACT_data.mat")
    mat = scipy.io.loadmat(mat_path)
    ind = mat["valSet"]["valInd"][0, 0].astype(np.float64)
    ind[0, 0] = 2.7
    mat["valSet"] = {"valInd": ind}
    scipy.io.savemat(mat_path, {k: v for k, v in mat.items() if not k.startswith("__")})
    res = _run([("experiments.prepare", ["--dataset", "cvact", "--root", cvact, "--check-only"])])[0]
    _assert_one_error(res, "non-integer indices", "ACT_data.mat")


def _scramble(path):
    """Overwrite the middle of an image with bytes no decoder accepts, keeping its head and end marker (so
    the cheap structural check passes and only a full decode finds it)."""
    data = bytearray(open(path, "rb").read())
    start = len(data) // 3
    for i in range(start, min(start + 400, len(data) - 4)):
        data[i] = 0xFF if i % 2 else 0x00
    open(path, "wb").write(bytes(data))


@pytest.mark.slow
def test_undecodable_images_are_named(bench, tmp_path):
    """A JPEG whole in structure but undecodable inside, in the training split (train) and in the val split
    (evaluate a .keras model, evaluate an export): one line naming the file; a zero-byte prepared polar map
    is named too. ``prepare --verify`` lists the bad pair, and ``--allow-missing`` then drops it and says so."""
    from common.data.images import image_problem
    from common.data.readers import prepared_polar_path, read_split

    world = str(tmp_path / "w")
    shutil.copytree(bench["world"], world)
    bad_train = read_split("cvusa", world, "train")[2].ground
    bad_val = read_split("cvusa", world, "val")[3].aerial
    for path in (bad_train, bad_val):
        _scramble(path)
        assert image_problem(path) is None  # the structure is whole
    zero = str(tmp_path / "z")
    shutil.copytree(bench["world"], zero)
    polar = prepared_polar_path(read_split("cvusa", zero, "val")[1], (16, 88))
    os.makedirs(os.path.dirname(polar), exist_ok=True)
    open(polar, "wb").close()

    ev = ["--dataset", "cvusa", "--split", "val", "--no-progress", "--out", str(tmp_path / "e.json")]
    cases = {
        "undecodable (train)": (("experiments.train", ["--config", "standin_tiny", "--root", world, "--out",
                                                      str(tmp_path / "run"), "--epochs", "1", "--val-split", "none"]),
                                (os.path.basename(bad_train), "cannot be decoded", "--verify")),
        "undecodable (evaluate --weights)": (("experiments.evaluate", ev + ["--root", world, "--weights",
                                                                           bench["weights"]]),
                                             (os.path.basename(bad_val), "cannot be decoded")),
        "undecodable (evaluate --export)": (("experiments.evaluate", ev + ["--root", world, "--export",
                                                                          bench["export"]]),
                                            (os.path.basename(bad_val),)),
        "zero-byte prepared map": (("experiments.evaluate", ev + ["--root", zero, "--weights", bench["weights"]]),
                                   (os.path.basename(polar), "0 bytes", "--verify")),
    }
    _check_cases(cases)

    verify, dropped = _run([
        ("experiments.prepare", ["--dataset", "cvusa", "--root", world, "--workers", "1", "--verify"]),
        ("experiments.evaluate", ev + ["--root", world, "--weights", bench["weights"], "--allow-missing"])])
    _assert_one_error(verify, "bad_pairs.txt")
    assert os.path.basename(bad_val) in verify["stderr"] and os.path.basename(bad_train) in verify["stderr"]
    assert dropped["rc"] == 0 and not dropped["traceback"], dropped["stderr"][-1500:]
    assert "dropped 1 pair(s)" in dropped["stderr"], dropped["stderr"][-1500:]
