"""A tiny CrossViewModel for the localisation tests: small conv towers that pool over the rows.

A ground panorama and the polar transform of its aerial image are aligned column by column (both put north
at the centre column), so each tower averages its feature map over the height and keeps the azimuth
profile as the descriptor (flattened, L2-normalised). Trained for a few seconds on a small synthetic world it
retrieves held-out pairs far above chance. Registered serializable like the real families, so it exercises
the same ``.keras`` and SavedModel paths.
"""

import keras
from keras import layers, ops

from common.training.losses import soft_margin_triplet
from common.models.base import CrossViewModel


@keras.saving.register_keras_serializable(package="cvgl_tests")
class StandInModel(CrossViewModel):
    def __init__(self, input_spec="standin_polar", width=8, **kwargs):
        super().__init__(input_spec=input_spec, **kwargs)
        self.width = int(width)
        self.ground_tower = self._tower("ground_tower")
        self.aerial_tower = self._tower("aerial_tower")

    def _tower(self, name):
        return keras.Sequential(
            [
                layers.Conv2D(self.width, 3, padding="same", activation="relu"),
                layers.Conv2D(self.width, 3, strides=2, padding="same", activation="relu"),
                layers.Conv2D(self.width, 3, padding="same"),
            ],
            name=name,
        )

    def build(self, input_shape=None):
        spec = self.input_spec_
        self.ground_tower.build((None, *spec.ground_size, 3))
        self.aerial_tower.build((None, *spec.aerial_size, 3))
        self.built = True

    @staticmethod
    def _descriptor(features):
        profile = ops.mean(features, axis=1)  # (B, W', C): one feature vector per azimuth bin
        return ops.normalize(ops.reshape(profile, (ops.shape(profile)[0], -1)), axis=-1)

    def embed_ground(self, ground, training=False):
        return self._descriptor(self.ground_tower(ground, training=training))

    def embed_aerial(self, aerial, training=False):
        return self._descriptor(self.aerial_tower(aerial, training=training))

    def family_loss(self, outputs, positions=None):
        return soft_margin_triplet(outputs["aerial"], outputs["ground"])

    def components(self):
        return {"ground tower": [self.ground_tower], "aerial tower": [self.aerial_tower]}

    def get_config(self):
        cfg = super().get_config()
        cfg.update(width=self.width)
        return cfg
