"""Index + localise on a synthetic world: a tiny model (tests/standin_model.py) is trained for a few seconds on
160 pairs of a small synthetic city, exported, its aerial index is built over the val split, and a held-out
val panorama is localised through the command: the true match is among the top 5. Also: resume of an
interrupted index build, an index built with another model, and unreadable inputs fail clearly.

The held-out query is val pair 3. Measured while writing the test: its true match ranked 1st or 2nd for
training seeds 0, 1, 2 with 20 or 30 epochs; over the whole val split (16 pairs) the model reaches
R@1 = 87.5 % and R@5 = 100 % here (raw-pixel retrieval: 25 % / 94 %, chance 6 % / 31 %).
"""

import json
import os

import keras
import numpy as np
import pytest

from common.data.readers import read_split
from common.data.specs import InputSpec
from common.data.images import read_rgb
from common.errors import CVGLError
from common.serving.export import load_export, write_export
from common.serving.preprocess import AerialPreprocess, GroundPreprocess, end_to_end
from tests.helpers.world import tiny_world
from experiments import index as index_cli
from experiments import localize as localize_cli
from common.serving import index as index_lib
from common.serving import localize as localize_lib
from tests.standin_family.model import StandInModel

SPEC = InputSpec("tiny_polar", (16, 88), (16, 88), True, "tanh")
AERIAL = 128  # aerial side of the tiny world
QUERY = 3  # the held-out val pair that is localised through the command (see the module docstring)


def _trained_model(root):
    """StandInModel trained 30 epochs on the train split, inputs made by the export's preprocessing layers."""
    records = read_split("cvusa", root, "train")
    ground = np.stack([read_rgb(r.ground) for r in records])
    aerial = np.stack([read_rgb(r.aerial) for r in records])
    x = {"ground": np.asarray(GroundPreprocess(SPEC)(ground)),
         "aerial": np.asarray(AerialPreprocess(SPEC)(aerial))}
    keras.utils.set_random_seed(0)
    model = StandInModel(input_spec=SPEC.to_config(), width=8)
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    model.fit(x, batch_size=16, epochs=30, verbose=0, shuffle=True)
    return model


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("localize")
    root = tiny_world(base, "cvusa", seed=0, n_train=160, n_val=16, aerial_size=AERIAL, pano_size=(32, 176))
    export = str(base / "export")
    write_export(end_to_end(_trained_model(root)), export,
                 {"name": "standin_synthetic", "dataset": "cvusa", "model": {"family": "standin"}})
    index = str(base / "val_index.npz")
    assert index_cli.main(["build", "--export", export, "--dataset", "cvusa", "--root", root, "--split", "val",
                           "--out", index, "--batch-size", "5"]) == 0
    return {"root": root, "export": export, "index": index, "base": base}


