"""GeoDTR's recipe in ``python -m experiments.demo``: the paper row, made small enough for a CPU.

Every change is a config key, printed by the demo as ``<- override``. GeoDTR from random weights sits at
log 2 (every descriptor alike), and so does the official PyTorch code from the same weights and batches (the
regime, not a defect: docs/training.md). With the azimuth roll and colour shuffle from the first step it
leaves log 2 after a delay that is effectively random (~300 steps on one CPU, more than 500 on another).
Ramping the two in over the first 4 epochs (``train.augment_ramp_epochs``) lets it leave log 2 in the first
epoch on every run measured (loss 0.45 after epoch 2). The strong LS + SA augmentation keeps it collapsed, so
it is off.
"""

DEMO_RECIPE = {
    "config": "geodtr_cvusa_polar_ls",
    "epochs": 16,
    "overrides": {
        # 32x192: stride 16 gives 2x12 positions, token width 12 = a multiple of the 4 heads (176 is not)
        "input_spec.ground_size": [32, 192],
        "input_spec.aerial_size": [32, 192],
        "model.backbone_widths": [16, 32, 64, 64],
        "model.ffn_dim": 256,
        "model.dropout": 0.0,
        "model.backbone_weights": "random",
        "augment": {"layout_simulation": "none", "semantic": "none"},
        "train.optimizer.learning_rate": 1.0e-3,
        "train.schedule.name": "constant",
        "train.augment_ramp_epochs": 4,
    },
    # seconds on a 2-core CPU, for the demo's ETA before the first epoch has been timed
    "expected_epoch_s": 60.0,
    "expected_after_s": 60.0,
    "picture": "layout_descriptors",
}
