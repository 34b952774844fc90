"""CVUSA / CVACT readers on tiny folders in the real layouts (ACT_data.mat written by scipy.io.savemat the way
MATLAB stores structs), and every bad input ending in a CVGLError that names the file and the fix."""

import os

import numpy as np
import pytest
import scipy.io

from common.data.readers import prepared_polar_path, read_cvact_table, read_split
from common.synthetic.toy import write_act_mat, write_toy_cvact, write_toy_cvusa
from common.errors import CVGLError


@pytest.fixture(scope="module")
def cvusa(tmp_path_factory):
    return write_toy_cvusa(tmp_path_factory.mktemp("cvusa"), n_train=5, n_val=3, aerial_size=32,
                           pano_size=(8, 44))


@pytest.fixture(scope="module")
def cvact(tmp_path_factory):
    return write_toy_cvact(tmp_path_factory.mktemp("cvact"), n_train=4, n_val=3, n_test_extra=2,
                           aerial_size=32, pano_size=(16, 32))


def test_cvusa_records(cvusa):
    train = read_split("cvusa", cvusa, "train")
    val = read_split("cvusa", cvusa, "val")
    assert [r.id for r in train] == [f"{i:07d}" for i in range(1, 6)]
    assert len(val) == 3 and val[0].id == "0000006"
    r = train[0]
    assert r.aerial == os.path.join(cvusa, "bingmap", "19", "0000001.jpg")
    assert r.ground == os.path.join(cvusa, "streetview", "panos", "0000001.jpg")
    assert r.polar == os.path.join(cvusa, "polarmap", "19", "0000001.png")
    assert r.ground_prepared is None
    assert r.position == (500030.0, 4400007.0)  # from coordinates.csv (easting, northing)
    assert prepared_polar_path(r, (122, 671)) == os.path.join(cvusa, "polarmap", "19_122x671", "0000001.png")


def test_cvusa_without_coordinates_has_no_positions(tmp_path):
    root = write_toy_cvusa(tmp_path, n_train=2, n_val=2, aerial_size=16, pano_size=(4, 22), coordinates=False)
    assert all(r.position is None for r in read_split("cvusa", root, "train"))


def test_cvact_records_from_matlab_structs(cvact):
    ids, utm, splits = read_cvact_table(cvact)
    assert len(ids) == 9 and utm.shape == (9, 2)
    np.testing.assert_array_equal(splits["train"], np.arange(4))  # 1-based in the file
    np.testing.assert_array_equal(splits["val"], np.arange(4, 7))
    np.testing.assert_array_equal(splits["test"], np.arange(4, 9))
    train = read_split("cvact", cvact, "train")
    val = read_split("cvact", cvact, "val")
    test = read_split("cvact", cvact, "test")
    assert (len(train), len(val), len(test)) == (4, 3, 5)
    r = val[0]
    assert r.id == ids[4] and r.position == tuple(utm[4])
    assert r.aerial == os.path.join(cvact, "ANU_data_test", "satview_polish", f"{ids[4]}_satView_polish.jpg")
    assert r.ground == os.path.join(cvact, "ANU_data_test", "streetview", f"{ids[4]}_grdView.jpg")
    assert r.polar == os.path.join(cvact, "ANU_data_test", "polarmap", f"{ids[4]}_satView_polish.png")
    assert r.ground_prepared == os.path.join(cvact, "ANU_data_test", "streetview_processed", f"{ids[4]}_grdView.png")
    assert train[0].aerial.startswith(os.path.join(cvact, "ANU_data_small", ""))
    assert prepared_polar_path(r, (112, 616)) == os.path.join(
        cvact, "ANU_data_test", "polarmap_112x616", f"{ids[4]}_satView_polish.png")
    # what loadmat returns really is the MATLAB struct form: (1,1) structured arrays, (N,1) doubles
    mat = scipy.io.loadmat(os.path.join(cvact, "ACT_data.mat"))
    assert mat["trainSet"].shape == (1, 1) and mat["trainSet"]["trainInd"][0][0].shape == (4, 1)


def test_cvact_cell_array_ids_and_val_fallback(tmp_path, cvact, capsys):
    import shutil

    root = str(tmp_path / "act")
    shutil.copytree(cvact, root)
    ids, utm, splits = read_cvact_table(root)
    cell = np.empty((len(ids), 1), dtype=object)
    for i, pid in enumerate(ids):
        cell[i, 0] = np.array([pid])
    scipy.io.savemat(os.path.join(root, "ACT_data.mat"), {
        "panoIds": cell, "utm": utm, "trainSet": {"trainInd": (splits["train"] + 1.0)[:, None]},
        "valSet": {"valInd": (splits["val"] + 1.0)[:, None]}, "valSetAll": {"valInd": (splits["test"] + 1.0)[:, None]}})
    assert read_cvact_table(root)[0] == ids
    # a val pair absent from ANU_data_test but present in ANU_data_small is read from there
    vid = ids[splits["val"][0]]
    for sub, name in (("streetview", f"{vid}_grdView.jpg"), ("satview_polish", f"{vid}_satView_polish.jpg")):
        os.makedirs(os.path.join(root, "ANU_data_small", sub), exist_ok=True)
        shutil.move(os.path.join(root, "ANU_data_test", sub, name), os.path.join(root, "ANU_data_small", sub, name))
    val = read_split("cvact", root, "val")
    assert val[0].aerial.startswith(os.path.join(root, "ANU_data_small", ""))
    assert "1 of 3 pair(s) read from ANU_data_small" in capsys.readouterr().err
    with pytest.raises(CVGLError, match="missing"):  # test still wants it in ANU_data_test
        read_split("cvact", root, "test")


