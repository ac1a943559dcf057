"""Devices and strategies: the one device-name parser (the model's tower placement and the
trainer's --devices check share it), and the choice of tf.distribute strategy for --strategy.

Imports TensorFlow and keras_alexnet.errors only: the model imports this module, so it may
import no later stage (the strategy names live here, and config.py's flags read them)."""

import dataclasses
import json
import os
from typing import Sequence

from absl import logging
import tensorflow as tf

from keras_alexnet import errors

# --strategy's values; auto picks one of the others for the devices found (auto_strategy).
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "two_tower")


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


def check_devices(devices: Sequence[str]) -> None:
  """ValueError naming the --devices this process does not have, and the ones it has."""
  missing = missing_devices(devices)
  if missing:
    raise ValueError(f"--devices {missing} not found; this machine has "
                     f"{logical_device_names()}.")


def auto_strategy(gpus, cpus, devices=(), paper_net=True) -> tuple:
  """(strategy, devices, why) that --strategy=auto picks among the logical devices.

  The rule counts GPUs; without GPUs it counts the logical CPU devices, which exist only when
  the user split the CPU with --num_cpu_devices to try the strategies (a plain CPU is one
  device); --devices, when given, are the devices counted. Exactly two: the paper's
  two_tower split (section 3.2), or mirrored for a net without towers (--tiny_model,
  --variant=one_tower); more: mirrored over all of them; one: one_device.
  """
  if devices:
    found = list(devices)
    count = f"--devices names {len(found)} device(s) ({', '.join(found)})"
  elif gpus:
    found = list(gpus)
    count = f"this machine has {len(found)} GPU(s) ({', '.join(found)})"
  elif len(cpus) >= 2:
    found = list(cpus)
    count = (f"this machine has no GPU and {len(found)} logical CPU devices "
             f"({', '.join(found)}; --num_cpu_devices)")
  else:
    found = list(cpus[:1]) or ["/cpu:0"]
    count = f"this machine has no GPU and one CPU device ({found[0]})"
  if len(found) == 2 and paper_net:
    return "two_tower", found, (f"{count}: the paper's split, tower a on {found[0]} and "
                                f"tower b on {found[1]}")
  if len(found) >= 2:
    return "mirrored", found, f"{count}: one replica on each" + (
        "" if paper_net else " (two_tower needs the paper's two-tower net)")
  return "one_device", found, f"{count}: one replica"


def refuse_auto_under_tf_config() -> None:
  """--strategy=auto is for one machine: ValueError when TF_CONFIG names a cluster."""
  tf_config = os.environ.get("TF_CONFIG")
  if tf_config:
    raise ValueError(
        "--strategy=auto never chooses multi-worker training, but TF_CONFIG is set "
        f"({tf_config[:200]!r}). Pass --strategy=multi_worker to train on every worker of "
        "TF_CONFIG, or unset TF_CONFIG and pass --strategy=auto (or one_device, mirrored, "
        "two_tower) to train on this machine alone.")


def make_strategy(train, paper_net: bool = True):
  """(strategy, the model's two tower devices or None) for --strategy.

  train: a config.TrainConfig (its strategy, devices, tiny_model, collective_timeout).
  paper_net: the model has the paper's two towers (what --strategy=auto needs to choose
  two_tower).
  """
  devices = list(train.devices)
  if train.strategy == "auto":
    refuse_auto_under_tf_config()
    if devices:
      check_devices(devices)
    name, chosen, why = auto_strategy(
        [d.name for d in tf.config.list_logical_devices("GPU")],
        [d.name for d in tf.config.list_logical_devices("CPU")], devices,
        paper_net and not train.tiny_model)
    logging.info("--strategy=auto chose %s: %s. To force another, pass --strategy=%s (and "
                 "--devices=... to name the devices).", name, why,
                 "|".join(s for s in STRATEGIES if s not in ("auto", name)))
    return make_strategy(dataclasses.replace(train, strategy=name, devices=tuple(chosen)))
  if train.strategy == "multi_worker":
    # First: listing devices would start TF's runtime, after which collectives cannot be set up.
    tf_config = os.environ.get("TF_CONFIG")
    if not tf_config:
      raise ValueError("--strategy=multi_worker needs the TF_CONFIG environment variable "
                       "(cluster and task; see README.md, 'Train and evaluate').")
    try:
      json.loads(tf_config)["cluster"]
    except (ValueError, KeyError, TypeError):
      raise errors.invalid("TF_CONFIG", tf_config,
                           "JSON with a 'cluster' and a 'task'") from None
    options = tf.distribute.experimental.CommunicationOptions(
        timeout_seconds=train.collective_timeout or None)
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options), None
  gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
  if devices:
    check_devices(devices)
  if train.strategy == "one_device":
    if len(devices) > 1:
      raise errors.invalid("--devices", devices, "at most one device with --strategy=one_device")
    device = devices[0] if devices else (gpus[0] if gpus else "/cpu:0")
    return tf.distribute.OneDeviceStrategy(device), None
  if train.strategy == "mirrored":
    # No GPUs: every logical CPU (see --num_cpu_devices), where TF's default takes one.
    devices = devices or gpus or [d.name for d in tf.config.list_logical_devices("CPU")]
    if len(devices) == 1:
      logging.warning("--strategy=mirrored over one device (%s) runs one replica, as "
                      "--strategy=one_device does. For more, use a machine with several GPUs, "
                      "name them with --devices, or split the CPU with --num_cpu_devices=N.",
                      devices[0])
    return tf.distribute.MirroredStrategy(devices), None
  if train.strategy == "two_tower":
    if not devices:
      devices = gpus[:2] if len(gpus) >= 2 else [
          d.name for d in tf.config.list_logical_devices("CPU")][:2]
    if len(devices) < 2:
      raise ValueError(
          "--strategy=two_tower puts tower a and tower b on two devices but this machine has "
          f"{sorted(d.name for d in tf.config.list_logical_devices())}. Use a machine with two "
          "GPUs, name two with --devices, or split the CPU with --num_cpu_devices=2.")
    return tf.distribute.OneDeviceStrategy(devices[0]), tuple(devices[:2])
  raise errors.invalid("--strategy", train.strategy, f"one of {STRATEGIES}")


def worker_id(strategy) -> int:
  """This worker's task id in a multi-worker run, 0 otherwise."""
  resolver = getattr(strategy, "cluster_resolver", None)
  return int(getattr(resolver, "task_id", 0) or 0) if resolver else 0
