"""Every custom layer and model of the project through the harness (tests/harness.py): config round trip,
dtype / trainable through from_config, symbolic == eager, .keras round trip, predict on tf.data,
mixed_float16 / float64 everywhere, one fit step. Tiny shapes; the quick cases run in about a minute on 2
cores, the heavier ones (whole models, ResNet-34, two MGTL towers) are marked slow.

The same file runs under JAX: :func:`test_layers_under_jax` starts ``KERAS_BACKEND=jax pytest -m "not slow"``
on it in a subprocess when jax is importable (it is no project requirement; skipped otherwise). By hand, in
an environment with jax: ``KERAS_BACKEND=jax [JAX_ENABLE_X64=1] python -m pytest
tests/test_harness_layers.py`` (without x64 the float64 checks are skipped).

Classes covered: ``grep -rn register_keras_serializable common geodtr_tf mgtl_tf`` (TorchAdamW, an optimizer,
by :func:`test_optimizer_config_round_trip`); :func:`test_every_registered_class_is_covered` fails when a
new one is added without a case here.
"""

import os
import re

import keras
import numpy as np
import pytest

from tests import harness
from common.data.specs import InputSpec

ROOT = harness.ROOT

TINY_POLAR = InputSpec("harness_tiny_polar", (8, 32), (8, 32), True, "tanh")
TINY_RAW = InputSpec("harness_tiny_raw", (8, 32), (12, 12), False, "vgg_bgr")
GEODTR_TINY = InputSpec("harness_geodtr", (48, 96), (48, 96), True, "tanh")  # 3x6 = 18 positions
SAFA_TINY = InputSpec("harness_safa", (32, 160), (32, 160), True, "vgg_bgr")  # 1x5 map, 5 tokens
VGG_TINY = (2, 2, 4, 4, 4)


def normal(*shape, scale=1.0, seed=0):
    return np.random.default_rng(seed).normal(0, scale, shape).astype("float32")


