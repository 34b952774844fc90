"""Imported first by the worker scripts of the distribution tests (run as ``python tests/_..._worker.py``):
TensorFlow backend, the project importable, and the CPU split into two logical devices before TensorFlow
initialises (it cannot be done later, and must not leak into other tests: hence a fresh process)."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["KERAS_BACKEND"] = "tensorflow"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
