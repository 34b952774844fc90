"""MGTL: Mutual Generative Transformer Learning (Zhao, Zhai, Huang, Cheng; arXiv 2203.09135).

No public code exists; this is the reconstruction of mgtl.md, which reproduces the paper's Table 2 parameter
counts (29.42M / 50.92M / 79.27M). Each view (ground panorama, polar aerial; 112x616) runs its own tower,
top-down as in the paper's figure:

    image ─ VGG16 trunk ─ 4x20x512 ─ mean over rows + FCN ─ 20x384 ─ + position, LN ─ F̌⁰
    for l = 1 … L (separate weights per step):
        Lˡ  = G(F̌ˡ⁻¹)                      # CMI generator: G2S on the ground tower, S2G on the aerial one
        Fˡ  = GKST(query=F̌ˡ⁻¹, key=value=Lˡ)
        F̌ˡ = LN(Fˡ)
    descriptor = L2(flatten(F̌ᴸ))           # 7680-d, azimuth order kept (flag: mean-pool to 384-d)

A view hallucinates the other from its own features, so descriptors are per-image and retrieval is the usual
nearest-neighbour search. In training the generators are taught to imitate the paired image's tokens:

    loss = soft-margin triplet(γ = 10)  +  λ·Σ_l [MSE(G2S(F̌_gˡ⁻¹), sg(F̌_aˡ⁻¹)) + MSE(S2G(F̌_aˡ⁻¹), sg(F̌_gˡ⁻¹))]

with λ = 0.05 and sg the stop-gradient (flag ``stop_gradient_target``). ``call`` in training returns the
generated tokens and their targets, stacked (B, L, N, dim), so the loss can be computed on a global batch
gathered across replicas.

Variants (``variant``): ``full`` (above), ``no_cmi`` (no generators: self-attention, key = value = F̌),
``naive`` (generators are circular 1-D convolutions, kernel 3), ``backbone_only`` (VGG16, mean over rows,
flatten 20x512, L2). ``steps`` is L; ``literal_block`` the block as printed (no FFN).
"""

from __future__ import annotations

import keras
from keras import layers, ops

from common.backbones.vgg import VGG16_WIDTHS, VGG16Trunk
from common.errors import CVGLError
from mgtl_tf.safa.layers import l2_normalize
from common.training.losses import soft_margin_triplet, utm_far_mask
from common.models.base import CrossViewModel
from mgtl_tf.layers import CrossModalGenerator, GenerativeKnowledgeTransformer, PositionalEmbedding, TokenNeck

VARIANTS = ("backbone_only", "no_cmi", "full", "naive")


def _flatten(x):
    """(B, ...) -> (B, prod(...)); the length is static when the shape is (so symbolic shapes keep it)."""
    dims = tuple(x.shape[1:])
    if any(d is None for d in dims):
        return ops.reshape(x, (ops.shape(x)[0], -1))
    n = 1
    for d in dims:
        n *= int(d)
    return ops.reshape(x, (-1, n))


