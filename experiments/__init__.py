"""The commands: ``python -m experiments.<command> --help`` for each.

This file names the model families the commands know: the shipped ones below, plus any package listed in
the ``CVGL_FAMILIES`` environment variable (comma-separated module names; each registers itself with
:func:`common.models.registry.register_family` when imported). They are imported only when a command first
asks the registry, so commands that build no model (``prepare``) never import TensorFlow.
"""

from common.models.registry import add_env_family_modules, add_family_modules

BUILTIN_FAMILIES = ("geodtr_tf", "mgtl_tf", "mgtl_tf.safa")

add_family_modules(BUILTIN_FAMILIES)
add_env_family_modules()
