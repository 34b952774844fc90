"""tf.data pipeline: exact pixels and normalisation per spec, prepared vs on-the-fly polar on a partly
prepared folder, CVACT crop, determinism/seeding, batch-of-one rule, sharding, positions, view datasets."""

import os

import numpy as np
import pytest
import tensorflow as tf

from common.data.pipeline import make_dataset, make_view_dataset, png_size, shard_records
from common.data.readers import prepared_polar_path, read_split
from common.data.specs import VGG_BGR_MEAN, InputSpec, denormalise, normalise
from geodtr_tf.specs import GEODTR_POLAR, GEODTR_RAW
from mgtl_tf.safa.specs import SAFA_POLAR
from common.synthetic.toy import write_toy_cvact, write_toy_cvusa
from common.errors import CVGLError
from common.data.polar import polar_transform
from experiments import prepare

TINY = InputSpec("tiny_polar", (8, 44), (12, 40), True, "tanh")
TINY_BGR = InputSpec("tiny_bgr", (8, 44), (12, 40), True, "vgg_bgr")
TINY_RAW = InputSpec("tiny_raw", (8, 44), (16, 16), False, "tanh")


@pytest.fixture(scope="module")
def cvusa(tmp_path_factory):
    return write_toy_cvusa(tmp_path_factory.mktemp("u"), n_train=7, n_val=2, aerial_size=32, pano_size=(8, 44))


def decode(path):
    """RGB float32 as OpenCV decodes it: the pipeline must agree with the offline tools exactly."""
    import cv2

    return cv2.imread(path, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32)


def batches(ds, key=None):
    if key:
        return [b[key].numpy() for b in ds]
    return [{k: v.numpy() for k, v in b.items()} if isinstance(b, dict) else b.numpy() for b in ds]


def test_normalise_matches_its_definition():
    x = np.random.default_rng(0).uniform(0, 255, (2, 3, 4, 3)).astype(np.float32)
    np.testing.assert_allclose(normalise(x, GEODTR_POLAR), x / 127.5 - 1, atol=1e-6)
    bgr = normalise(tf.constant(x), SAFA_POLAR).numpy()
    for c in range(3):
        np.testing.assert_allclose(bgr[..., c], x[..., 2 - c] - VGG_BGR_MEAN[c], atol=1e-4)
    for spec in (GEODTR_RAW, SAFA_POLAR):
        np.testing.assert_allclose(denormalise(normalise(x, spec), spec), x, atol=1e-4)


def test_full_size_specs_shapes_and_ranges(cvusa):
    recs = read_split("cvusa", cvusa, "train")
    for spec, augment in ((GEODTR_POLAR, "strong"), (GEODTR_RAW, None), (SAFA_POLAR, None)):
        b = next(iter(make_dataset(recs, spec, 2, training=True, augment=augment, with_positions=True)))
        assert b["ground"].shape == (2, *spec.ground_size, 3) and b["ground"].dtype == tf.float32
        assert b["aerial"].shape == (2, *spec.aerial_size, 3)
        assert b["position"].shape == (2, 2)
        lo, hi = (-1.0, 1.0) if spec.normalisation == "tanh" else (-124.0, 152.0)
        for k in ("ground", "aerial"):
            assert lo - 1e-4 <= float(tf.reduce_min(b[k])) and float(tf.reduce_max(b[k])) <= hi + 1e-4


def test_exact_pixels_bgr_and_on_the_fly_polar(cvusa):
    recs = read_split("cvusa", cvusa, "val")
    tanh = batches(make_dataset(recs, TINY, 2, training=False))[0]
    bgr = batches(make_dataset(recs, TINY_BGR, 2, training=False))[0]
    for i, r in enumerate(recs):
        g = decode(r.ground)  # already 8 x 44: no resize
        np.testing.assert_allclose(tanh["ground"][i], g / 127.5 - 1, atol=1e-6)
        np.testing.assert_allclose(bgr["ground"][i], g[..., ::-1] - np.asarray(VGG_BGR_MEAN), atol=1e-4)
        # nothing prepared: the polar map is computed in the graph, to the reference formula
        ref = polar_transform(decode(r.aerial), *TINY.aerial_size)
        np.testing.assert_allclose((tanh["aerial"][i] + 1) * 127.5, ref, atol=0.02)