@keras.saving.register_keras_serializable(package="cvgl")
class MGTLTower(layers.Layer):
    """One view of MGTL: image -> descriptor (+ per-step tokens, generated tokens, attention weights).

    ``view`` is "ground" (its generator is G2S) or "aerial" (S2G); it only names things.
    """

    @classmethod
    def from_config(cls, config):
        from common.models.base import rename_legacy_keys

        return super().from_config(rename_legacy_keys(config, {"heads": "num_heads", "mlp_dim": "ffn_dim"}))

    def __init__(self, view="ground", variant="full", steps=6, dim=384, num_heads=6, ffn_dim=1536,
                 generator_dim=1536, generator_kernel=3, vgg_widths=VGG16_WIDTHS, vgg_dropout=0.0,
                 literal_block=False, descriptor="flatten", layer_norm_epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        if variant not in VARIANTS:
            raise ValueError(f"MGTL: model.variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        if descriptor not in ("flatten", "mean"):
            raise ValueError(f"MGTL: model.descriptor must be 'flatten' or 'mean', got {descriptor!r}")
        if variant != "backbone_only" and int(steps) < 1:
            raise ValueError(f"MGTL: model.steps must be >= 1, got {steps}")
        self.view, self.variant, self.steps = view, variant, int(steps)
        self.dim, self.num_heads, self.ffn_dim = int(dim), int(num_heads), int(ffn_dim)
        self.generator_dim, self.generator_kernel = int(generator_dim), int(generator_kernel)
        self.vgg_widths, self.vgg_dropout = tuple(int(w) for w in vgg_widths), float(vgg_dropout)
        self.literal_block, self.descriptor = bool(literal_block), descriptor
        self.layer_norm_epsilon = layer_norm_epsilon
        dt = self.dtype_policy

        self.trunk = VGG16Trunk(self.vgg_widths, dropout=self.vgg_dropout, name="vgg16", dtype=dt)
        self.generators, self.blocks, self.step_norms = [], [], []
        if variant == "backbone_only":
            return
        self.neck = TokenNeck(self.dim, name="neck", dtype=dt)
        self.position = PositionalEmbedding(epsilon=layer_norm_epsilon, name="position", dtype=dt)
        gen_name = "g2s" if view == "ground" else "s2g"
        for step in range(1, self.steps + 1):
            if variant in ("full", "naive"):
                kind = "mlp" if variant == "full" else "conv"
                self.generators.append(CrossModalGenerator(self.dim, self.generator_dim, kind=kind,
                                                           kernel_size=self.generator_kernel,
                                                           name=f"{gen_name}_{step}", dtype=dt))
            self.blocks.append(GenerativeKnowledgeTransformer(self.dim, self.num_heads, self.ffn_dim,
                                                              literal=self.literal_block,
                                                              epsilon=layer_norm_epsilon,
                                                              name=f"gkst_{step}", dtype=dt))
            self.step_norms.append(layers.LayerNormalization(epsilon=layer_norm_epsilon,
                                                             name=f"norm_{step}", dtype=dt))

    @property
    def has_generators(self):
        return bool(self.generators)

    def build(self, input_shape):
        self.trunk.build(input_shape)
        fmap = self.trunk.compute_output_shape(input_shape)
        if self.variant != "backbone_only":
            self.neck.build(fmap)
            tokens = self.neck.compute_output_shape(fmap)
            self.position.build(tokens)
            for step in range(self.steps):
                if self.generators:
                    self.generators[step].build(tokens)
                self.blocks[step].build(tokens, tokens)
                self.step_norms[step].build(tokens)
        self.built = True

    def call(self, image, training=None, return_details=False):
        """image (B, H, W, 3) -> descriptor (B, d); with ``return_details`` a dict::

            {"descriptor": (B, d), "tokens": [F̌⁰ … F̌ᴸ⁻¹] (inputs of each step), "generated": [L¹ … Lᴸ],
             "attention": [(B, heads, N, N) per step]}
        """
        fmap = self.trunk(image, training=training)
        tokens_in, generated, attention = [], [], []
        if self.variant == "backbone_only":
            desc = _flatten(ops.mean(fmap, axis=1))
        else:
            f = self.position(self.neck(fmap))                         # F̌⁰
            for step in range(self.steps):
                tokens_in.append(f)
                memory = self.generators[step](f) if self.generators else f   # Lˡ (or self-attention)
                generated.append(memory)
                f, scores = self.blocks[step](f, memory, return_attention=True)  # Fˡ
                attention.append(scores)
                f = self.step_norms[step](f)                           # F̌ˡ
            desc = _flatten(f) if self.descriptor == "flatten" else ops.mean(f, axis=1)
        desc = l2_normalize(desc)
        if not return_details:
            return desc
        return {"descriptor": desc, "tokens": tokens_in, "generated": generated if self.generators else [],
                "attention": attention}

    def get_config(self):
        config = super().get_config()
        config.update(view=self.view, variant=self.variant, steps=self.steps, dim=self.dim, num_heads=self.num_heads,
                      ffn_dim=self.ffn_dim, generator_dim=self.generator_dim,
                      generator_kernel=self.generator_kernel, vgg_widths=list(self.vgg_widths),
                      vgg_dropout=self.vgg_dropout, literal_block=self.literal_block,
                      descriptor=self.descriptor, layer_norm_epsilon=self.layer_norm_epsilon)
        return config


def generative_loss(outputs, weight=0.05, stop_gradient=True, directions=("g2s", "s2g")):
    """λ·Σ_l [MSE(G2S(F̌_gˡ⁻¹), sg(F̌_aˡ⁻¹)) + MSE(S2G(F̌_aˡ⁻¹), sg(F̌_gˡ⁻¹))], MSE over tokens and channels.

    ``outputs`` holds (B, L, N, dim) stacks "ground_generated", "ground_tokens", "aerial_generated",
    "aerial_tokens" (from :meth:`MGTL.call` in training). ``directions`` picks the terms (tests use one).
    Float32. Σ over steps, mean over batch, tokens and channels.
    """
    total = ops.zeros((), "float32")
    pairs = {"g2s": ("ground_generated", "aerial_tokens"), "s2g": ("aerial_generated", "ground_tokens")}
    for d in directions:
        gen_key, tgt_key = pairs[d]
        gen = ops.cast(outputs[gen_key], "float32")
        tgt = ops.cast(outputs[tgt_key], "float32")
        if stop_gradient:
            tgt = ops.stop_gradient(tgt)
        per_step = ops.mean(ops.square(gen - tgt), axis=(0, 2, 3))  # (L,)
        total = total + ops.sum(per_step)
    return weight * total


@keras.saving.register_keras_serializable(package="cvgl")
class MGTL(CrossViewModel):
    """The two-tower MGTL model (see the module docstring). Keyword arguments are the ``model:`` keys of a
    config (mgtl_tf/README.md lists them with their defaults and the paper's wording)."""

    LEGACY_KEYS = {"heads": "num_heads", "mlp_dim": "ffn_dim", "triplet_alpha": "alpha"}  # names before 2026-12

    def __init__(self, variant="full", steps=6, dim=384, num_heads=6, ffn_dim=1536, generator_dim=1536,
                 generator_kernel=3, vgg_widths=VGG16_WIDTHS, vgg_dropout=0.0, literal_block=False,
                 descriptor="flatten", layer_norm_epsilon=1e-6, alpha=10.0, generative_weight=0.05,
                 stop_gradient_target=True, utm_mask=False, utm_mask_radius_m=25.0,
                 input_spec="safa_polar", **kwargs):
        super().__init__(input_spec=input_spec, **kwargs)
        tower_cfg = dict(variant=variant, steps=steps, dim=dim, num_heads=num_heads, ffn_dim=ffn_dim,
                         generator_dim=generator_dim, generator_kernel=generator_kernel, vgg_widths=vgg_widths,
                         vgg_dropout=vgg_dropout, literal_block=literal_block, descriptor=descriptor,
                         layer_norm_epsilon=layer_norm_epsilon)
        self.tower_cfg = dict(tower_cfg, vgg_widths=list(vgg_widths))
        self.ground_tower = MGTLTower(view="ground", name="ground", dtype=self.dtype_policy, **tower_cfg)
        self.aerial_tower = MGTLTower(view="aerial", name="aerial", dtype=self.dtype_policy, **tower_cfg)
        self.alpha = float(alpha)
        self.generative_weight = float(generative_weight)
        self.stop_gradient_target = bool(stop_gradient_target)
        self.utm_mask = bool(utm_mask)
        self.utm_mask_radius_m = float(utm_mask_radius_m)

    @property
    def variant(self):
        return self.ground_tower.variant

    @property
    def needs_positions(self) -> bool:
        """True when the loss needs "position" in the inputs (the 25 m UTM mask)."""
        return self.utm_mask

    def descriptor_dim(self) -> int:
        """Length of the descriptor at the input spec's ground size (both views give the same)."""
        tokens = -(-int(self.input_spec_.ground_size[1]) // 32)
        t = self.ground_tower
        if t.variant == "backbone_only":
            return tokens * t.vgg_widths[-1]
        return tokens * t.dim if t.descriptor == "flatten" else t.dim

    # --- build ---------------------------------------------------------------------------------------
    def build(self, input_shape=None):
        if input_shape is None:
            input_shape = {}
        g = tuple(input_shape.get("ground") or (None,) + tuple(self.input_spec_.ground_size) + (3,))
        a = tuple(input_shape.get("aerial") or (None,) + tuple(self.input_spec_.aerial_size) + (3,))
        self.ground_tower.build(g)
        self.aerial_tower.build(a)
        self.built = True

    # --- towers ------------------------------------------------------------------------------------------
    def embed_ground(self, ground, training=False):
        return self.ground_tower(ground, training=training)

    def embed_aerial(self, aerial, training=False):
        return self.aerial_tower(aerial, training=training)

    def call(self, inputs, training=None):
        if not training:
            return {"ground": self.embed_ground(inputs["ground"]), "aerial": self.embed_aerial(inputs["aerial"])}
        g = self.ground_tower(inputs["ground"], training=training, return_details=True)
        a = self.aerial_tower(inputs["aerial"], training=training, return_details=True)
        out = {"ground": g["descriptor"], "aerial": a["descriptor"]}
        if self.ground_tower.has_generators:
            out["ground_generated"] = ops.stack(g["generated"], axis=1)   # G2S outputs  (B, L, N, dim)
            out["ground_tokens"] = ops.stack(g["tokens"], axis=1)         # F̌_g^{l-1}   (B, L, N, dim)
            out["aerial_generated"] = ops.stack(a["generated"], axis=1)   # S2G outputs
            out["aerial_tokens"] = ops.stack(a["tokens"], axis=1)
        return out

    def attention_maps(self, ground=None, aerial=None):
        """Cross-attention weights per step: {"ground": [(B, heads, N, N)] (ground tokens over imagined aerial
        tokens, G2S), "aerial": [...] (S2G)} for whichever views are given."""
        out = {}
        for key, tower, x in (("ground", self.ground_tower, ground), ("aerial", self.aerial_tower, aerial)):
            if x is not None:
                out[key] = tower(x, training=False, return_details=True)["attention"]
        return out

    # --- loss ----------------------------------------------------------------------------------------
    def family_loss(self, outputs, positions=None):
        mask = None
        if self.utm_mask:
            if positions is None:
                raise CVGLError("MGTL: model.utm_mask is on (CVACT's 25 m rule) but the inputs carry no "
                                "'position'; build the dataset with positions or set model.utm_mask: false")
            mask = utm_far_mask(positions, self.utm_mask_radius_m)
        loss = soft_margin_triplet(outputs["aerial"], outputs["ground"], alpha=self.alpha, mask=mask)
        if "ground_generated" in outputs and self.generative_weight:
            loss = loss + generative_loss(outputs, self.generative_weight, self.stop_gradient_target)
        return loss

    # --- reporting -----------------------------------------------------------------------------------
    def components(self) -> dict:
        out = {}
        for view, tower in (("ground", self.ground_tower), ("aerial", self.aerial_tower)):
            out[f"VGG16 trunk ({view})"] = [tower.trunk]
            if tower.variant == "backbone_only":
                continue
            out[f"FCN neck 512->{tower.dim} ({view})"] = [tower.neck]
            out[f"positional embedding + LN ({view})"] = [tower.position]
            if tower.generators:
                name = "G2S" if view == "ground" else "S2G"
                out[f"{name} generators x{tower.steps} ({tower.generators[0].kind})"] = list(tower.generators)
            kind = "cross" if tower.generators else "self"
            out[f"GKST blocks x{tower.steps} ({kind}-attention, {view})"] = list(tower.blocks)
            out[f"step LayerNorms x{tower.steps} ({view})"] = list(tower.step_norms)
        return out

    def get_config(self):
        config = super().get_config()
        config.update(self.tower_cfg)
        config.update(alpha=self.alpha, generative_weight=self.generative_weight,
                      stop_gradient_target=self.stop_gradient_target, utm_mask=self.utm_mask,
                      utm_mask_radius_m=self.utm_mask_radius_m)
        return config
