"""Tests of keras_alexnet.data_service: a real dispatcher and worker, each its own process
started by the launcher, on 127.0.0.1, serving the input pipeline to this process."""

import os
import queue
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import keras_alexnet
from keras_alexnet import data_service
from keras_alexnet import data_sources
from keras_alexnet import dataset
import tiny_data  # tests/tiny_data.py
from test_dataset import collect, identify, write_info, write_shards

REPO = os.path.dirname(os.path.dirname(os.path.abspath(keras_alexnet.__file__)))
START_TIMEOUT_S = 90


def launch(*args):
  env = tiny_data.child_env()
  return subprocess.Popen([sys.executable, "-m", "keras_alexnet.data_service", *args],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)


def lines_until(process, marker: str) -> list:
  """The process's output lines up to the first that holds `marker` (bounded wait; raises
  AssertionError with what was seen). Lines are read by a thread: a selector on the pipe
  misses lines that an earlier readline() already pulled into the file object's buffer (the
  launcher prints its security warning just before its address)."""
  lines = queue.Queue()

  def read():
    for line in process.stdout:
      lines.put(line)
    lines.put(None)

  threading.Thread(target=read, daemon=True).start()
  deadline = time.monotonic() + START_TIMEOUT_S
  seen = []
  while time.monotonic() < deadline:
    try:
      line = lines.get(timeout=1)
    except queue.Empty:
      continue
    if line is None:
      break
    seen.append(line)
    if marker in line:
      return seen
  raise AssertionError(f"no {marker!r} line: {''.join(seen)[-2000:]}")


def wait_for_address(process):
  """The address from the launcher's 'serving at HOST:PORT' line."""
  return lines_until(process, "serving at")[-1].rsplit(" ", 1)[-1].strip()


@pytest.fixture
def servers():
  started = []
  yield lambda *args: started.append(launch(*args)) or started[-1]
  for process in started:
    process.terminate()
  for process in started:
    try:
      process.wait(timeout=20)
    except subprocess.TimeoutExpired:
      process.kill()


def test_dispatcher_and_worker_serve_batches(tmp_path, servers):
  data_dir = str(tmp_path)
  write_shards(data_dir, "train", 3, 4)
  write_shards(data_dir, "validation", 1, 5, start=12)
  write_info(data_dir, 12, 5)
  # Both start at once (each process imports TF for seconds): the dispatcher on a free port.
  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
  dispatcher = servers("--role=dispatcher", f"--port={port}")
  worker = servers("--role=worker", f"--dispatcher_address=127.0.0.1:{port}",
                   "--worker_host=127.0.0.1", "--port=0")
  assert wait_for_address(dispatcher) == f"grpc://localhost:{port}"
  assert wait_for_address(worker).startswith("127.0.0.1:")

  config = data_sources.DataConfig(data_dir, data_service_address=f"grpc://127.0.0.1:{port}")
  images, labels = collect(dataset.create_split(config, True, 3))
  # One worker reads all 12 training examples, each once, in batches of 3.
  assert len(images) == 4 and all(x.shape == (3, 256, 256, 3) for x in images)
  colour_labels, indices = identify(np.concatenate(images))
  np.testing.assert_array_equal(colour_labels, np.concatenate(labels))
  assert sorted(indices) == list(range(12))
  _, labels = collect(dataset.create_split(config, False, 5))
  assert sorted(np.concatenate(labels).tolist()) == sorted(i % 8 for i in range(12, 17))
  assert dispatcher.poll() is None and worker.poll() is None


@pytest.mark.parametrize("config,message", [
    (data_service.ServiceConfig(role="cache"), "role"),
    (data_service.ServiceConfig(role="worker"), "dispatcher_address"),
    (data_service.ServiceConfig(role="worker", dispatcher_address="nohostport"),
     "dispatcher_address"),
    (data_service.ServiceConfig(role="dispatcher", worker_host="x"), "for workers"),
    (data_service.ServiceConfig(role="dispatcher", port=70000), "port"),
])
def test_bad_launcher_settings(config, message):
  with pytest.raises(ValueError, match=message):
    data_service.check_config(config)


def test_data_service_and_cache_do_not_mix(tmp_path):
  config = data_sources.DataConfig(str(tmp_path), cache=True,
                              data_service_address="grpc://127.0.0.1:5050")
  with pytest.raises(ValueError, match="cache"):
    dataset.create_split(config, True, 2)