def test_missing_images_are_listed_and_dropped_only_on_request(tmp_path, capsys):
    root = write_toy_cvusa(tmp_path, n_train=3, n_val=2, aerial_size=16, pano_size=(4, 22))
    gone = os.path.join(root, "streetview", "panos", "0000002.jpg")
    os.remove(gone)
    with pytest.raises(CVGLError) as err:
        read_split("cvusa", root, "train")
    assert gone in str(err.value) and "--allow-missing" in str(err.value)
    assert gone in capsys.readouterr().err
    kept = read_split("cvusa", root, "train", allow_missing=True)
    assert [r.id for r in kept] == ["0000001", "0000003"]
    out = capsys.readouterr().err
    assert f"dropped pair 0000002: no file {gone}" in out and "2 of 3 kept" in out
    # pairs that prepare found bad (bad_pairs.txt) are refused / dropped the same way
    with open(os.path.join(root, "bad_pairs.txt"), "w") as fh:
        fh.write("0000004\tunreadable image x.jpg\n")
    with pytest.raises(CVGLError, match="missing or bad"):
        read_split("cvusa", root, "val")
    assert [r.id for r in read_split("cvusa", root, "val", allow_missing=True)] == ["0000005"]


def _err(fn, *a, **k):
    with pytest.raises(CVGLError) as err:
        fn(*a, **k)
    return str(err.value)


def test_bad_inputs_name_the_thing_and_the_fix(tmp_path, cvusa):
    msg = _err(read_split, "cvusa", tmp_path / "nowhere", "train")
    assert "nowhere" in msg and "--root" in msg
    assert "unknown dataset" in _err(read_split, "kitti", cvusa, "train")
    assert "no split 'test'" in _err(read_split, "cvusa", cvusa, "test")
    empty = tmp_path / "empty"
    empty.mkdir()
    msg = _err(read_split, "cvusa", empty, "val")
    assert "val-19zl.csv" in msg and "splits" in msg
    msg = _err(read_split, "cvact", empty, "train")
    assert "ACT_data.mat" in msg and "download" in msg
    (empty / "coordinates.csv").write_text("pid,x,y\n")
    os.makedirs(empty / "splits")
    (empty / "splits" / "train-19zl.csv").write_text("bingmap/19/1.jpg,streetview/panos/1.jpg,a\n")
    assert "header" in _err(read_split, "cvusa", empty, "train")
    (empty / "coordinates.csv").write_text("id,lat,lon,easting,northing\n2,0,0,1,1\n")
    assert "no row for id 1" in _err(read_split, "cvusa", empty, "train")


def test_bad_mat_files(tmp_path):
    root = tmp_path
    os.makedirs(root / "ANU_data_small")
    ids = ["a" * 22, "b" * 22]
    utm = np.zeros((2, 2))
    mat = str(root / "ACT_data.mat")
    scipy.io.savemat(mat, {"panoIds": np.asarray(ids), "utm": utm, "trainSet": {"trainInd": [[1.0]]},
                           "valSet": {"valInd": [[2.0]]}})
    msg = _err(read_split, "cvact", root, "train")
    assert "ACT_data.mat" in msg and "no key 'valSetAll'" in msg
    scipy.io.savemat(mat, {"panoIds": np.asarray(ids), "utm": utm, "trainSet": {"trainIdx": [[1.0]]},
                           "valSet": {"valInd": [[2.0]]}, "valSetAll": {"valInd": [[2.0]]}})
    assert "no field 'trainInd'" in _err(read_split, "cvact", root, "train")
    write_act_mat(mat, ids, utm, [3], [1], [1, 2])
    assert "outside 1..2" in _err(read_split, "cvact", root, "train")
    write_act_mat(mat, ids, np.zeros((3, 2)), [1], [1], [1, 2])
    assert "'utm' must be N x 2" in _err(read_split, "cvact", root, "train")
    with open(mat, "w") as fh:
        fh.write("version https://git-lfs.github.com/spec/v1\n")
    msg = _err(read_split, "cvact", root, "train")
    assert "cannot read" in msg and "ACT_data.mat" in msg
    write_act_mat(mat, ids, utm, [1], [1], [1, 2])
    assert "ANU_data_test" in _err(read_split, "cvact", root, "test")
