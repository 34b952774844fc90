"""SAFA's input specification, shared by MGTL: 112x616 ground panorama and polar aerial, Keras VGG16 pixels
(RGB -> BGR, ImageNet mean subtracted, no scaling: "vgg_bgr")."""

from common.data.specs import InputSpec

SAFA_POLAR = InputSpec("safa_polar", (112, 616), (112, 616), True, "vgg_bgr")