def pixels(*shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# ------------------------------------------------------------------------------------------------ layers
def _layer_cases():
    from common.backbones.resnet import BasicBlock, ResNet34, TorchBatchNormalization
    from common.backbones.vgg import VGG16Trunk
    from common.data.polar_layer import PolarTransform
    from common.serving.preprocess import AerialPreprocess, GroundPreprocess
    from geodtr_tf.layers import (GeometricLayoutExtractor, IndexAwarePositionEncoding, LayoutTransformer,
                                  MultiHeadSelfAttention, TransformerEncoderLayer)
    from mgtl_tf.layers import (CrossModalGenerator, GenerativeKnowledgeTransformer, PositionalEmbedding,
                                TokenNeck)
    from mgtl_tf.model import MGTLTower
    from mgtl_tf.safa.layers import SpatialAwareAggregation

    u = np.random.default_rng(1).uniform(0, 1, (4, 8)).astype("float32")
    p = pytest.param
    slow = pytest.mark.slow
    tower = dict(steps=1, dim=6, num_heads=2, ffn_dim=8, generator_dim=8, vgg_widths=VGG_TINY)
    return [
        # common/backbones
        p(VGG16Trunk, dict(widths=VGG_TINY, dropout=0.2), normal(4, 32, 32, 3, scale=50), (4, 1, 1, 4), {},
          id="VGG16Trunk"),
        p(TorchBatchNormalization, dict(epsilon=1e-5, momentum=0.9), normal(4, 3, 5, 3, scale=3),
          (4, 3, 5, 3), {}, id="TorchBatchNormalization"),
        p(BasicBlock, dict(filters=6, stride=2, downsample=True), normal(4, 8, 8, 4), (4, 4, 4, 6), {},
          id="BasicBlock"),
        p(ResNet34, dict(widths=(2, 2, 4, 4)), normal(4, 32, 32, 3), (4, 2, 2, 4), {}, id="ResNet34",
          marks=slow),
        # common/data, common/serving
        p(PolarTransform, dict(height=8, width=16), normal(4, 12, 12, 3, scale=100), (4, 8, 16, 3), {},
          id="PolarTransform"),
        p(GroundPreprocess, dict(input_spec=TINY_POLAR), pixels(4, 24, 48, 3), (4, 8, 32, 3), {},
          id="GroundPreprocess-crop"),
        p(GroundPreprocess, dict(input_spec=TINY_RAW), pixels(4, 16, 96, 3), (4, 8, 32, 3), {},
          id="GroundPreprocess-whole"),
        # predict_atol: a compiled graph's bilinear weights differ from eager ones by float32 rounding, times
        # pixel values up to 255 (JAX, without x64, builds the polar grid in float32)
        p(AerialPreprocess, dict(input_spec=TINY_POLAR), pixels(4, 20, 22, 3), (4, 8, 32, 3),
          dict(predict_atol=1e-5), id="AerialPreprocess-polar"),
        p(AerialPreprocess, dict(input_spec=TINY_POLAR, source_size=16), pixels(4, 20, 20, 3), (4, 8, 32, 3),
          dict(float32_sublayers=("polar_transform",), predict_atol=1e-5), id="AerialPreprocess-source-size"),
        p(AerialPreprocess, dict(input_spec=TINY_RAW), pixels(4, 30, 30, 3), (4, 12, 12, 3), {},
          id="AerialPreprocess-raw"),
        # geodtr_tf
        p(IndexAwarePositionEncoding, dict(num_positions=8, num_descriptors=2, width=4),
          (normal(4, 2, 4), u), (4, 2, 4), {}, id="IndexAwarePositionEncoding"),
        p(MultiHeadSelfAttention, dict(num_heads=2, dropout=0.1), normal(4, 3, 4), (4, 3, 4), {},
          id="MultiHeadSelfAttention"),
        p(TransformerEncoderLayer, dict(num_heads=2, ffn_dim=8), normal(4, 3, 4), (4, 3, 4), {},
          id="TransformerEncoderLayer"),
        p(LayoutTransformer, dict(num_positions=8, num_descriptors=2, width=4, num_layers=2, num_heads=2,
                                  ffn_dim=8), (normal(4, 2, 4), u), (4, 2, 4), {}, id="LayoutTransformer"),
        p(GeometricLayoutExtractor, dict(num_positions=8, num_descriptors=2, num_layers=1, num_heads=2,
                                         ffn_dim=8), normal(4, 8, 6), (4, 8, 2), {},
          id="GeometricLayoutExtractor"),
        p(GeometricLayoutExtractor, dict(num_positions=8, num_descriptors=2, num_layers=0), normal(4, 8, 6),
          (4, 8, 2), {}, id="GeometricLayoutExtractor-no-transformer"),
        # mgtl_tf
        p(SpatialAwareAggregation, dict(num_embeddings=2), normal(4, 2, 3, 4), (4, 8), {},
          id="SpatialAwareAggregation"),
        p(SpatialAwareAggregation, dict(num_embeddings=2, reduce="max", normalize=False), normal(4, 2, 3, 4),
          (4, 8), {}, id="SpatialAwareAggregation-max-unnormalised"),
        p(TokenNeck, dict(dim=6), normal(4, 2, 5, 4), (4, 5, 6), {}, id="TokenNeck"),
        p(PositionalEmbedding, {}, normal(4, 5, 6), (4, 5, 6), {}, id="PositionalEmbedding"),
        p(CrossModalGenerator, dict(dim=6, hidden=8), normal(4, 5, 6), (4, 5, 6), {},
          id="CrossModalGenerator"),
        p(CrossModalGenerator, dict(dim=6, hidden=8, kind="conv"), normal(4, 5, 6), (4, 5, 6), {},
          id="CrossModalGenerator-conv"),
        p(GenerativeKnowledgeTransformer, dict(dim=6, num_heads=2, ffn_dim=8), (normal(4, 5, 6), normal(4, 5, 6)),
          (4, 5, 6), {}, id="GenerativeKnowledgeTransformer"),
        p(GenerativeKnowledgeTransformer, dict(dim=6, num_heads=2, ffn_dim=8, literal=True),
          (normal(4, 5, 6), normal(4, 7, 6)), ((4, 5, 6), (4, 2, 5, 7)),
          dict(call_kwargs=dict(return_attention=True)),
          id="GenerativeKnowledgeTransformer-literal-attention"),
        p(MGTLTower, dict(tower), normal(4, 32, 160, 3, scale=50), (4, 30), {}, id="MGTLTower-full"),
        p(MGTLTower, dict(tower, view="aerial", variant="naive", vgg_dropout=0.2),
          normal(4, 32, 160, 3, scale=50), (4, 30), {}, id="MGTLTower-naive", marks=slow),
        p(MGTLTower, dict(tower, variant="no_cmi", descriptor="mean"), normal(4, 32, 160, 3, scale=50),
          (4, 6), {}, id="MGTLTower-no-cmi-mean", marks=slow),
        p(MGTLTower, dict(tower, variant="backbone_only"), normal(4, 32, 160, 3, scale=50), (4, 20), {},
          id="MGTLTower-backbone-only"),
    ]


@pytest.mark.parametrize("cls,init_kwargs,input_data,expected_shape,options", _layer_cases())
def test_layer(cls, init_kwargs, input_data, expected_shape, options):
    keras.utils.set_random_seed(0)
    harness.check_layer(cls, init_kwargs, input_data, expected_shape, **options)


def test_mgtl_tower_details_symbolic_equal_eager():
    """The tower's ``return_details`` dict (lists of per-step tensors) traces like it runs."""
    from mgtl_tf.model import MGTLTower

    tower = MGTLTower(steps=2, dim=6, num_heads=2, ffn_dim=8, generator_dim=8, vgg_widths=VGG_TINY,
                      dtype="mixed_float16")
    x = normal(2, 32, 160, 3, scale=50)
    out = tower(x, training=False, return_details=True)
    harness.assert_symbolic_matches(tower, (x,), out, dict(training=False, return_details=True))
    assert keras.backend.standardize_dtype(out["descriptor"].dtype) == "float32"  # l2-normalised in float32
    assert keras.backend.standardize_dtype(out["tokens"][0].dtype) == "float16"


# ------------------------------------------------------------------------------------------------ models
def _geodtr(**kw):
    from geodtr_tf import GeoDTR

    return GeoDTR(input_spec=GEODTR_TINY, seed=3, num_descriptors=2, num_layers=1, num_heads=3, ffn_dim=16,
                  dropout=0.3, backbone_widths=(4, 4, 8, 8), backbone_depths=(1, 1, 1, 1), **kw)


def _mgtl(variant, vgg_dropout=0.0):
    def make(**kw):
        from mgtl_tf.model import MGTL

        return MGTL(input_spec=SAFA_TINY, variant=variant, steps=2, dim=6, num_heads=2, ffn_dim=8,
                    generator_dim=8, vgg_widths=VGG_TINY, vgg_dropout=vgg_dropout, stop_gradient_target=False,
                    **kw)
    return make


def _safa(**kw):
    from mgtl_tf.safa.model import SAFA

    return SAFA(input_spec=SAFA_TINY, vgg_widths=VGG_TINY, vgg_dropout=0.0, **kw)


def _end_to_end(**kw):
    from common.serving.preprocess import EndToEndModel

    return EndToEndModel(_safa(dtype=kw.get("dtype")), aerial_source_size=24, **kw)


def _pair(size, b=4, scale=1.0, seed=0):
    return {"ground": normal(b, *size, 3, scale=scale, seed=seed), "aerial": normal(b, *size, 3, scale=scale,
                                                                                      seed=seed + 1)}


def _built(model):
    model.build()


def _same_aerial_embedding(model, loaded):
    x = normal(2, 32, 160, 3, scale=50, seed=9)
    np.testing.assert_array_equal(np.asarray(model.embed_aerial(x)), np.asarray(loaded.embed_aerial(x)))


MODEL_PRECISION = ("mixed_float16", "mixed_bfloat16")


def _model_cases():
    p = pytest.param
    slow = pytest.mark.slow
    return [
        p(_geodtr, _pair((48, 96)), {"ground": (4, 16), "aerial": (4, 16)},
          dict(build=_built, mixed_atol=1e-2, precision=MODEL_PRECISION, output_dtype="float32"),
          id="GeoDTR", marks=slow),
        p(_mgtl("full"), _pair((32, 160), scale=50), {"ground": (4, 30), "aerial": (4, 30)},
          dict(build=_built, mixed_atol=1e-2, precision=MODEL_PRECISION, deterministic_training=True,
               output_dtype="float32", compare_loaded=_same_aerial_embedding), id="MGTL-full", marks=slow),
        p(_mgtl("naive", vgg_dropout=0.2), _pair((32, 160), scale=50), {"ground": (4, 30), "aerial": (4, 30)},
          dict(build=_built, precision=(), run_training=False, compare_loaded=_same_aerial_embedding),
          id="MGTL-naive", marks=slow),
        p(_safa, _pair((32, 160), scale=50), {"ground": (4, 32), "aerial": (4, 32)},
          dict(build=_built, mixed_atol=1e-2, precision=MODEL_PRECISION, output_dtype="float32"), id="SAFA"),
        p(_end_to_end, {"ground": pixels(4, 16, 200, 3), "aerial": pixels(4, 30, 30, 3, seed=1)},
          {"ground": (4, 32), "aerial": (4, 32)},
          dict(build=lambda m: m.build(), run_training=False, float32_sublayers=("polar_transform",)),
          id="EndToEndModel", marks=slow),
    ]


@pytest.mark.parametrize("factory,inputs,expected_shape,options", _model_cases())
def test_model(factory, inputs, expected_shape, options):
    keras.utils.set_random_seed(0)
    harness.check_model(factory, inputs, expected_shape, **options)


def test_end_to_end_unbuilt_has_no_build_config():
    e2e = _end_to_end()
    assert not e2e.built and e2e.get_build_config() is None
    e2e.build()
    assert e2e.get_build_config() is not None


def test_optimizer_config_round_trip():
    from common.training.optim import TorchAdamW

    opt = TorchAdamW(learning_rate=3e-4, weight_decay=0.03, epsilon=1e-6, global_clipnorm=1.0)
    harness.assert_config_round_trip(opt)


def test_every_registered_class_is_covered():
    """Each class registered with ``register_keras_serializable`` has a case in this file."""
    found = set()
    for folder in ("common", "geodtr_tf", "mgtl_tf"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                if name.endswith(".py"):
                    text = open(os.path.join(dirpath, name), encoding="utf-8").read()
                    found |= set(re.findall(r"register_keras_serializable\([^)]*\)\s*\nclass (\w+)", text))
    covered = {case.values[0].__name__ for case in _layer_cases()} | {"TorchAdamW"}
    covered |= {"GeoDTR", "MGTL", "SAFA", "EndToEndModel"}
    assert found and found <= covered, f"registered, not run through the harness: {sorted(found - covered)}"


# ------------------------------------------------------------------------------------------------ JAX
def test_layers_under_jax():
    """This file (the quick cases) again in a subprocess with KERAS_BACKEND=jax."""
    reason = harness.jax_skip_reason()
    if reason:
        pytest.skip(reason)
    done = harness.run_pytest_under_backend("jax", os.path.abspath(__file__), ["-m", "not slow"])
    assert done.returncode == 0, done.stdout[-6000:]
