"""Input specifications: what each model family expects as pixels.

An :class:`InputSpec` names the ground and aerial sizes (H, W), whether the aerial input is the SAFA polar
transform of the aerial image or the raw aerial, and the pixel normalisation:

* ``"tanh"``: RGB in [0, 255] -> x / 127.5 - 1, i.e. [-1, 1] (GeoDTR: ToTensor then mean 0.5 / std 0.5).
* ``"vgg_bgr"``: RGB -> BGR, then subtract (103.939, 116.779, 123.68), no scaling (Keras VGG16 ImageNet
  weights, SAFA, MGTL).

Model inputs are float32 NHWC tensors already normalised this way. The pipeline
(:mod:`common.data.pipeline`) and the export's in-graph preprocessing (:mod:`common.preprocess`) both apply
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


GEODTR_POLAR = InputSpec("geodtr_polar", (122, 671), (122, 671), True, "tanh")
GEODTR_RAW = InputSpec("geodtr_raw", (122, 671), (256, 256), False, "tanh")
SAFA_POLAR = InputSpec("safa_polar", (112, 616), (112, 616), True, "vgg_bgr")  # SAFA and MGTL

SPECS = {s.name: s for s in (GEODTR_POLAR, GEODTR_RAW, SAFA_POLAR)}


def get_spec(name_or_dict) -> InputSpec:
    if isinstance(name_or_dict, InputSpec):
        return name_or_dict
    if isinstance(name_or_dict, dict):
        return InputSpec.from_config(name_or_dict)
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
