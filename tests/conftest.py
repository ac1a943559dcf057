"""Shared test set-up: two logical CPU devices, quiet TF logs, small helpers.

TF's device list is fixed the first time it is used, so the split of the CPU into /cpu:0 and
/cpu:1 (for MirroredStrategy and the two-tower placement) happens here, before any test runs.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
