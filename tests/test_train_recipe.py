"""The recipe pieces against their definitions: the GeoDTR warm-up cosine (geodtr.md §9), overrides, the
optimizer factory (AdamW global_clipnorm / Adam constant), mixed-precision policies, the strategy names."""

import math

import keras
import pytest

from common.errors import CVGLError
from common.training import recipe
from common.training.optim import build_optimizer, set_precision
from common.training.schedule import EpochLearningRate, lr_for_epoch, warmup_cosine_factor


def test_warmup_cosine_matches_the_official_formula():
    # epoch 0 -> 0, e/5 during warm-up, then 0.5 (1 + cos(pi (e - 5) / 195)) for 200 epochs
    assert warmup_cosine_factor(0, 5, 200) == 0.0
    for e in range(1, 5):
        assert warmup_cosine_factor(e, 5, 200) == pytest.approx(e / 5)
    assert warmup_cosine_factor(5, 5, 200) == pytest.approx(1.0)
    for e in (6, 50, 102, 150, 199):
        assert warmup_cosine_factor(e, 5, 200) == pytest.approx(0.5 * (1 + math.cos(math.pi * (e - 5) / 195)))
    assert warmup_cosine_factor(102, 5, 200) == pytest.approx(0.5 * (1 + math.cos(math.pi * 97 / 195)))
    assert warmup_cosine_factor(199, 5, 200) < 1e-3
    assert lr_for_epoch(1e-4, {"name": "warmup_cosine", "warmup_epochs": 5}, 2, 200) == pytest.approx(0.4e-4)
    assert lr_for_epoch(1e-5, {"name": "constant"}, 77, 150) == 1e-5
    with pytest.raises(CVGLError, match="schedule.name"):
        lr_for_epoch(1e-4, {"name": "step"}, 0, 10)


def test_epoch_callback_sets_the_optimizer_rate_per_epoch():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=build_optimizer({"name": "adamw", "learning_rate": 1e-4, "global_clipnorm": 1.0}),
                  loss="mse")
    cb = EpochLearningRate(1e-4, {"name": "warmup_cosine", "warmup_epochs": 5}, 200)
    cb.set_model(model)
    for e, want in ((0, 0.0), (3, 0.6e-4), (100, 1e-4 * warmup_cosine_factor(100, 5, 200))):
        cb.on_epoch_begin(e)
        assert float(model.optimizer.learning_rate) == pytest.approx(want, rel=1e-6, abs=1e-12)


def test_optimizer_factory():
    opt = build_optimizer({"name": "adamw", "learning_rate": 1e-4, "weight_decay": 0.03, "epsilon": 1e-6,
                           "global_clipnorm": 1.0})
    assert isinstance(opt, keras.optimizers.AdamW)
    assert opt.global_clipnorm == 1.0 and opt.clipnorm is None and opt.weight_decay == pytest.approx(0.03)
    assert opt.epsilon == pytest.approx(1e-6)
    adam = build_optimizer({"name": "adam", "learning_rate": 1e-5})
    assert type(adam) is keras.optimizers.Adam
    scaled = build_optimizer({"name": "adam", "learning_rate": 1e-5}, precision="float16")
    assert isinstance(scaled, keras.optimizers.LossScaleOptimizer)
    with pytest.raises(CVGLError, match="lr_decay"):
        build_optimizer({"name": "adam", "learning_rate": 1e-5, "lr_decay": 3})
    with pytest.raises(CVGLError, match="learning_rate"):
        build_optimizer({"name": "adam"})
    with pytest.raises(CVGLError, match="one of"):
        build_optimizer({"name": "lamb", "learning_rate": 1.0})


def test_precision_policies():
    try:
        assert set_precision("float16") == "mixed_float16"
        assert keras.mixed_precision.global_policy().compute_dtype == "float16"
        assert set_precision("bfloat16") == "mixed_bfloat16"
        with pytest.raises(CVGLError, match="mixed-precision"):
            set_precision("float8")
    finally:
        set_precision("off")
    assert keras.mixed_precision.global_policy().name == "float32"


