"""Backbones: ``common.backbones.resnet`` (GeoDTR's ResNet-34) and ``common.backbones.vgg`` (SAFA's VGG16 trunk)."""
