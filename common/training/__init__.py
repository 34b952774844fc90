"""The training system (issue 7): recipe resolution, optimizers and schedules, mixed precision, tf.distribute
with the full-batch loss, callbacks (validation, atomic checkpoints, resume, NaN guard) and the run loop.

Modules: :mod:`.recipe` (config + overrides), :mod:`.schedule` (per-epoch learning rate), :mod:`.optim`
(optimizers, precision), :mod:`.distribute` (strategies, cross-replica gather), :mod:`.callbacks`,
:mod:`.runner` (:func:`~common.training.runner.run_training`). Kept import-light: model code imports
:mod:`.distribute` from ``CrossViewModel.compute_loss``.
"""