def test_overrides_resolve_and_are_marked():
    cfg = {"name": "x", "dataset": "cvusa", "input_spec": "geodtr_polar", "model": {"family": "geodtr", "k": 8},
           "train": {"optimizer": {"name": "adamw", "learning_rate": 1e-4}, "epochs": 200, "batch_size": 32}}
    pairs = recipe.parse_overrides(["input_spec.ground_size=[32,176]", "model.layers=1",
                                    "train.optimizer.learning_rate=1e-3"])
    assert pairs[2] == ("train.optimizer.learning_rate", 1e-3)  # YAML 1.1 would leave '1e-3' a string
    out, marked = recipe.resolve(cfg, pairs, cli={"train.epochs": 2, "train.batch_size": None})
    assert out["input_spec"]["ground_size"] == [32, 176] and out["input_spec"]["aerial_size"] == [122, 671]
    assert out["model"] == {"family": "geodtr", "k": 8, "layers": 1}
    assert out["train"]["epochs"] == 2 and out["train"]["batch_size"] == 32
    assert cfg["train"]["epochs"] == 200  # the input is not modified
    assert marked == {"input_spec.ground_size": "override", "model.layers": "override",
                      "train.optimizer.learning_rate": "override", "train.epochs": "flag"}
    text = recipe.format_recipe(out, marked)
    line = next(ln for ln in text.splitlines() if "train.optimizer.learning_rate" in ln)
    assert line.rstrip().endswith("<- override")
    assert not next(ln for ln in text.splitlines() if "train.batch_size" in ln).rstrip().endswith("override")
    assert recipe.config_hash(out) != recipe.config_hash(cfg)
    with pytest.raises(CVGLError, match="no key 'optimiser'"):
        recipe.resolve(cfg, recipe.parse_overrides(["train.optimiser.learning_rate=1"]))
    with pytest.raises(CVGLError, match="key=value"):
        recipe.parse_overrides(["epochs"])


def test_strategy_names():
    from common.training.distribute import make_strategy

    with pytest.raises(CVGLError, match="--strategy"):
        make_strategy("horovod")
    assert make_strategy("one").num_replicas_in_sync == 1
    assert make_strategy("auto").num_replicas_in_sync == 1


def test_multiworker_needs_tf_config(monkeypatch):
    from common.training.distribute import is_chief, make_strategy

    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(CVGLError, match="TF_CONFIG"):
        make_strategy("multiworker")
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}')
    assert not is_chief()
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}')
    assert is_chief()


def test_cross_city_augmentations_are_stateless_and_ramp_in():
    """azimuth_roll / colour_shuffle are a pure function of (seed, global step) (exact resume), and with
    train.augment_ramp_epochs a sample is augmented with probability min(1, (step + 1) / ramp_steps)."""
    import numpy as np
    import tensorflow as tf

    from common.data.augment import azimuth_roll, colour_shuffle

    rng = np.random.default_rng(0)
    batch = {"ground": rng.uniform(size=(64, 4, 16, 3)).astype("float32"),
             "aerial": rng.uniform(size=(64, 4, 16, 3)).astype("float32")}

    def apply(fn, step, ramp):
        ds = tf.data.Dataset.from_tensors((tf.constant(step, tf.int64), batch))
        _, out = next(iter(fn(ds, seed=3, ramp_steps=ramp)))
        return {k: v.numpy() for k, v in out.items()}

    for fn in (azimuth_roll, colour_shuffle):
        full = apply(fn, 7, 0)
        np.testing.assert_array_equal(full["ground"], apply(fn, 7, 0)["ground"])  # same step: same draw
        assert not np.array_equal(full["ground"], apply(fn, 8, 0)["ground"])  # next step: a new draw
        changed = lambda out: np.mean([not np.array_equal(out["ground"][i], batch["ground"][i])  # noqa: E731
                                       for i in range(64)])
        assert changed(full) > 0.9
        assert changed(apply(fn, 0, 10_000)) == 0.0  # p = 1e-4 at the first step: (almost surely) untouched
        assert 0.3 < changed(apply(fn, 4_999, 10_000)) < 0.7  # halfway through the ramp: about half
        assert changed(apply(fn, 20_000, 10_000)) > 0.9  # after it: every sample
