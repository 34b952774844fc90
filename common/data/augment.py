"""GeoDTR's augmentations as seeded TensorFlow functions for tf.data.

Reference: Zhang, Xu, Shen, Chen, Wang, "Cross-view Geo-localization via Learning Disentangled Geometric
Layout Correspondence" (GeoDTR, AAAI 2023), Sec. "Layout simulation and semantic augmentation", and the
official code (``datasets/layoutsim.py``, the torchvision transforms of ``datasets/cvusa.py``).

**Layout simulation (LS)** acts on the *pair* with one geometry (``layout_simulation``):

1. flip with p = 0.5: the panorama and a polar aerial reverse their columns, a raw aerial is mirrored
   left-right (east <-> west): bearing b -> 360 - b in both views;
2. then one of none / left / right / back with p = 1/4 each. For panorama width W the panorama and the
   polar aerial are rolled along the width by ``W - int(0.75 W)`` (left), ``-int(0.25 W)`` (right),
   ``-int(0.5 W)`` (back) — +168 / -167 / -335 for W = 671, computed from the *ground* width as the official
   code does; a raw aerial is rotated by ``tf.image.rot90`` with k = 3 (left: 90 deg clockwise, north goes
   east, like the panorama's +W/4 roll), k = 1 (right), k = 2 (back).

``mode``: "strong" (the paper: flip + rotation), "weak" (flip only), "none". LS is a pure permutation of
pixels, so it commutes with the pixel normalisation and is checked bit-exactly against the official outputs
(tests/fixtures/geodtr/layout_sim.npz).

**Semantic augmentation (SA)** acts on each view *independently* (``semantic_augment``), on float RGB pixels
in [0, 255] after resizing, with torchvision's definitions (tensor semantics, clamped to [0, 255]):

* strong: ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3) — factors f ~ U[0.7, 1.3], the three
  sub-ops in a random order; brightness: clip(f x); contrast: clip(f x + (1 - f) mean(gray(x)));
  saturation: clip(f x + (1 - f) gray(x)); gray = ITU-R 601 luma 0.299 R + 0.587 G + 0.114 B;
  then RandomGrayscale(p=0.2) (3-channel luma); RandomPosterize(bits=4, p=0.2): floor(x) & 0xF0;
  GaussianBlur(kernel (1, 5), sigma ~ U[0.1, 5]) — vertical-only 5-tap, reflect padding, always on.
* weak: ColorJitter(0.1, 0.1, 0.1) and RandomGrayscale(p=0.1).
* none: identity.

GeoDTR runs SA on PIL uint8 images, which rounds after every sub-op; here the pixels stay float (no
intermediate rounding), a difference of at most a grey level per op that does not change the distribution.

Randomness is stateless: every function takes a ``seed`` (shape [2] int tensor), so a pipeline that derives
seeds from its own seed is reproducible.
"""

from __future__ import annotations

import tensorflow as tf

from common.errors import CVGLError

LAYOUT_MODES = ("none", "weak", "strong")
SEMANTIC_MODES = ("none", "weak", "strong")
ROTATIONS = ("none", "left", "right", "back")  # index = rotation code
RAW_ROT90_K = (0, 3, 1, 2)  # tf.image.rot90 k (counter-clockwise quarter turns) per rotation code
GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma


def layout_shifts(width: int) -> tuple:
    """Column rolls for rotation codes (none, left, right, back) at panorama width ``width``."""
    w = int(width)
    return (0, w - int(0.75 * w), -int(0.25 * w), -int(0.5 * w))


