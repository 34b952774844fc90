"""Input specifications: what a model expects as pixels.

An :class:`InputSpec` names the ground and aerial sizes (H, W), whether the aerial input is the SAFA polar
transform of the aerial image or the raw aerial, and the pixel normalisation:

* ``"tanh"``: RGB in [0, 255] -> x / 127.5 - 1, i.e. [-1, 1] (GeoDTR: ToTensor then mean 0.5 / std 0.5).
* ``"vgg_bgr"``: RGB -> BGR, then subtract (103.939, 116.779, 123.68), no scaling (Keras VGG16 ImageNet
  weights, SAFA, MGTL).

Families define their specs (``geodtr_tf/specs.py``, ``mgtl_tf/safa/specs.py``) and register them with the
family (:mod:`common.models.registry`); configs name a spec, :func:`get_spec` finds it. A spec can also be
given inline as a mapping (``InputSpec.to_config``), which is how a ``.keras`` model carries its own.

Model inputs are float32 NHWC tensors already normalised this way. The pipeline
(:mod:`common.data.pipeline`) and the export's in-graph preprocessing (:mod:`common.serving.preprocess`) both apply
:func:`normalise` so the two can never differ.
"""

from __future__ import annotations

import dataclasses

VGG_BGR_MEAN = (103.939, 116.779, 123.68)


@dataclasses.dataclass(frozen=True)
class InputSpec:
    name: str
    ground_size: tuple  # (H, W)
    aerial_size: tuple  # (H, W)
    polar: bool  # aerial input is the polar transform of the aerial image
    normalisation: str  # "tanh" | "vgg_bgr"

    def replace(self, **kw) -> "InputSpec":
        return dataclasses.replace(self, **kw)

    def to_config(self) -> dict:
        d = dataclasses.asdict(self)
        d["ground_size"] = list(self.ground_size)
        d["aerial_size"] = list(self.aerial_size)
        return d

    @classmethod
    def from_config(cls, d: dict) -> "InputSpec":
        d = dict(d)
        d["ground_size"] = tuple(d["ground_size"])
        d["aerial_size"] = tuple(d["aerial_size"])
        return cls(**d)


NORMALISATIONS = ("tanh", "vgg_bgr")

SPECS: dict = {}  # name -> InputSpec, filled by register_spec (families register theirs)
SPEC_LOADERS: list = []  # callables that may register more specs (the family registry adds its loader)


def register_spec(spec: InputSpec) -> InputSpec:
    """Make ``spec`` findable by name; the same name with other values raises ValueError."""
    if not isinstance(spec, InputSpec):
        raise TypeError(f"register_spec expects an InputSpec, got {type(spec).__name__}")
    if spec.normalisation not in NORMALISATIONS:
        raise ValueError(f"input spec {spec.name}: normalisation must be one of {NORMALISATIONS}, "
                         f"got {spec.normalisation!r}")
    old = SPECS.get(spec.name)
    if old is not None and old != spec:
        raise ValueError(f"input spec {spec.name!r} is already registered with other values ({old})")
    SPECS[spec.name] = spec
    return spec


def get_spec(name_or_dict) -> InputSpec:
    if isinstance(name_or_dict, InputSpec):
        return name_or_dict
    if isinstance(name_or_dict, dict):
        return InputSpec.from_config(name_or_dict)
    if name_or_dict not in SPECS:
        for load in SPEC_LOADERS:  # a name may belong to a family not imported yet
            load()
    try:
        return SPECS[name_or_dict]
    except KeyError:
        from common.errors import CVGLError

        raise CVGLError(f"unknown input spec {name_or_dict!r}; known: {', '.join(sorted(SPECS))}") from None


def normalise(x, spec):
    """Map RGB pixels in [0, 255] (any float tensor: tf, numpy, jax, keras) to the spec's model input.

    The one pixel normalisation of the project: the tf.data pipeline and the export's in-graph preprocessing
    both call it. Plain arithmetic and slicing only, so it works on every backend and inside tf.data.
    ``"tanh"``: x / 127.5 - 1 (GeoDTR's mean 0.5 / std 0.5 after ToTensor). ``"vgg_bgr"``: reverse the
    channel axis (RGB -> BGR) and subtract :data:`VGG_BGR_MEAN` (Keras/Caffe VGG16, SAFA, MGTL).
    """
    mode = get_spec(spec).normalisation
    if mode == "tanh":
        return x / 127.5 - 1.0
    if mode == "vgg_bgr":
        import numpy as np

        return x[..., ::-1] - np.asarray(VGG_BGR_MEAN, dtype=np.float32)
    from common.errors import CVGLError

    raise CVGLError(f"unknown normalisation {mode!r} in input spec; use 'tanh' or 'vgg_bgr'")


def denormalise(x, spec):
    """Inverse of :func:`normalise` (back to RGB in [0, 255]), for pictures and debugging."""
    mode = get_spec(spec).normalisation
    if mode == "tanh":
        return (x + 1.0) * 127.5
    import numpy as np

    return (x + np.asarray(VGG_BGR_MEAN, dtype=np.float32))[..., ::-1]
