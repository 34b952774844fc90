"""Sharded embedding (common.evaluation.shards): shards cut on the one-process batches, merged, equal the
one-process descriptors and index bit for bit; wrong sets of shards are refused.

The model is the real GeoDTR at its tiny size (convolutions, BatchNorm, attention: kernels whose rounding
depends on the batch), so an off-by-one batch boundary would show as differing bits.
"""

import json

import numpy as np
import pytest

from common.errors import CVGLError
from common.evaluation import shards as S


@pytest.mark.parametrize("n,b,chunk,parts", [(37, 4, None, 3), (100, 16, 40, 4), (8, 8, None, 1), (30, 5, 12, 2)])
def test_shards_tile_the_split_on_batch_boundaries(n, b, chunk, parts):
    starts = S.batch_starts(n, b, chunk)
    ranges = [S.shard_range(n, i, parts, b, chunk) for i in range(parts)]
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(r[1] == q[0] for r, q in zip(ranges, ranges[1:]))
    assert all(a in starts for a, _ in ranges if a < n)
    assert all(e - a > 0 for a, e in ranges)


def test_shard_flag_parsing():
    assert S.parse_shard("0/4") == (0, 4) and S.parse_shard("3/4") == (3, 4)
    for bad in ("4/4", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(CVGLError, match="--shard"):
            S.parse_shard(bad)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import keras

    from common.models.registry import get_family
    from tests.helpers.world import tiny_world

    base = tmp_path_factory.mktemp("shards")
    root = tiny_world(base, "cvusa", seed=3, n_train=0, n_val=21, aerial_size=64, pano_size=(32, 176))
    keras.utils.set_random_seed(0)
    model = get_family("geodtr").build_tiny()
    weights = str(base / "tiny.keras")
    model.save(weights)
    return root, weights, base


@pytest.mark.slow  # embeds 21 pairs five times with the tiny GeoDTR (~25 s)
def test_sharded_evaluate_equals_one_process_bit_for_bit(tiny, tmp_path, capsys):
    from experiments.evaluate import main

    root, weights, _ = tiny
    common = ["--dataset", "cvusa", "--split", "val", "--root", root, "--weights", weights, "--batch-size", "4",
              "--no-progress"]
    assert main(common + ["--save-descriptors", str(tmp_path / "one.npz"), "--out", str(tmp_path / "one.json")]) == 0
    for i in range(3):
        assert main(common + ["--shard", f"{i}/3", "--save-descriptors", str(tmp_path / f"s{i}.npz")]) == 0
    assert "shard 2/3: pairs 16..20 of 21" in capsys.readouterr().out  # 6 batches of 4: 2 + 2 + 2 batches
    shards = [str(tmp_path / f"s{i}.npz") for i in (2, 0, 1)]  # any order
    assert main(["--dataset", "cvusa", "--split", "val", "--root", root, "--descriptors", *shards,
                 "--out", str(tmp_path / "merged.json"), "--no-progress",
                 "--save-descriptors", str(tmp_path / "merged.npz")]) == 0
    with np.load(tmp_path / "one.npz") as a, np.load(tmp_path / "merged.npz") as b:
        for key in ("ground", "aerial", "ids"):
            np.testing.assert_array_equal(a[key], b[key])
    one, merged = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "merged"))
    assert one["metrics"] == merged["metrics"] and one["curve"] == merged["curve"]
    assert merged["source"]["kind"] == "descriptors"

    with pytest.raises(CVGLError, match="missing 1/3"):
        main(["--dataset", "cvusa", "--split", "val", "--root", root, "--descriptors", shards[0], shards[1]])
    with pytest.raises(CVGLError, match="repeated 0/3"):
        main(["--dataset", "cvusa", "--split", "val", "--root", root, "--descriptors", *shards, shards[1]])
    with pytest.raises(CVGLError, match="--shard needs --save-descriptors"):
        main(common + ["--shard", "0/3"])
    with pytest.raises(CVGLError, match="shard 0/8 is empty"):  # 6 batches for 8 shards
        main(common + ["--shard", "0/8", "--save-descriptors", str(tmp_path / "e.npz")])


@pytest.mark.slow  # builds the index three times with a tiny GeoDTR export (~25 s)
def test_sharded_index_equals_one_process_bit_for_bit(tiny, tmp_path):
    import keras

    from common.data.readers import read_split
    from common.serving.export import write_export
    from common.serving.index import load_index
    from common.serving.preprocess import end_to_end
    from experiments import index as index_cli

    root, weights, base = tiny
    export = str(base / "export")
    if not (base / "export").exists():
        write_export(end_to_end(keras.saving.load_model(weights)), export,
                     {"name": "geodtr_tiny", "dataset": "cvusa", "model": {"family": "geodtr"}})
    common = ["build", "--export", export, "--dataset", "cvusa", "--root", root, "--batch-size", "3",
              "--checkpoint-every", "6"]
    assert index_cli.main(common + ["--out", str(tmp_path / "one.npz")]) == 0
    for i in range(2):
        assert index_cli.main(common + ["--shard", f"{i}/2", "--out", str(tmp_path / f"p{i}.npz")]) == 0
    with pytest.raises(CVGLError, match="shard 0/2 of an index build"):
        load_index(str(tmp_path / "p0.npz"))
    assert index_cli.main(["merge", "--out", str(tmp_path / "merged.npz"), str(tmp_path / "p1.npz"),
                           str(tmp_path / "p0.npz")]) == 0
    one, merged = load_index(str(tmp_path / "one.npz")), load_index(str(tmp_path / "merged.npz"))
    np.testing.assert_array_equal(one.embeddings, merged.embeddings)
    assert one.ids == merged.ids == [r.id for r in read_split("cvusa", root, "val")]
    np.testing.assert_array_equal(one.positions, merged.positions)
    assert one.aerial_paths == merged.aerial_paths and merged.meta["merged_from"] == 2
    drop = ("created", "merged_from")
    assert {k: v for k, v in one.meta.items() if k not in drop} == {k: v for k, v in merged.meta.items()
                                                                     if k not in drop}
    with pytest.raises(CVGLError, match="missing 1/2"):
        index_cli.main(["merge", "--out", str(tmp_path / "m2.npz"), str(tmp_path / "p0.npz")])