def test_partly_prepared_folder_gives_the_same_batches(tmp_path):
    root = write_toy_cvusa(tmp_path / "u", n_train=4, n_val=2, aerial_size=32, pano_size=(8, 44))
    recs = read_split("cvusa", root, "train")
    fly = batches(make_dataset(recs, TINY, 4, training=False), "aerial")[0]
    prepare.main(["--dataset", "cvusa", "--root", root, "--workers", "1", "--sizes", "12x40"])
    os.remove(prepared_polar_path(recs[1], (12, 40)))  # partly prepared
    # a canonical polar map of the right size is used; one of another size is ignored
    canonical = tf.io.encode_png(tf.fill((12, 40, 3), tf.constant(7, tf.uint8))).numpy()
    os.makedirs(os.path.dirname(recs[2].polar), exist_ok=True)
    os.remove(prepared_polar_path(recs[2], (12, 40)))
    open(recs[2].polar, "wb").write(canonical)
    open(recs[3].polar, "wb").write(tf.io.encode_png(tf.zeros((5, 5, 3), tf.uint8)).numpy())
    assert png_size(recs[2].polar) == (12, 40)
    mixed = batches(make_dataset(recs, TINY, 4, training=False), "aerial")[0]
    np.testing.assert_allclose(mixed[2], 7 / 127.5 - 1, atol=1e-6)
    for i in (0, 1, 3):  # prepared (rounded uint8) vs on the fly (float): half a grey level at most
        assert np.abs(mixed[i] - fly[i]).max() <= 0.51 / 127.5
    np.testing.assert_array_equal(mixed[1], fly[1])


def test_cvact_ground_crop_raw_or_prepared(tmp_path):
    root = write_toy_cvact(tmp_path / "a", n_train=3, n_val=2, n_test_extra=0, aerial_size=32, pano_size=(32, 64))
    spec = InputSpec("tiny_act", (16, 64), (12, 40), True, "tanh")
    recs = read_split("cvact", root, "val")
    raw = batches(make_dataset(recs, spec, 2, training=False, with_positions=True))[0]
    for i, r in enumerate(recs):
        np.testing.assert_allclose(raw["ground"][i], decode(r.ground)[8:24] / 127.5 - 1, atol=1e-6)
    np.testing.assert_allclose(raw["position"], [[30.0, 9.0], [40.0, 12.0]])  # relative to the km origin
    prepare.main(["--dataset", "cvact", "--root", root, "--workers", "1", "--sizes", "12x40"])
    prep = batches(make_dataset(recs, spec, 2, training=False))[0]
    assert np.abs(prep["ground"] - raw["ground"]).max() <= 4 / 127.5  # OpenCV vs TF JPEG decoding


def test_seeded_determinism_and_new_epochs(cvusa):
    recs = read_split("cvusa", cvusa, "train")

    def first_epochs(seed, epochs=2):
        return [np.concatenate(batches(make_dataset(recs, TINY_RAW, 3, training=True, augment="strong", seed=seed,
                                                    epoch=e), "aerial")) for e in range(epochs)]

    a, b = first_epochs(1), first_epochs(1, epochs=1)  # (other seeds differ: tests/test_augment.py)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], a[1])  # a new shuffle / new augmentation each epoch


