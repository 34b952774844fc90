"""experiments.prepare: counts table, precomputed polar maps for every size and CVACT crops (exact contents),
resumable and atomic, and bad inputs ending in one line, exit 2, no traceback (CLI in a subprocess)."""

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from common.data.readers import prepared_polar_path, read_split
from common.synthetic.toy import write_toy_cvact, write_toy_cvusa
from common.errors import CVGLError
from common.data.polar import polar_transform_fast
from experiments import prepare

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = ["12x40", "10x36"]


def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("CVGL_TRACEBACK", None)
    return subprocess.run([sys.executable, "-m", "experiments.prepare", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def _all_files(root):
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)


def test_cvusa_prepare_writes_exact_polar_maps_and_resumes(tmp_path, capsys):
    root = write_toy_cvusa(tmp_path / "u", n_train=4, n_val=2, aerial_size=32, pano_size=(8, 44))
    assert prepare.main(["--dataset", "cvusa", "--root", root, "--workers", "1", "--sizes", *SIZES]) == 0
    out = capsys.readouterr().out
    assert "35,532" in out and "8,884" in out and "wrote 12 file(s)" in out
    for r in read_split("cvusa", root, "train") + read_split("cvusa", root, "val"):
        aerial = cv2.imread(r.aerial)
        for size in ((12, 40), (10, 36)):
            got = cv2.imread(prepared_polar_path(r, size))
            np.testing.assert_array_equal(got, polar_transform_fast(aerial, *size))
    assert not [f for f in _all_files(root) if ".tmp" in f]  # atomic: no temporary left
    # resumable: a second run writes nothing; a lost output is rewritten alone
    before = {f: os.path.getmtime(f) for f in _all_files(root) if f.endswith(".png")}
    victim = prepared_polar_path(read_split("cvusa", root, "val")[1], (10, 36))
    os.remove(victim)
    prepare.main(["--dataset", "cvusa", "--root", root, "--workers", "1", "--sizes", *SIZES])
    assert "wrote 1 file(s)" in capsys.readouterr().out
    after = {f: os.path.getmtime(f) for f in _all_files(root) if f.endswith(".png")}
    assert os.path.isfile(victim) and all(after[f] == t for f, t in before.items() if f != victim)


def test_cvact_prepare_crops_ground_in_parallel(tmp_path, capsys):
    root = write_toy_cvact(tmp_path / "a", n_train=4, n_val=3, n_test_extra=2, aerial_size=32, pano_size=(32, 64))
    assert prepare.main(["--dataset", "cvact", "--root", root, "--workers", "2", "--sizes", "12x40"]) == 0
    out = capsys.readouterr().out
    assert "92,802" in out and "prepared 9 pair(s)" in out  # val and test share their pairs
    for r in read_split("cvact", root, "test"):
        crop = cv2.imread(r.ground_prepared)
        np.testing.assert_array_equal(crop, cv2.imread(r.ground)[8:24])  # rows 208:624 of 832, scaled to 32
        assert os.path.isfile(prepared_polar_path(r, (12, 40)))


def test_check_only_writes_nothing(tmp_path, capsys):
    root = write_toy_cvusa(tmp_path / "u", n_train=2, n_val=2, aerial_size=16, pano_size=(4, 22))
    before = _all_files(root)
    assert prepare.main(["--dataset", "cvusa", "--root", root, "--check-only"]) == 0
    assert "nothing written" in capsys.readouterr().out and _all_files(root) == before


def test_bad_sizes_argument():
    with pytest.raises(CVGLError, match="HxW"):
        prepare.main(["--dataset", "cvusa", "--root", ".", "--sizes", "122by671"])


def _one_error_line(res, *needles):
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, res.stderr
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


def test_cli_failures_are_one_line(tmp_path):
    _one_error_line(run_cli("--dataset", "cvusa", "--root", str(tmp_path / "missing")), "missing", "--root")
    root = write_toy_cvusa(tmp_path / "u", n_train=3, n_val=2, aerial_size=16, pano_size=(4, 22))
    os.remove(os.path.join(root, "splits", "val-19zl.csv"))
    _one_error_line(run_cli("--dataset", "cvusa", "--root", root), "val-19zl.csv")
    act = tmp_path / "act"
    act.mkdir()
    _one_error_line(run_cli("--dataset", "cvact", "--root", str(act)), "ACT_data.mat")


def _in_process(capsys, *args, fails=True):
    """Run prepare.main in this process; returns (error message or None, stderr)."""
    argv = ["--dataset", "cvusa", "--workers", "1", "--sizes", "6x20", *args]
    if fails:
        with pytest.raises(CVGLError) as err:
            prepare.main(argv)
        return str(err.value), capsys.readouterr().err
    assert prepare.main(argv) == 0
    return None, capsys.readouterr().err


def test_cli_unreadable_and_wrong_size_images(tmp_path, capsys):
    root = write_toy_cvusa(tmp_path / "u", n_train=3, n_val=2, aerial_size=16, pano_size=(4, 22))
    corrupt = os.path.join(root, "bingmap", "19", "0000002.jpg")
    with open(corrupt, "wb") as fh:
        fh.write(b"not a jpeg")
    res = run_cli("--dataset", "cvusa", "--root", root, "--workers", "1", "--sizes", "6x20")
    # found by the layout check itself (head / tail bytes), before any decoding
    _one_error_line(res, "missing or bad", "--allow-missing", corrupt)
    assert f"missing pair 0000002: {corrupt} is not a JPEG or PNG image" in res.stderr
    _, err = _in_process(capsys, "--root", root, "--allow-missing", fails=False)
    assert "dropped pair 0000002" in err
    assert [r.id for r in read_split("cvusa", root, "train", allow_missing=True)] == ["0000001", "0000003"]
    # an aerial image that is not square
    wide = os.path.join(root, "bingmap", "19", "0000002.jpg")
    cv2.imwrite(wide, np.zeros((16, 20, 3), np.uint8))
    msg, err = _in_process(capsys, "--root", root)
    assert "bad images" in msg and "16x20, not square" in err
    # fixed: the pair is taken off bad_pairs.txt
    cv2.imwrite(wide, np.zeros((16, 16, 3), np.uint8))
    _in_process(capsys, "--root", root, fails=False)
    assert not os.path.exists(os.path.join(root, "bad_pairs.txt"))
    assert len(read_split("cvusa", root, "train")) == 3
    # a panorama of the wrong shape in a finished pair: resume skips it unread, --verify finds it
    pano = os.path.join(root, "streetview", "panos", "0000003.jpg")
    cv2.imwrite(pano, np.zeros((16, 16, 3), np.uint8))
    _, err = _in_process(capsys, "--root", root, fails=False)
    assert pano not in err
    msg, err = _in_process(capsys, "--root", root, "--verify")
    assert f"panorama {pano} is 16x16, expected width/height 5.50" in err
    # a missing image is listed by name and stops the run (CLI: one line, exit 2)
    os.remove(wide)
    res = run_cli("--dataset", "cvusa", "--root", root, "--check-only")
    _one_error_line(res, "missing", wide)
    assert f"missing pair 0000002: no file {wide}" in res.stderr


def test_help_explains_every_flag():
    text = prepare.build_parser().format_help()
    for flag in ("--dataset", "--root", "--workers", "--check-only", "--allow-missing", "--sizes", "--splits",
                 "--verify"):
        assert flag in text


def test_polar_rounding_defaults_to_each_original_script_and_is_recorded(tmp_path, capsys):
    """auto: 122x671 maps truncated (GeoDTR's data_preparation.py), 112x616 byte-scaled (SAFA's imsave), any
    other size rounded; each size folder records its rounding in polar.json; continuing a folder with
    another rounding is refused, as is an older folder without a record unless it is continued 'round'."""
    import json

    from common.data.polar import polar_transform, to_uint8
    from common.data.prepare import folder_rounding

    root = write_toy_cvusa(tmp_path / "u", n_train=2, n_val=1, aerial_size=48, pano_size=(8, 44))
    sizes = {(122, 671): "floor", (112, 616): "bytescale", (12, 40): "round"}
    assert prepare.main(["--dataset", "cvusa", "--root", root, "--workers", "1",
                         "--sizes", *[f"{h}x{w}" for h, w in sizes]]) == 0
    out = capsys.readouterr().out
    assert "polar maps 122x671: floor" in out and "polar maps 112x616: bytescale" in out
    rec = read_split("cvusa", root, "train")[0]
    aerial = cv2.imread(rec.aerial)
    for size, rounding in sizes.items():
        folder = os.path.dirname(prepared_polar_path(rec, size))
        record = json.load(open(os.path.join(folder, "polar.json")))
        assert record["rounding"] == rounding == folder_rounding(folder)
        assert (record["height"], record["width"]) == size
        want = to_uint8(polar_transform(aerial, *size, dtype=np.float64), rounding)
        np.testing.assert_array_equal(cv2.imread(prepared_polar_path(rec, size)), want)

    from common.data.pipeline import aerial_input_note
    from common.data.specs import InputSpec

    recs = read_split("cvusa", root, "train")
    note = aerial_input_note(recs, InputSpec("t", (122, 671), (122, 671), True, "tanh"))
    assert "2 prepared polar maps in" in note and "(rounding: floor)" in note  # what training and evaluate print
    assert "computed on the fly" in aerial_input_note(recs, InputSpec("t", (20, 88), (20, 88), True, "tanh"))

    with pytest.raises(CVGLError, match="rounded 'floor', not 'round'.*--polar-rounding floor"):
        prepare.main(["--dataset", "cvusa", "--root", root, "--workers", "1", "--sizes", "122x671",
                      "--polar-rounding", "round"])
    older = os.path.dirname(prepared_polar_path(rec, (112, 616)))
    os.remove(os.path.join(older, "polar.json"))  # as an earlier version of prepare left it
    assert folder_rounding(older) == "round"
    with pytest.raises(CVGLError, match="earlier prepare.*--polar-rounding round"):
        prepare.main(["--dataset", "cvusa", "--root", root, "--workers", "1", "--sizes", "112x616"])
    assert prepare.main(["--dataset", "cvusa", "--root", root, "--workers", "1", "--sizes", "112x616",
                         "--polar-rounding", "round"]) == 0
    assert folder_rounding(older) == "round"
