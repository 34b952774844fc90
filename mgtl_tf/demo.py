"""MGTL's recipe in ``python -m experiments.demo``: the paper row at CPU size (narrow VGG16, L = 2 steps,
random initialisation), with the paper's strong LS + SA augmentation ramped in over the first 4 epochs.
Every change is a config key, printed by the demo as ``<- override``."""

DEMO_RECIPE = {
    "config": "mgtl_cvusa_full",
    "epochs": 12,
    "overrides": {
        "model.vgg_widths": [8, 16, 32, 64, 64],
        "model.steps": 2,
        "model.dim": 64,
        "model.num_heads": 4,
        "model.ffn_dim": 128,
        "model.generator_dim": 128,
        "model.backbone_weights": None,
        "train.optimizer.learning_rate": 2.0e-4,
        "augment": {"layout_simulation": "strong", "semantic": "strong"},
        "train.augment_ramp_epochs": 4,
    },
    "expected_epoch_s": 27.0,
    "expected_after_s": 45.0,
    "picture": "attention",
}
