"""The pictures are legible: each is written, with the labels a reader needs, and the labels do not collide.

Figures are captured at ``savefig`` (every Text drawn, the images' colour limits), so the checks read what the
picture holds rather than its pixels; the contact sheet (OpenCV) is checked on its pixels.
"""

import os

import numpy as np
import pytest


@pytest.fixture
def figures(monkeypatch):
    """Every matplotlib figure saved during the test: a list of {texts, clims, fig_px, boxes}."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.image import AxesImage
    from matplotlib.text import Text

    seen = []
    real = Figure.savefig

    def spy(self, *args, **kwargs):
        self.canvas.draw()
        renderer = self.canvas.get_renderer()
        texts = [t for t in self.findobj(Text) if t.get_visible() and t.get_text().strip()]
        seen.append({
            "texts": [t.get_text() for t in texts],
            "boxes": {t.get_text(): t.get_window_extent(renderer) for t in texts},
            "clims": [im.get_clim() for im in self.findobj(AxesImage)],
            "fig_px": tuple(self.get_size_inches() * self.dpi),
            "axes": [ax.get_window_extent(renderer) for ax in self.axes],
        })
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    return seen


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_recall_curve_labels_are_clear_of_each_other_the_ticks_and_the_legend(figures, tmp_path):
    from experiments.evaluate import plot_curve

    n = 500
    curve = list(np.minimum(100.0, 3.0 + 40 * np.log1p(np.arange(1, n + 1)) / np.log(n)))  # R@1 ~ 14
    result = {"curve": curve, "model": "geodtr", "K_1pct": 5, "dataset": "cvusa", "split": "val", "N": n,
              "protocol": "index"}
    path = tmp_path / "curve.png"
    plot_curve(result, str(path))
    assert path.stat().st_size > 5000
    fig = figures[-1]
    labels = [t for t in fig["texts"] if t.startswith("R@")]
    assert labels == ["R@1", "R@5, R@1%", "R@10"]
    legend = [t for t in fig["texts"] if t.startswith("geodtr: ")]
    assert legend == [f"geodtr: R@1 {curve[0]:.1f}, R@5, R@1% {curve[4]:.1f}, R@10 {curve[9]:.1f}"]
    assert "chance (K / N)" in fig["texts"]
    boxes = [fig["boxes"][t] for t in labels]
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert not _overlap(boxes[i], boxes[j]), (labels[i], labels[j])
    ticks = [b for t, b in fig["boxes"].items() if t.strip().lstrip("-").replace(".", "").isdigit()]
    plot = fig["axes"][0]
    for b in boxes:
        assert not any(_overlap(b, t) for t in ticks)
        assert plot.x0 <= b.x0 and b.x1 <= plot.x1 and plot.y0 <= b.y0 and b.y1 <= plot.y1  # inside the plot
    for name in legend + ["chance (K / N)"]:
        assert fig["boxes"][name].y1 <= plot.y0  # the legend sits below the plot, hiding nothing


def test_contact_sheet_labels_are_white_on_dark_and_stay_on_their_panel():
    from common.synthetic.sheet import _fit, _label

    sky = np.full((128, 128, 3), 235, np.uint8)  # light sky
    out = _label(sky, "aerial " + "A" * 22)  # a CVACT id
    band = out[:20]
    assert band.mean() < 150 and band.max() >= 200  # dark band with light text
    assert (out[25:] == 235).all()  # nothing drawn below the band
    import cv2

    text = _fit("aerial " + "A" * 22, 120, 0.49, 1)
    assert ".." in text and cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.49, 1)[0][0] <= 120
    assert _fit("aerial 0000019", 120, 0.49, 1) == "aerial 0000019"


def test_layout_descriptor_colours_span_the_values_drawn(figures, tmp_path):
    from geodtr_tf.visualize import draw_layout

    rng = np.random.default_rng(0)
    maps = {v: rng.uniform(-0.1, 0.3, (4, 2, 12)).astype(np.float32) for v in ("ground", "aerial")}
    path = tmp_path / "layout.png"
    draw_layout(np.zeros((32, 192, 3), np.uint8), np.zeros((32, 192, 3), np.uint8), maps, str(path))
    assert path.stat().st_size > 5000
    fig = figures[-1]
    vmax = max(float(np.abs(m).max()) for m in maps.values())
    overlays = [c for c in fig["clims"] if c != (0.0, 255.0) and c[0] < 0]
    assert len(overlays) == 8 and all(c == pytest.approx((-vmax, vmax)) for c in overlays)
    assert any(t.startswith("P (layout descriptor), scale +-0.3") for t in fig["texts"])


def test_attention_axes_are_labelled_by_compass_bearing(figures, tmp_path):
    from mgtl_tf.visualize import attention_figure, token_ticks

    n = 20
    maps = {v: [np.full((n, n), 1.0 / n, np.float32)] for v in ("ground", "aerial")}
    path = tmp_path / "attention.png"
    attention_figure(maps, np.zeros((32, 176, 3), np.uint8), np.zeros((32, 176, 3), np.uint8), str(path))
    assert path.stat().st_size > 5000
    texts = figures[-1]["texts"]
    for label in ("N 0", "E 90", "S 180", "W 270"):
        assert texts.count(label) >= 6  # two images, two maps x two axes
    pos, _ = token_ticks(n)
    assert pos[0] == pytest.approx(n / 2 - 0.5)  # north: the centre token


def test_localisation_picture_shows_what_the_model_saw(figures, tmp_path):
    from common.serving.localize import save_picture

    aerial = tmp_path / "a.png"
    import cv2

    cv2.imwrite(str(aerial), np.full((64, 64, 3), 90, np.uint8))
    result = {"hits": [{"rank": 1, "id": "r0000c0000", "distance": 0.5, "aerial": str(aerial), "true_match": False,
                        "metres_from_true": 12.0}], "true_rank": None, "view": {"heading": 30.0}}
    path = tmp_path / "loc.png"
    save_picture(np.zeros((48, 64, 3), np.uint8), result, str(path), title="query photo",
                 canvas=np.zeros((64, 352, 3), np.uint8))
    assert path.stat().st_size > 2000
    texts = figures[-1]["texts"]
    assert "query photo" in texts and any(t.startswith("what the model saw") and "heading 30" in t for t in texts)
    assert any("12 m off" in t for t in texts)
    assert os.path.getsize(path) > 0


def test_every_picture_type_has_a_readme_thumbnail():
    """README's Pictures table shows a thumbnail of each picture type, and each file exists (small)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    readme = open(os.path.join(root, "README.md")).read()
    for name in ("contact_sheet.jpg", "recall_curve.png", "retrieval_grid.jpg", "layout_descriptors.jpg",
                 "attention.jpg", "localize_photo.jpg", "localize_map.jpg"):
        assert f"(docs/images/{name})" in readme, name
        path = os.path.join(root, "docs", "images", name)
        assert 5_000 < os.path.getsize(path) < 150_000, name
