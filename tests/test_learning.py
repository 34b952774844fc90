"""Learning tests: the real GeoDTR and MGTL, trained from random weights on a tiny deterministic synthetic
city, must leave the collapsed start (training loss log 2 = every distance alike) and retrieve held-out pairs
of that city better than raw pixels. They fail when a model does not learn, which no shape or gradient test
can see (a fresh clone once trained GeoDTR for 16 epochs at loss 0.693).

World: city seed 5, CVUSA layout, aerial 64 px, panorama 32x128, 64 held-out pairs; GeoDTR trains on 1,536
pairs, MGTL on 384. Each model is its demo recipe (experiments/demo.py) at a smaller size, deterministic,
without the cross-city augmentations (the held-out pairs are of the same city). GeoDTR keeps its paper parts
(ResNet towers, geometric layout extractor, counterfactual loss) with one block per ResNet stage.

Measured (deterministic: every run on one machine gives the same digits; the two thread counts round
differently, so both were checked):

========  =========  ======================  ==========================  ===================
model     threads    epoch losses            held-out R@1 / R@5 (best)   raw pixels R@1 / R@5
========  =========  ======================  ==========================  ===================
GeoDTR    1          0.711, 0.476, 0.214     25.0 / 62.5 (epoch 3)       3.12 / 18.75
GeoDTR    2          0.710, 0.472, 0.171     29.7 / 68.8 (epoch 3)       3.12 / 18.75
MGTL      1          0.881 ... 0.343         6.25 / 29.7 (epoch 6)       1.56 / 3.12
MGTL      2          0.881 ... 0.320         10.9 / 42.2 (epoch 7)       1.56 / 3.12
========  =========  ======================  ==========================  ===================

The earlier GeoDTR test (full ResNet-34 depth at widths 8-16-32-32, 384 pairs) reached 6.25 at 2 threads but
1.56 (= raw pixels) at 1: its held-out R@5 and R@10 sat at chance at both. Its success rested on rounding;
more distinct training pairs, not more epochs, moved it off that edge (1,536 pairs: 4x the held-out R@1 of
raw pixels at both thread counts, at full depth too, but at 4 minutes a run; one block per stage trains it
in a quarter of the time to the numbers above).
"""

import math
import warnings

import pytest

LOG2 = math.log(2.0)


TRAIN_PAIRS = {"geodtr": 1536, "mgtl": 384}


def _city(base, n_train):
    from common.synthetic import write_world
    from common.synthetic.baseline import raw_pixel_baseline

    root = str(base / f"city_{n_train}")
    write_world("cvusa", root, 5, n_train, 64, aerial_size=64, pano_size=(32, 128), workers=1, near_fraction=0.0,
                progress=False, contact_sheet=False)
    return root, raw_pixel_baseline(root, "cvusa", split="val")


SIZES = {"input_spec.ground_size": [32, 128], "input_spec.aerial_size": [32, 128], "train.batch_size": 32,
         "train.drop_remainder": True, "train.deterministic": True, "train.azimuth_roll": False,
         "train.colour_shuffle": False, "augment": {"layout_simulation": "none", "semantic": "none"}}
FACTOR = {"geodtr": 4, "mgtl": 2}  # held-out R@1 must exceed FACTOR x raw pixels' (measured: 8-9.5x, 4-7x)
RECIPES = {
    "geodtr": {"model.backbone_widths": [16, 32, 64, 64], "model.backbone_depths": [1, 1, 1, 1], "model.ffn_dim": 64,
               "model.num_descriptors": 4, "train.epochs": 3},
    "mgtl": {"model.vgg_widths": [8, 16, 32, 32, 32], "model.dim": 32, "model.ffn_dim": 64,
             "model.generator_dim": 64, "train.epochs": 7},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["geodtr", "mgtl"])
def test_model_learns(tmp_path, name):
    from common.data.specs import get_spec
    from common.training import recipe
    from common.training.data import records_data
    from common.training.runner import run_training
    from experiments.demo import demo_config

    root, base = _city(tmp_path, TRAIN_PAIRS[name])
    cfg, _ = demo_config(name)
    cfg, _ = recipe.resolve(cfg, list({**SIZES, **RECIPES[name]}.items()))
    data = records_data(cfg, root, get_spec(cfg["input_spec"]), val_split="val", embed_batch_size=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = run_training(cfg, str(tmp_path / name), data, seed=0, verbose=0, log=lambda *a: None)
    losses = [round(h["loss"], 4) for h in res["history"]]
    assert min(losses) < 0.85 * LOG2, f"{name} never left log 2: epoch losses {losses}"
    assert res["best_epoch"] is not None
    r1 = res["metrics"]["R@1"]
    assert r1 > FACTOR[name] * base["R@1"], (f"{name}: held-out R@1 {r1} vs raw pixels {base['R@1']}, needs "
                                             f"{FACTOR[name]}x (losses {losses})")
