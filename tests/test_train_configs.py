"""Every paper-row config loads and resolves, and one training step of each distinct architecture runs at a
tiny input size (parametrised; configs that differ only in dataset / expected numbers / recipe share a step).

Tiny overrides per family (the structure -- variant, steps, descriptors, layers, heads -- is kept):
* geodtr: ground 32x128, polar aerial 32x128 or raw aerial 64x64 (16 feature positions, GLE width 8 -> 4 heads
  of 2), FFN 32, ResNet-34 widths 8-8-16-16, random backbones;
* mgtl / safa: 32x128 inputs (a 1x4 VGG map), VGG widths 8-16, MGTL token width 24 (6 heads of 4), random.
Each step uses the config's own optimizer (AdamW + global clip / Adam) and its schedule is evaluated. The step
runs eagerly: tracing a graph costs far more than the step itself at these sizes.
"""

import copy
import os
import warnings

import numpy as np
import pytest

from common.models.config import config_paths, load_config
from common.data.specs import get_spec
from common.training import recipe
from common.training.schedule import lr_for_epoch

TESTS = os.path.dirname(os.path.abspath(__file__))
PATHS = [p for p in config_paths() if not p.startswith(TESTS + os.sep)]  # the shipped configs, not test families
FAMILIES = ("geodtr", "mgtl", "safa")


def tiny_overrides(cfg):
    family = cfg["model"]["family"]
    spec = get_spec(cfg["input_spec"])
    aerial = [32, 128] if spec.polar else [64, 64]
    over = [("input_spec.ground_size", [32, 128]), ("input_spec.aerial_size", aerial),
            ("model.backbone_weights", None)]
    if family == "geodtr":
        over += [("model.ffn_dim", 32), ("model.backbone_widths", [8, 8, 16, 16])]
    elif family == "mgtl":
        over += [("model.vgg_widths", [8, 8, 16, 16, 16]), ("model.dim", 24), ("model.ffn_dim", 32),
                 ("model.generator_dim", 32)]
    elif family == "safa":
        over += [("model.vgg_widths", [8, 8, 16, 16, 16])]
    return over


def tiny(path):
    cfg = load_config(path)
    out, _ = recipe.resolve(cfg, tiny_overrides(cfg))
    return out


LOSS_ONLY_KEYS = ("utm_mask", "utm_mask_radius_m")  # dataset-dependent loss options, same network


def architecture_key(cfg):
    model = {k: v for k, v in cfg["model"].items() if k not in LOSS_ONLY_KEYS}
    return repr((model, cfg["input_spec"]))


def distinct():
    seen, out = set(), []
    for p in PATHS:
        key = architecture_key(tiny(p))
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def test_every_family_has_configs():
    names = [os.path.basename(p) for p in PATHS]
    fams = {load_config(p)["model"]["family"] for p in PATHS}
    assert "mgtl" in fams and "safa" in fams, names
    if any(n.startswith("geodtr") for n in names):
        assert "geodtr" in fams


@pytest.mark.parametrize("path", PATHS, ids=[os.path.basename(p)[:-5] for p in PATHS])
def test_config_loads_and_resolves(path):
    cfg = load_config(path)
    assert cfg["name"] == os.path.basename(path)[:-5]
    assert cfg["model"]["family"] in FAMILIES and cfg["dataset"] in ("cvusa", "cvact")
    get_spec(cfg["input_spec"])
    train = cfg["train"]
    assert int(train["epochs"]) >= 1 and int(train["batch_size"]) >= 2
    assert train["optimizer"]["name"] in ("adam", "adamw", "adamw_torch")
    assert float(train["optimizer"]["learning_rate"]) > 0
    if cfg["model"]["family"] == "geodtr":  # torch.optim.AdamW + clip_grad_norm_, as the official train.py
        assert train["optimizer"]["name"] == "adamw_torch"
    lr0 = lr_for_epoch(float(train["optimizer"]["learning_rate"]), train.get("schedule"), 0, int(train["epochs"]))
    if (train.get("schedule") or {}).get("name") == "warmup_cosine":
        assert lr0 == 0.0  # GeoDTR: epoch 0 runs at lr 0
    resolved, marked = recipe.resolve(cfg, tiny_overrides(cfg))
    assert "expected" not in marked and recipe.config_hash(resolved)


@pytest.mark.slow
@pytest.mark.parametrize("path", distinct(), ids=[os.path.basename(p)[:-5] for p in distinct()])
def test_one_training_step(path):
    import keras

    from common.models.config import build_model
    from common.training.optim import build_optimizer

    cfg = tiny(path)
    spec = get_spec(cfg["input_spec"])
    keras.utils.set_random_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(copy.deepcopy(cfg))
    model.compile(optimizer=build_optimizer(cfg["train"]["optimizer"]), jit_compile=False, run_eagerly=True)
    rng = np.random.default_rng(0)
    b = 4
    batch = {"ground": rng.uniform(-1, 1, (b, *spec.ground_size, 3)).astype("float32"),
             "aerial": rng.uniform(-1, 1, (b, *spec.aerial_size, 3)).astype("float32")}
    if cfg["dataset"] == "cvact":
        batch["position"] = (rng.uniform(0, 500, (b, 2))).astype("float32")
    before = [np.array(w) for w in model.trainable_weights[:4]]
    loss = float(np.asarray(model.train_on_batch(batch)))
    assert np.isfinite(loss) and loss > 0
    after = [np.array(w) for w in model.trainable_weights[:4]]
    assert any(np.any(a != c) for a, c in zip(before, after))  # the step changed weights
    emb = np.asarray(model.embed_ground(batch["ground"]))
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