@pytest.mark.slow
def test_endless_stream_and_skip_equal_the_passes(cvusa):
    """repeat=True is pass 0, 1, 2, ... back to back (no batch straddles two passes); skip_batches=g starts at
    global batch g without changing any batch (exact resume)."""
    recs = read_split("cvusa", cvusa, "train")  # 7 pairs, batch 3, no drop: passes of [3, 3] (1 pair left out)
    kw = dict(training=True, augment="strong", seed=4, drop_remainder=False, verbose=False)
    passes = [batches(make_dataset(recs, TINY_RAW, 3, epoch=e, **kw)) for e in range(3)]
    flat = [b for p in passes for b in p]
    assert [int(b["ground"].shape[0]) for b in flat] == [3, 3] * 3
    stream = make_dataset(recs, TINY_RAW, 3, repeat=True, **kw)
    got = [{k: v.numpy() for k, v in b.items()} for b in stream.take(6)]
    for x, y in zip(got, flat):
        np.testing.assert_array_equal(x["aerial"], y["aerial"])
        np.testing.assert_array_equal(x["ground"], y["ground"])
    for g in (1, 2, 3, 5):
        later = [{k: v.numpy() for k, v in b.items()} for b in
                 make_dataset(recs, TINY_RAW, 3, repeat=True, skip_batches=g, **kw).take(6 - g)]
        for x, y in zip(later, flat[g:]):
            np.testing.assert_array_equal(x["aerial"], y["aerial"])
    assert not np.array_equal(flat[0]["aerial"], flat[2]["aerial"])  # pass 1 is a new order / augmentation


def test_batch_of_one_never_reaches_the_loss(cvusa, capsys):
    recs = read_split("cvusa", cvusa, "train")  # 7 pairs
    sizes = lambda ds: [int(b["ground"].shape[0]) for b in ds]  # noqa: E731
    assert sizes(make_dataset(recs, TINY_RAW, 3, training=False)) == [3, 3]
    assert "final batch of 1" in capsys.readouterr().err
    assert sizes(make_dataset(recs, TINY_RAW, 4, training=False)) == [4, 3]
    assert sizes(make_dataset(recs, TINY_RAW, 3, training=True)) == [3, 3]  # drop_remainder default
    assert sizes(make_dataset(recs[:6], TINY_RAW, 4, training=True, drop_remainder=False)) == [4, 2]
    with pytest.raises(CVGLError, match="at least 2"):
        make_dataset(recs, TINY_RAW, 1, training=True)
    with pytest.raises(CVGLError, match="cannot make a batch"):
        make_dataset(recs[:3], TINY_RAW, 4, training=True)


def test_sharding_splits_the_records(cvusa):
    recs = read_split("cvusa", cvusa, "train")
    parts = [shard_records(recs, 3, i) for i in range(3)]
    assert sorted(r.id for p in parts for r in p) == sorted(r.id for r in recs)
    assert [r.id for r in parts[1]] == [recs[1].id, recs[4].id]
    ds = make_dataset(recs, TINY_RAW, 3, training=False, shard=(2, 1), with_positions=True)
    got = np.concatenate(batches(ds, "position"))
    np.testing.assert_allclose(got[:, 0], [60.0, 120.0, 180.0])  # recs 1, 3, 5: easting 500060.. - 500000
    with pytest.raises(CVGLError, match="shard"):
        shard_records(recs, 2, 2)


def test_positions_required_when_asked(tmp_path):
    root = write_toy_cvusa(tmp_path, n_train=2, n_val=2, aerial_size=16, pano_size=(4, 22), coordinates=False)
    with pytest.raises(CVGLError, match="coordinates.csv"):
        make_dataset(read_split("cvusa", root, "train"), TINY_RAW, 2, training=True, with_positions=True)


def test_view_dataset_keeps_order_and_last_partial_batch(cvusa):
    recs = read_split("cvusa", cvusa, "train")
    ground = batches(make_view_dataset(recs, TINY, "ground", 3))
    aerial = batches(make_view_dataset(recs, TINY, "aerial", 3))
    assert [len(b) for b in ground] == [3, 3, 1] and [len(b) for b in aerial] == [3, 3, 1]
    pairs = batches(make_dataset(recs[:6], TINY, 6, training=False))[0]
    np.testing.assert_array_equal(np.concatenate(ground)[:6], pairs["ground"])
    np.testing.assert_array_equal(np.concatenate(aerial)[:6], pairs["aerial"])
    with pytest.raises(CVGLError, match="view"):
        make_view_dataset(recs, TINY, "both", 3)
