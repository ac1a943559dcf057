"""Devices and strategies: the one device-name parser, the check that named devices exist, and
(from keras_alexnet.training, moving here) the choice of tf.distribute strategy."""

from typing import Sequence

import tensorflow as tf


def device_key(name: str) -> str:
  """'/job:localhost/replica:0/task:0/device:GPU:0', '/device:GPU:0', '/gpu:0' -> '/gpu:0'.

  Compared case-insensitively, as TF itself reads device names."""
  spec = tf.DeviceSpec.from_string(name)
  return f"/{(spec.device_type or '').lower()}:{spec.device_index or 0}"


def missing_devices(devices: Sequence[str]) -> list:
  """Those of `devices` that are not among this process's logical devices."""
  known = {device_key(d.name) for d in tf.config.list_logical_devices()}
  return [d for d in devices if device_key(d) not in known]


def logical_device_names() -> list:
  return sorted(d.name for d in tf.config.list_logical_devices())
