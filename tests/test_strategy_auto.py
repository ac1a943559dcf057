"""--strategy=auto: the rule over device lists, the strategy it builds on this process's two
logical CPU devices (conftest.py) and the log line, the refusal under TF_CONFIG, mirrored on
one device, and flags/paper.cfg training on a one-CPU machine (a real process)."""

import logging
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from keras_alexnet import config as config_lib
from keras_alexnet import distribute
from keras_alexnet import training
from keras_alexnet import workdir as workdir_lib
import tiny_data
from test_training import _config  # pylint: disable=g-bad-import-order

GPUS = [f"/device:GPU:{i}" for i in range(8)]


def test_the_rule_counts_gpus_then_logical_cpus():
  assert distribute.auto_strategy(GPUS[:2], ["/device:CPU:0"])[:2] == ("two_tower", GPUS[:2])
  assert distribute.auto_strategy(GPUS, ["/device:CPU:0"])[:2] == ("mirrored", GPUS)
  assert distribute.auto_strategy(GPUS[:3], ["/device:CPU:0"])[:2] == ("mirrored", GPUS[:3])
  assert distribute.auto_strategy(GPUS[:1], ["/device:CPU:0", "/device:CPU:1"])[:2] == (
      "one_device", GPUS[:1])   # GPUs win: split CPUs are not counted beside them
  # Two GPUs but a net without towers (--tiny_model, --variant=one_tower): mirrored.
  name, devices, why = distribute.auto_strategy(GPUS[:2], [], paper_net=False)
  assert name == "mirrored" and "two_tower needs the paper's two-tower net" in why
  # No GPU: a plain CPU is one device; --num_cpu_devices=N makes N, counted as GPUs are.
  name, devices, why = distribute.auto_strategy([], ["/device:CPU:0"])
  assert (name, devices) == ("one_device", ["/device:CPU:0"])
  assert why == "this machine has no GPU and one CPU device (/device:CPU:0): one replica"
  cpus = ["/device:CPU:0", "/device:CPU:1"]
  assert distribute.auto_strategy([], cpus)[:2] == ("two_tower", cpus)
  assert distribute.auto_strategy([], cpus + ["/device:CPU:2"])[0] == "mirrored"
  # --devices are what is counted.
  assert distribute.auto_strategy(GPUS, [], devices=("/gpu:0",))[:2] == ("one_device",
                                                                      ["/gpu:0"])


def test_auto_on_two_logical_cpu_devices_is_two_tower_and_says_so(caplog):
  with caplog.at_level(logging.INFO, logger="absl"):
    strategy, towers = distribute.make_strategy(config_lib.TrainConfig(strategy="auto"))
  assert isinstance(strategy, tf.distribute.OneDeviceStrategy)
  assert [distribute.device_key(d) for d in towers] == ["/cpu:0", "/cpu:1"]
  line = next(r.getMessage() for r in caplog.records if "--strategy=auto" in r.getMessage())
  assert line.startswith("--strategy=auto chose two_tower: this machine has no GPU and 2 "
                         "logical CPU devices"), line
  assert "tower a on /device:CPU:0 and tower b on /device:CPU:1" in line
  assert "To force another, pass --strategy=one_device|mirrored|multi_worker" in line


def test_auto_with_the_test_net_on_two_devices_is_mirrored(monkeypatch):
  tiny_data.unique_collective_keys(monkeypatch)
  strategy, towers = distribute.make_strategy(
      config_lib.TrainConfig(strategy="auto", tiny_model=True))
  assert isinstance(strategy, tf.distribute.MirroredStrategy) and towers is None
  assert strategy.num_replicas_in_sync == 2


def test_mirrored_on_one_device_says_it_runs_one_replica(caplog, monkeypatch):
  tiny_data.unique_collective_keys(monkeypatch)
  with caplog.at_level(logging.WARNING, logger="absl"):
    strategy, _ = distribute.make_strategy(
        config_lib.TrainConfig(strategy="mirrored", devices=("/cpu:0",)))
  assert strategy.num_replicas_in_sync == 1
  assert any("--strategy=mirrored over one device (/cpu:0) runs one replica" in r.getMessage()
             for r in caplog.records)


def test_auto_under_tf_config_is_refused_before_anything_is_read(tmp_path, monkeypatch):
  monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1", "b:2"]}, '
                     '"task": {"type": "worker", "index": 0}}')
  workdir = tmp_path / "never"
  config = _config(str(tmp_path / "no-data-here"), strategy="auto")
  with pytest.raises(ValueError) as error:
    training.train_and_evaluate(config, str(workdir))
  message = str(error.value)
  assert "--strategy=auto never chooses multi-worker training, but TF_CONFIG is set" in message
  assert "Pass --strategy=multi_worker" in message and "unset TF_CONFIG" in message
  assert not workdir.exists()


def test_the_papers_recipe_trains_on_a_one_cpu_machine(tmp_path):
  """The design card's command with a short run's step limits, in a process with one CPU
  device: --strategy=auto (paper.cfg) picks one_device, where two_tower used to refuse."""
  data_dir = tiny_data.write_dataset(str(tmp_path / "data"), train=16, validation=8)
  workdir = tmp_path / "run"
  run = subprocess.run(
      [sys.executable, "-m", "keras_alexnet.train", "--flagfile=flags/paper.cfg",
       f"--data_dir={data_dir}", f"--workdir={workdir}", "--steps_per_epoch=2", "--epochs=1",
       "--eval_steps=1", "--batch_size=8"],
      cwd=tiny_data.REPO, env=tiny_data.child_env(), capture_output=True, text=True,
      timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  assert ("--strategy=auto chose one_device: this machine has no GPU and one CPU device "
          "(/device:CPU:0): one replica. To force another, pass "
          "--strategy=mirrored|multi_worker|two_tower") in run.stderr
  assert workdir_lib.CheckpointStore(str(workdir)).steps() == [2]
  metadata = workdir_lib.read_metadata(str(workdir))
  assert metadata["model_config"]["variant"] == "paper" and metadata["train"]["replicas"] == 1
  assert "Training complete: 1 epochs, 2 steps" in run.stderr


def test_auto_mirrored_with_an_indivisible_batch_says_how_to_fix_it(tmp_path, monkeypatch):
  tiny_data.unique_collective_keys(monkeypatch)
  data_dir = tiny_data.write_dataset(str(tmp_path / "data"), train=16, validation=8)
  workdir = tmp_path / "never"
  # The test net on this process's two logical CPUs: auto mirrors over both.
  config = _config(data_dir, strategy="auto", batch_size=7)
  with pytest.raises(ValueError, match=r"--batch_size=7 .* not divisible by the 2 replicas of "
                     r"--strategy=auto; use a multiple of 2, or name fewer devices with "
                     r"--devices"):
    training.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()
