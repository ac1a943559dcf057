"""`python -m keras_alexnet.train` under faults (issue 17), as real processes on real files: a
zero-byte or cut shard, two trainers on one workdir, a stale lock of a killed trainer, and a
tf.data service whose only worker is killed (SIGTERM then honoured, and the --data_timeout
bound). Every wait is bounded: a hang fails the test."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from keras_alexnet import data_sources
from keras_alexnet import dataset
from keras_alexnet import dataset_info
from keras_alexnet import features
from keras_alexnet import files
from keras_alexnet import workdir as workdir_lib
from keras_alexnet import workdir_lock
import tiny_data
from test_data_service import launch, lines_until, wait_for_address

ROOT = tiny_data.REPO
TIMEOUT = 240   # Seconds any one trainer may take on a busy machine.


def _args(data_dir, workdir, *extra):
  return [sys.executable, "-m", "keras_alexnet.train", "--flagfile=flags/smoke.cfg",
          f"--data_dir={data_dir}", f"--workdir={workdir}", "--nosummary_images", *extra]


def _start(args, log):
  return subprocess.Popen(args, cwd=ROOT, env=tiny_data.child_env(), stdout=open(log, "w"),
                          stderr=subprocess.STDOUT)


def _run(args, log, timeout=TIMEOUT):
  process = _start(args, log)
  process.wait(timeout)
  with open(log) as f:
    return process.returncode, f.read()


def _read(log):
  with open(log) as f:
    return f.read()


def _wait_for(condition, process, log, timeout=TIMEOUT):
  deadline = time.monotonic() + timeout
  while not condition():
    assert process.poll() is None, _read(log)
    assert time.monotonic() < deadline, "timed out: " + _read(log)[-3000:]
    time.sleep(0.05)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tiny_data.write_dataset(str(tmp_path_factory.mktemp("data")), train=64,
                                 train_shards=4)


# ---------------------------------------------------------------------------------------------
# Shards that disagree with dataset_info.json.


def test_a_zero_byte_shard_fails_at_the_start_naming_it(data_dir, tmp_path):
  data = str(tmp_path / "data")
  os.makedirs(data)
  for name in os.listdir(data_dir):
    os.link(os.path.join(data_dir, name), os.path.join(data, name))
  empty = os.path.join(data, features.shard_name("train", 2, 4))
  os.remove(empty)
  open(empty, "wb").close()
  workdir = str(tmp_path / "run")
  started = time.monotonic()
  code, out = _run(_args(data, workdir, "--steps_per_epoch=1", "--epochs=1"), workdir + ".log")
  assert code == 1, out
  assert f"{empty} is empty (0 bytes)" in out, out
  assert time.monotonic() - started < TIMEOUT
  assert not os.path.exists(os.path.join(workdir, workdir_lib.CHECKPOINT_DIR))


def test_a_shard_whose_size_differs_from_the_recorded_one_is_named(tmp_path):
  data = tiny_data.write_dataset(str(tmp_path / "data"), train=16, train_shards=2)
  info = dataset_info.read(data)
  shards = data_sources.list_shards(data, "train")
  info["splits"]["train"]["shard_bytes"] = [os.path.getsize(p) for p in shards]
  files.write_json(os.path.join(data, dataset_info.FILENAME), info)
  config = data_sources.DataConfig(data)
  dataset.create_split(config, True, 4)   # sizes as recorded: accepted
  with open(shards[1], "r+b") as f:
    f.truncate(os.path.getsize(shards[1]) - 100)   # a copy cut short
  data_sources.shard_sizes.cache_clear()  # pylint: disable=protected-access
  with pytest.raises(ValueError, match=f"{shards[1]} is [0-9,]+ bytes but .*records"):
    dataset.create_split(config, True, 4)


# ---------------------------------------------------------------------------------------------
# One trainer per workdir.


def test_a_second_trainer_on_a_workdir_exits_at_once_naming_the_holder(data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  first_log = workdir + ".first.log"
  first = _start(_args(data_dir, workdir, "--epochs=60"), first_log)
  try:
    lock = os.path.join(workdir, workdir_lock.LOCK_FILE)
    _wait_for(lambda: os.path.exists(lock), first, first_log)
    _wait_for(lambda: workdir_lib.CheckpointStore(workdir).steps(), first, first_log)
    with open(os.path.join(workdir, workdir_lib.CONFIG_FILE)) as f:
      config_before = f.read()
    code, out = _run(_args(data_dir, workdir, "--epochs=60", "--batch_size=4"),
                     workdir + ".second.log", timeout=120)
    assert code == 1, out
    assert f"in use by another trainer: {lock} is held by pid {first.pid}" in out, out
    assert first.poll() is None
    with open(os.path.join(workdir, workdir_lib.CONFIG_FILE)) as f:
      assert f.read() == config_before   # the second run touched nothing
  finally:
    first.send_signal(signal.SIGTERM)
    first.wait(60)
  assert first.returncode == 128 + signal.SIGTERM, _read(first_log)
  assert not os.path.exists(lock)   # released on the way out


def test_a_stale_lock_of_a_killed_trainer_is_taken_over(data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  log = workdir + ".log"
  process = _start(_args(data_dir, workdir, "--epochs=60"), log)
  lock = os.path.join(workdir, workdir_lock.LOCK_FILE)
  _wait_for(lambda: os.path.exists(lock), process, log)
  process.kill()                      # SIGKILL: no chance to remove the lock
  process.wait(60)
  assert json.load(open(lock))["pid"] == process.pid
  code, out = _run(_args(data_dir, workdir, "--epochs=1"), workdir + ".2.log")
  assert code == 0, out
  assert f"Taking over {lock}: its holder, pid {process.pid}" in out, out
  assert not os.path.exists(lock)


def test_lock_file_content_and_same_host_liveness(tmp_path):
  lock = workdir_lock.WorkdirLock(str(tmp_path))
  lock.acquire()
  holder = workdir_lock.read_holder(lock.path)
  assert holder["host"] == socket.gethostname() and holder["pid"] == os.getpid()
  # Another host's lock cannot be checked from here: refused, naming that host.
  lock.release()
  with open(lock.path, "w") as f:
    json.dump({"host": "elsewhere.example", "pid": 1, "started": "then"}, f)
  with pytest.raises(workdir_lock.WorkdirLocked, match="host 'elsewhere.example'.*remove"):
    workdir_lock.WorkdirLock(str(tmp_path)).acquire()


# ---------------------------------------------------------------------------------------------
# The tf.data service: its only worker dies.


def _free_port():
  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    return probe.getsockname()[1]


def test_a_dead_service_worker_then_sigterm_and_then_the_timeout(data_dir, tmp_path):
  port = _free_port()
  dispatcher = launch("--role=dispatcher", f"--port={port}")
  worker = launch("--role=worker", f"--dispatcher_address=127.0.0.1:{port}",
                  "--worker_host=127.0.0.1", "--port=0")
  workdir = str(tmp_path / "run")
  try:
    assert wait_for_address(dispatcher) == f"grpc://localhost:{port}"
    wait_for_address(worker)
    service = [f"--data_service_address=grpc://127.0.0.1:{port}", "--epochs=60",
               "--steps_per_epoch=6", "--checkpoint_every_steps=1000"]
    log = workdir + ".log"
    trainer = _start(_args(data_dir, workdir, *service), log)
    _wait_for(lambda: "step 3 (epoch 1" in _read(log), trainer, log)
    worker.kill()                  # as the OOM killer would
    worker.wait(30)
    time.sleep(3)                  # the trainer is now waiting for a batch that never comes
    trainer.send_signal(signal.SIGTERM)
    started = time.monotonic()
    trainer.wait(30)
    assert time.monotonic() - started < 15, _read(log)
    assert trainer.returncode == 128 + signal.SIGTERM, _read(log)
    saved = workdir_lib.CheckpointStore(workdir).steps()
    assert saved and saved[-1] >= 3, _read(log)

    # Resumed with the worker still gone: fails within --data_timeout, saying why.
    started = time.monotonic()
    code, out = _run(_args(data_dir, workdir, *service, "--data_timeout=8"),
                     workdir + ".2.log", timeout=180)
    assert code == 1, out
    assert "no input batch from the tf.data service at grpc://127.0.0.1" in out, out
    assert "--data_timeout=8" in out
    assert time.monotonic() - started < 150
  finally:
    for process in (worker, dispatcher):
      if process.poll() is None:
        process.kill()
      process.wait(30)


# ---------------------------------------------------------------------------------------------
# Damaged files: every error names the file.


def test_errors_from_damaged_workdir_and_data_files_name_the_file(tmp_path):
  data = tiny_data.write_dataset(str(tmp_path / "data"), train=8, validation=4)
  workdir = tiny_data.make_workdir(str(tmp_path / "run"), data)
  config = os.path.join(workdir, workdir_lib.CONFIG_FILE)
  with open(config, "w") as f:
    f.write('{"model_config": {')                 # cut short
  with pytest.raises(ValueError, match=f"{config} is not readable run metadata"):
    workdir_lib.read_metadata(workdir)
  store = workdir_lib.CheckpointStore(workdir)
  best = os.path.join(store.directory, workdir_lib.BEST_FILE)
  with open(best, "w") as f:
    f.write("[1, 2")
  with pytest.raises(ValueError, match=f"{best} is not readable"):
    store.best()
  statistics = os.path.join(workdir, workdir_lib.STATISTICS_FILE)
  with open(statistics, "r+b") as f:
    f.truncate(100)
  with pytest.raises(ValueError, match=f"{statistics} is not a readable statistics file"):
    workdir_lib.load_statistics(workdir)
  mean = os.path.join(data, dataset_info.MEAN_IMAGE_FILENAME)
  with open(mean, "wb") as f:
    f.write(b"\x93NUMPY garbage")
  with pytest.raises(ValueError, match=f"{mean} is not a readable .npy"):
    dataset_info.read_mean_image(data, {"mean_image": dataset_info.MEAN_IMAGE_FILENAME})


def test_a_full_disk_under_the_workdir_names_it_and_the_run_goes_on_after(data_dir, tmp_path):
  disk = tmp_path / "disk"
  os.makedirs(disk)
  mounted = os.geteuid() == 0 and subprocess.run(
      ["mount", "-t", "tmpfs", "-o", "size=24k", "tmpfs", str(disk)], capture_output=True,
      check=False).returncode == 0
  if not mounted:
    pytest.skip("needs root and mount to make a small tmpfs (a real full disk)")
  try:
    workdir = str(disk / "run")
    code, out = _run(_args(data_dir, workdir, "--checkpoint_every_steps=2"),
                     str(tmp_path / "1.log"))
    assert code == 1, out
    assert "No space left on device" in out and f"The disk holding {workdir} is full" in out, out
    checkpoints = os.path.join(workdir, "checkpoints")
    assert not [n for n in os.listdir(checkpoints) if n.startswith(".tmp")]
    subprocess.run(["mount", "-o", "remount,size=5m", str(disk)], check=True)
    code, out = _run(_args(data_dir, workdir, "--checkpoint_every_steps=2"),
                     str(tmp_path / "2.log"))
    assert code == 0, out
    assert workdir_lib.CheckpointStore(workdir).steps()
  finally:
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_the_service_launcher_warns_that_it_listens_everywhere_without_auth():
  process = launch("--role=dispatcher", f"--port={_free_port()}")
  try:
    seen = lines_until(process, "serving at")
    text = "".join(seen)
    assert "serving at" in text, text
    assert "EVERY network interface" in text and "no authentication" in text, text
    assert "runs any dataset graph a client sends" in text
  finally:
    process.kill()
    process.wait(30)