@pytest.mark.slow  # the module's world: a stand-in trained 30 epochs, exported, indexed (~30 s)
def test_index_holds_the_val_split(world):
    idx = index_lib.load_index(world["index"])
    records = read_split("cvusa", world["root"], "val")
    assert idx.ids == [r.id for r in records]
    assert idx.embeddings.shape == (16, 44 * 8)  # 44 azimuth bins (88 / 2) x 8 channels
    np.testing.assert_allclose(np.linalg.norm(idx.embeddings, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(idx.positions, np.asarray([r.position for r in records]), atol=1e-6)
    assert idx.fingerprint == load_export(world["export"]).fingerprint
    assert idx.meta["dataset"] == "cvusa" and idx.meta["split"] == "val"
    assert not os.path.exists(os.path.splitext(world["index"])[0] + ".partial.npz")


@pytest.mark.slow  # the module's world: a stand-in trained 30 epochs, exported, indexed (~30 s)
def test_localize_command_finds_held_out_pair_in_top5(world, tmp_path, capsys):
    rec = read_split("cvusa", world["root"], "val")[QUERY]
    out = tmp_path / "loc"
    assert localize_cli.main(["--export", world["export"], "--index", world["index"], "--query", rec.ground,
                              "--top-k", "5", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    stem = os.path.splitext(os.path.basename(rec.ground))[0]
    result = json.loads((out / f"{stem}.json").read_text())
    assert result["true_id"] == rec.id  # found from the query's file name
    assert rec.id in [h["id"] for h in result["hits"]]
    assert result["true_rank"] <= 5
    assert "<- true match" in printed
    assert [h["rank"] for h in result["hits"]] == [1, 2, 3, 4, 5]
    dists = [h["distance"] for h in result["hits"]]
    assert dists == sorted(dists)
    top = result["hits"][0]
    assert top["position"] is not None and result["top1_error_m"] is not None
    png = out / f"{stem}.png"
    assert png.stat().st_size > 1000 and open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # the module's world: a stand-in trained 30 epochs, exported, indexed (~30 s)
def test_an_approximate_index_says_so_and_agrees_with_exact_search(world, tmp_path, capsys):
    """index ann (no re-embedding) + localize: the same hits as exact search on this small gallery (HNSW visits
    every node of 16), a line saying the search was approximate, and --exact to search every descriptor."""
    pytest.importorskip("faiss")
    approx = str(tmp_path / "hnsw.npz")
    assert index_cli.main(["ann", "--index", world["index"], "--ann", "hnsw", "--out", approx]) == 0
    assert index_cli.main(["info", "--index", approx]) == 0
    assert "approximate search (--ann hnsw: hnsw_m 32" in capsys.readouterr().out
    rec = read_split("cvusa", world["root"], "val")[QUERY]
    stem = os.path.splitext(os.path.basename(rec.ground))[0]
    results = {}
    for name, index, extra in (("exact", world["index"], []), ("ann", approx, []), ("forced", approx, ["--exact"])):
        out = tmp_path / name
        assert localize_cli.main(["--export", world["export"], "--index", index, "--query", rec.ground,
                                  "--out", str(out)] + extra) == 0
        results[name] = (json.loads((out / f"{stem}.json").read_text()), capsys.readouterr().out)
    hits = {n: [(h["id"], round(h["distance"], 6)) for h in r[0]["hits"]] for n, r in results.items()}
    assert hits["ann"] == hits["exact"] == hits["forced"]
    assert results["ann"][0]["search"] == {"approximate": True, "kind": "hnsw",
                                           "params": {"hnsw_m": 32, "ef_construction": 80, "ef_search": 128,
                                                      "rerank": 50}}
    assert "approximate search (--ann hnsw" in results["ann"][1] and "--exact searches every" in results["ann"][1]
    assert "approximate search" not in results["forced"][1] and results["forced"][0]["search"] == {"approximate": False}
    assert results["ann"][0]["true_rank"] == results["exact"][0]["true_rank"]  # always exact
    base = ["--export", world["export"], "--query", rec.ground, "--out", str(tmp_path / "o")]
    with pytest.raises(CVGLError, match="--nprobe does not apply to this index's --ann hnsw"):
        localize_cli.main(base + ["--index", approx, "--nprobe", "4"])
    with pytest.raises(CVGLError, match="--ef-search tune an approximate index; .* built without --ann"):
        localize_cli.main(base + ["--index", world["index"], "--ef-search", "4"])
    with pytest.raises(CVGLError, match="needs at least 624 references"):  # 16 cells x 39 > the 16 val aerials
        index_cli.main(["ann", "--index", world["index"], "--ann", "ivf", "--nlist", "16",
                        "--out", str(tmp_path / "ivf.npz")])
    with pytest.raises(CVGLError, match="--nprobe need --ann KIND"):
        index_cli.main(["ann", "--index", world["index"], "--nprobe", "4", "--out", str(tmp_path / "x.npz")])
    with pytest.raises(CVGLError, match="is the input index"):
        index_cli.main(["ann", "--index", approx, "--ann", "flat", "--out", approx])


@pytest.mark.slow  # the module's world: a stand-in trained 30 epochs, exported, indexed (~30 s)
def test_most_held_out_pairs_are_in_top5(world):
    """The whole val split through the library function: far above chance (5/16 = 31 %)."""
    export, idx = load_export(world["export"]), index_lib.load_index(world["index"])
    records = read_split("cvusa", world["root"], "val")
    ranks = [localize_lib.localize(export, idx, read_rgb(r.ground), k=5, true_id=r.id)["true_rank"] for r in records]
    assert sum(r <= 5 for r in ranks) >= 13, ranks


@pytest.mark.slow  # the module's world: a stand-in trained 30 epochs, exported, indexed (~30 s)
def test_index_build_resumes(world, tmp_path, monkeypatch):
    export = load_export(world["export"])
    records = read_split("cvusa", world["root"], "val")
    out = str(tmp_path / "idx.npz")
    calls = []
    real = export.embed_aerial

    def failing(images):
        calls.append(len(images))
        if sum(calls) > 8:
            raise KeyboardInterrupt  # the user pressed Ctrl-C during the second chunk
        return real(images)

    monkeypatch.setattr(export, "embed_aerial", failing)
    with pytest.raises(KeyboardInterrupt):
        index_lib.build_index(export, records, out, batch_size=4, checkpoint_every=8, progress=False)
    assert not os.path.exists(out) and os.path.exists(str(tmp_path / "idx.partial.npz"))
    calls.clear()
    monkeypatch.setattr(export, "embed_aerial", lambda images: calls.append(len(images)) or real(images))
    index_lib.build_index(export, records, out, batch_size=4, checkpoint_every=8, progress=False)
    assert sum(calls) == 8  # only the second half was embedded again
    np.testing.assert_allclose(index_lib.load_index(out).embeddings, index_lib.load_index(world["index"]).embeddings,
                               atol=1e-6)


@pytest.mark.slow  # the module's world: a stand-in trained 30 epochs, exported, indexed (~30 s)
def test_index_of_another_model_is_refused(world, tmp_path):
    other = str(tmp_path / "other_export")
    keras.utils.set_random_seed(1)
    write_export(end_to_end(StandInModel(input_spec=SPEC.to_config(), width=8)), other,
                 {"name": "untrained", "dataset": "cvusa", "model": {"family": "standin"}})
    query = read_split("cvusa", world["root"], "val")[0].ground
    with pytest.raises(CVGLError, match="built with another model"):
        localize_cli.main(["--export", other, "--index", world["index"], "--query", query,
                           "--out", str(tmp_path / "o")])


@pytest.mark.slow  # the module's world: a stand-in trained 30 epochs, exported, indexed (~30 s)
def test_bad_inputs_fail_clearly(world, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    args = ["--export", world["export"], "--index", world["index"], "--out", str(tmp_path / "o")]
    with pytest.raises(CVGLError, match="query image: truncated JPEG .*broken.jpg"):
        localize_cli.main(args + ["--query", str(bad)])
    with pytest.raises(CVGLError, match="query image not found"):
        localize_cli.main(args + ["--query", str(tmp_path / "missing.jpg")])
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not an index")
    query = read_split("cvusa", world["root"], "val")[0].ground
    with pytest.raises(CVGLError, match="unreadable or not an index"):
        localize_cli.main(["--export", world["export"], "--index", str(junk), "--query", query])
    with pytest.raises(CVGLError, match="not an export directory"):
        index_cli.main(["build", "--export", str(tmp_path), "--dataset", "cvusa", "--root", world["root"],
                        "--out", str(tmp_path / "i.npz")])


@pytest.mark.slow  # the module's world: a stand-in trained 30 epochs, exported, indexed (~30 s)
def test_orthophoto_index_and_localize_answer_in_latlon(world, tmp_path, capsys):
    """The map path through the commands: the tiny world's city as a GeoTIFF with new panoramas at known
    lat/lon, cut into 150 m tiles every 25 m, indexed, one panorama localised with its true lat/lon."""
    from common.geo import haversine_m
    from common.synthetic.orthophoto import read_queries
    from experiments import synth as synth_cli

    mapdir = tmp_path / "map"
    assert synth_cli.main(["--orthophoto", "--out", str(mapdir), "--seed", "0", "--extent-m", "300", "--queries",
                           "3", "--aerial-size", str(AERIAL), "--pano-size", "32x176"]) == 0
    index = str(tmp_path / "map.npz")
    assert index_cli.main(["build", "--export", world["export"], "--orthophoto", str(mapdir / "orthophoto.tif"),
                           "--tile-m", "150", "--stride-m", "25", "--tile-px", str(AERIAL), "--out", index]) == 0
    idx = index_lib.load_index(index)
    assert len(idx) == 49 and idx.meta["source"] == "orthophoto" and idx.meta["grid"] == [7, 7]  # 300 m: 7 x 7
    assert np.isfinite(idx.latlon).all() and idx.ids[0] == "r0000c0000"
    capsys.readouterr()
    q = read_queries(str(mapdir))[0]
    out = tmp_path / "loc"
    assert localize_cli.main(["--export", world["export"], "--index", index, "--query", q["path"],
                              "--true-latlon", f"{q['lat']},{q['lon']}", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "lat" in printed.splitlines()[1] and "m from the true position" in printed and "orthophoto" in printed
    result = json.loads((out / f"{q['id']}.json").read_text())
    top = result["hits"][0]
    assert result["top1_error_m"] == pytest.approx(float(haversine_m(q["lat"], q["lon"], *top["latlon"])))
    assert all(h["metres_from_true"] is not None for h in result["hits"])
    assert (out / f"{q['id']}.png").stat().st_size > 1000


@pytest.mark.slow  # the module's world: a stand-in trained 30 epochs, exported, indexed (~30 s)
def test_a_limited_field_of_view_photo_is_placed_in_the_canvas(world, tmp_path, capsys):
    """A 90-degree photo cut from a held-out panorama: refused without --fov; with --fov and its heading the
    model sees it in the canvas; with no heading 12 candidates are tried and every hit records its heading."""
    import cv2

    from common.serving.canvas import crop_from_panorama

    rec = read_split("cvusa", world["root"], "val")[QUERY]
    pano = read_rgb(rec.ground)
    photo = crop_from_panorama(pano, 360 * 32 / 176, 90, 30, (48, 64), "pinhole")
    path = str(tmp_path / f"{rec.id}_photo.png")
    cv2.imwrite(path, photo[..., ::-1])
    args = ["--export", world["export"], "--index", world["index"], "--query", path, "--out", str(tmp_path / "o")]
    with pytest.raises(CVGLError, match="not a panorama.*--fov DEG"):
        localize_cli.main(args)
    with pytest.raises(CVGLError, match="--heading needs --fov"):
        localize_cli.main(["--export", world["export"], "--index", world["index"], "--query", rec.ground,
                           "--heading", "10"])
    assert localize_cli.main(args + ["--fov", "90", "--heading", "30"]) == 0
    known = json.loads((tmp_path / "o" / f"{rec.id}_photo.json").read_text())
    assert known["view"] == {"fov": 90.0, "projection": "pinhole", "headings_tried": [30.0], "heading": 30.0}
    assert known["true_id"] == rec.id and known["true_rank"] >= 1
    assert localize_cli.main(args + ["--fov", "90", "--headings", "12"]) == 0
    unknown = json.loads((tmp_path / "o" / f"{rec.id}_photo.json").read_text())
    assert len(unknown["view"]["headings_tried"]) == 12 and all("heading" in h for h in unknown["hits"])
    assert "heading unknown: 12 headings tried" in capsys.readouterr().out


def test_find_true_id():
    ids = ["0000019", "0000190", "abc"]
    assert localize_lib.find_true_id("/x/0000190.jpg", ids) == "0000190"
    assert localize_lib.find_true_id("/x/abc_grdView.jpg", ids) == "abc"
    assert localize_lib.find_true_id("/x/my_0000019_copy.png", ids) == "0000019"
    assert localize_lib.find_true_id("/x/holiday.jpg", ids) is None