def apply_layout(ground, aerial, flip, rotation, polar: bool):
    """Deterministic LS on one pair of HWC images. ``flip``: bool, ``rotation``: code 0..3 (ROTATIONS)."""
    flip = tf.convert_to_tensor(flip, tf.bool)
    rotation = tf.cast(rotation, tf.int32)
    ground, aerial = tf.cond(flip, lambda: (tf.reverse(ground, axis=[1]), tf.reverse(aerial, axis=[1])),
                             lambda: (ground, aerial))
    width = ground.shape[1] if ground.shape[1] is not None else tf.shape(ground)[1]
    if isinstance(width, int):
        shift = tf.gather(tf.constant(layout_shifts(width), tf.int32), rotation)
    else:
        w = width
        shift = tf.gather(tf.stack([0, w - (3 * w) // 4, -(w // 4), -(w // 2)]), rotation)
    ground = tf.roll(ground, shift, axis=1)
    if polar:
        aerial = tf.roll(aerial, shift, axis=1)
    else:
        aerial = tf.image.rot90(aerial, tf.gather(tf.constant(RAW_ROT90_K, tf.int32), rotation))
    return ground, aerial


def _seeds(seed, n):
    return tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=n))


def draw_layout(seed, mode: str = "strong"):
    """(flip, rotation) drawn from ``seed`` for the given LS mode."""
    if mode not in LAYOUT_MODES:
        raise ValueError(f"layout mode must be one of {LAYOUT_MODES}, got {mode!r}")
    s_flip, s_rot = _seeds(seed, 2)
    flip = tf.random.stateless_uniform([], s_flip) < 0.5
    rotation = tf.random.stateless_uniform([], s_rot, minval=0, maxval=4, dtype=tf.int32)
    if mode == "none":
        return tf.constant(False), tf.constant(0)
    if mode == "weak":
        return flip, tf.constant(0)
    return flip, rotation


def layout_simulation(ground, aerial, seed, polar: bool, mode: str = "strong"):
    """Random LS on one pair (HWC tensors); the same flip/rotation for both views."""
    if mode == "none":
        return ground, aerial
    flip, rotation = draw_layout(seed, mode)
    return apply_layout(ground, aerial, flip, rotation, polar)


# ------------------------------------------------------------------------------ semantic augmentation
def rgb_to_grayscale(image):
    """ITU-R 601 luma of an RGB HWC float image, keeping a channel axis of size 1."""
    w = tf.constant(GRAY_WEIGHTS, image.dtype)[:, None]
    return tf.tensordot(image, w, axes=[[2], [0]])  # a (H*W, 3) x (3, 1) matmul: faster than reduce_sum


def _blend(a, b, ratio):
    return tf.clip_by_value(ratio * a + (1.0 - ratio) * b, 0.0, 255.0)


def adjust_brightness(image, factor):
    return _blend(image, tf.zeros_like(image), factor)


def adjust_contrast(image, factor):
    mean = tf.reduce_mean(rgb_to_grayscale(image))
    return _blend(image, mean, factor)


def adjust_saturation(image, factor):
    return _blend(image, rgb_to_grayscale(image), factor)


def grayscale(image):
    return tf.repeat(rgb_to_grayscale(image), 3, axis=-1)


def posterize(image, bits: int = 4):
    """Keep the top ``bits`` bits of each (floored) 8-bit value: floor(x) & mask."""
    step = float(2 ** (8 - bits))
    return tf.floor(tf.floor(image) / step) * step


def gaussian_kernel1d(sigma, size: int = 5):
    """torchvision's kernel: exp(-x^2 / 2 sigma^2) at x = -(size-1)/2 .. (size-1)/2, normalised."""
    half = (size - 1) * 0.5
    x = tf.linspace(-half, half, size)
    pdf = tf.exp(-0.5 * tf.square(x / tf.cast(sigma, tf.float32)))
    return pdf / tf.reduce_sum(pdf)


def vertical_blur(image, sigma, size: int = 5):
    """GeoDTR's GaussianBlur((1, 5)): a vertical ``size``-tap Gaussian with reflect padding (HWC)."""
    k = gaussian_kernel1d(sigma, size)
    pad = size // 2
    padded = tf.pad(image, [[pad, pad], [0, 0], [0, 0]], mode="REFLECT")
    channels = image.shape[-1] if image.shape[-1] is not None else 3
    kernel = tf.tile(tf.reshape(k, (size, 1, 1, 1)), [1, 1, channels, 1])  # (size, 1, C, 1) depthwise
    return tf.nn.depthwise_conv2d(padded[None], kernel, [1, 1, 1, 1], "VALID")[0]


def color_jitter(image, seed, strength: float):
    """torchvision ColorJitter(b, c, s, hue=0) with b = c = s = strength: random factors, random order.

    Each sub-op is a blend ``clip(f x + (1 - f) target)`` with target 0 (brightness), the mean luma
    (contrast) or the luma image (saturation); the step picks its target with a one-hot weight instead of
    a branch, which keeps the tf.data graph small (exact: the other targets are multiplied by 0).
    """
    s_f, s_o = _seeds(seed, 2)
    factors = tf.random.stateless_uniform([3], s_f, minval=1.0 - strength, maxval=1.0 + strength)
    order = tf.argsort(tf.random.stateless_uniform([3], s_o))
    for step in range(3):
        which = tf.one_hot(order[step], 3, dtype=image.dtype)
        gray = rgb_to_grayscale(image)
        target = which[1] * tf.reduce_mean(gray) + which[2] * gray
        image = _blend(image, target, tf.gather(factors, order[step]))
    return image


def semantic_augment(image, seed, mode: str = "strong"):
    """SA on one view: float32 RGB HWC in [0, 255] -> same. See the module docstring for the ops."""
    if mode not in SEMANTIC_MODES:
        raise ValueError(f"semantic mode must be one of {SEMANTIC_MODES}, got {mode!r}")
    if mode == "none":
        return image
    image = tf.cast(image, tf.float32)
    s_cj, s_gray, s_post, s_blur = _seeds(seed, 4)
    strength, p_gray = (0.3, 0.2) if mode == "strong" else (0.1, 0.1)
    image = color_jitter(image, s_cj, strength)
    gray_now = tf.random.stateless_uniform([], s_gray) < p_gray
    image = tf.cond(gray_now, lambda: grayscale(image), lambda: image)
    if mode == "strong":
        post_now = tf.random.stateless_uniform([], s_post) < 0.2
        image = tf.cond(post_now, lambda: posterize(image, 4), lambda: image)
        sigma = tf.random.stateless_uniform([], s_blur, minval=0.1, maxval=5.0)
        image = vertical_blur(image, sigma, 5)
    return image


def parse_augment(augment) -> dict:
    """Normalise the ``augment`` argument of the pipeline to {"layout": mode, "semantic": mode}.

    None / "none" -> no augmentation; "strong" / "weak" -> both LS and SA at that setting (GeoDTR's "LS"
    in the paper's tables means both); a dict may set ``layout`` and ``semantic`` separately.
    """
    if augment is None or augment is False:
        return {"layout": "none", "semantic": "none"}
    if isinstance(augment, str):
        modes = {"layout": augment, "semantic": augment}
    elif isinstance(augment, dict):
        unknown = set(augment) - {"layout", "semantic"}
        if unknown:
            from common.errors import CVGLError

            raise CVGLError(f"augment has unknown keys {sorted(unknown)}; use 'layout' and 'semantic'")
        modes = {"layout": augment.get("layout", "none"), "semantic": augment.get("semantic", "none")}
    else:
        modes = {"layout": "strong", "semantic": "strong"} if augment is True else None
    if modes is None or modes["layout"] not in LAYOUT_MODES or modes["semantic"] not in SEMANTIC_MODES:
        from common.errors import CVGLError

        raise CVGLError(f"augment must be none/weak/strong or a dict of them, got {augment!r}")
    return modes


def augment_argument(augment):
    """The config's ``augment: {layout_simulation: .., semantic: ..}`` as the pipeline's ``{layout, semantic}``."""
    if isinstance(augment, dict):
        unknown = set(augment) - {"layout_simulation", "layout", "semantic"}
        if unknown:
            raise CVGLError(f"config augment has unknown keys {sorted(unknown)}; use layout_simulation and semantic "
                            "(each none, weak or strong)")
        return {"layout": augment.get("layout_simulation", augment.get("layout", "none")),
                "semantic": augment.get("semantic", "none")}
    return augment


def _ramp_mask(step, b, seed_key, ramp_steps: int):
    """(B,) float mask: 1 for the samples a ramped augmentation applies to at global ``step``. Each sample is
    augmented with probability min(1, (step + 1) / ramp_steps) (stateless draw); ramp_steps 0: always."""
    import tensorflow as tf

    if not ramp_steps:
        return tf.ones([b], tf.float32)
    p = tf.minimum(1.0, tf.cast(step + 1, tf.float32) / float(ramp_steps))
    u = tf.random.stateless_uniform([b], seed=tf.stack([tf.cast(seed_key, tf.int64), step]))
    return tf.cast(u < p, tf.float32)


def azimuth_roll(ds, seed: int = 0, ramp_steps: int = 0):
    """Roll each training pair's panorama and polar aerial by the same random azimuth (any angle).

    ``train.azimuth_roll: true`` (off in every paper config). Layout simulation turns by multiples of 90
    degrees only, as the papers do; a synthetic city has a single street-grid orientation, so a model trained
    on one city would otherwise see streets at the same azimuths (mod 90) only. Both views are in the same
    azimuth coordinates (north at the centre column, clockwise), so a common circular shift of the columns is
    a consistent rotation of the scene. Polar aerials only. ``ds`` yields ``(global step, batch)``; the
    draws are stateless, keyed on (seed, step), so a resumed run draws what the uninterrupted one drew.
    ``ramp_steps`` (``train.augment_ramp_epochs``): over the first steps only a growing share of the samples
    is rolled (see :func:`_ramp_mask`).
    """
    import tensorflow as tf

    def roll(step, batch):
        batch = dict(batch)
        b = tf.shape(batch["ground"])[0]
        frac = tf.random.stateless_uniform([b, 1], seed=tf.stack([tf.cast(seed + 7919, tf.int64), step]))
        frac = frac * _ramp_mask(step, b, seed + 7920, ramp_steps)[:, None]
        for key in ("ground", "aerial"):
            w = tf.shape(batch[key])[2]
            shift = tf.cast(tf.round(frac * tf.cast(w, tf.float32)), tf.int32)
            idx = tf.math.floormod(tf.range(w)[None, :] - shift, w)
            batch[key] = tf.gather(batch[key], idx, axis=2, batch_dims=1)
        return step, batch

    return ds.map(roll)


def colour_shuffle(ds, seed: int = 0, ramp_steps: int = 0):
    """Per view and per sample: a random permutation of the colour channels and random channel gains in
    [0.6, 1.4] (``train.colour_shuffle: true``; off in every paper config). Two synthetic cities differ in
    palette; this makes a model trained on one city rely on layout rather than on its colours. ``ds`` yields
    ``(global step, batch)``; stateless draws keyed on (seed, step, view). ``ramp_steps``: as
    :func:`azimuth_roll`."""
    import tensorflow as tf

    def shuffle(step, batch):
        batch = dict(batch)
        b = tf.shape(batch["ground"])[0]
        on = _ramp_mask(step, b, seed + 104728, ramp_steps)  # the same samples in both views
        for v, key in enumerate(("ground", "aerial")):
            x = batch[key]
            k_perm = tf.stack([tf.cast(seed + 104729 + 2 * v, tf.int64), step])
            k_gain = tf.stack([tf.cast(seed + 104730 + 2 * v, tf.int64), step])
            keys = tf.random.stateless_uniform([b, 3], seed=k_perm) + (1.0 - on)[:, None] * tf.range(3.0) * 10.0
            perm = tf.argsort(keys, axis=-1)  # the identity where the sample is not augmented
            x = tf.gather(x, perm, axis=3, batch_dims=1)
            gain = tf.random.stateless_uniform([b, 1, 1, 3], seed=k_gain, minval=0.6, maxval=1.4)
            on4 = on[:, None, None, None]
            batch[key] = x * (on4 * gain + (1.0 - on4))
        return step, batch

    return ds.map(shuffle)
