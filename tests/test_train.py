"""`python -m keras_alexnet.train` as real processes: killed (SIGKILL, mid-epoch and while a
checkpoint is being written), stopped (SIGTERM), a NaN loss, two workers on 127.0.0.1 one of
which dies, and the bad input that must exit non-zero before the workdir is touched.

The runs use flags/smoke.cfg (the --tiny_model net, deterministic) so that each takes seconds.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from keras_alexnet import workdir as workdir_lib
import tiny_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 300          # Seconds any one training process may take on a busy machine.
STEPS_PER_EPOCH = 6
EPOCHS = 2
PEER_EXIT_BOUND = 90   # Seconds within which a worker must notice that its peer died.


def _env(**extra):
  return tiny_data.child_env(**extra)


def _args(data_dir, workdir, *extra):
  return [sys.executable, "-m", "keras_alexnet.train", "--flagfile=flags/smoke.cfg",
          f"--data_dir={data_dir}", f"--workdir={workdir}", f"--epochs={EPOCHS}",
          f"--steps_per_epoch={STEPS_PER_EPOCH}", "--checkpoint_every_steps=1",
          "--keep_checkpoints=100", "--eval_steps=1", "--nosummary_images", *extra]


def _start(args, log, **env):
  return subprocess.Popen(args, cwd=ROOT, env=_env(**env), stdout=open(log, "w"),
                          stderr=subprocess.STDOUT)


def _run(args, log, **env):
  process = _start(args, log, **env)
  process.wait(TIMEOUT)
  with open(log) as f:
    return process.returncode, f.read()


def _wait_until(condition, process, timeout=TIMEOUT):
  deadline = time.time() + timeout
  while not condition():
    assert process.poll() is None, "the trainer ended before the condition was met"
    assert time.time() < deadline, "timed out"
    time.sleep(0.002)


def _steps(workdir):
  return workdir_lib.CheckpointStore(workdir).steps()


def _losses(workdir):
  events = tiny_data.read_events(os.path.join(workdir, "tensorboard", "train"))
  return {step: float(v) for step, v in events["loss"].items()}


def _checkpoint_values(workdir, step):
  reader = tf.train.load_checkpoint(workdir_lib.CheckpointStore(workdir).prefix(step))
  return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
          if not name.startswith("_CHECKPOINTABLE")}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tiny_data.write_dataset(str(tmp_path_factory.mktemp("data")), train=64)


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
  """An uninterrupted run: its per-step losses and checkpoints."""
  workdir = str(tmp_path_factory.mktemp("reference") / "run")
  code, out = _run(_args(data_dir, workdir), workdir + ".log")
  assert code == 0, out
  losses = _losses(workdir)
  assert sorted(losses) == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1))
  return workdir, losses


def _same_state_as_reference(workdir, reference, step):
  """The weights and optimizer state (velocities, learning rate, iterations) in the
  checkpoint of `step` are exactly those of the uninterrupted run at that step."""
  ours, theirs = (_checkpoint_values(w, step) for w in (workdir, reference[0]))
  assert sorted(ours) == sorted(theirs)
  assert len([n for n in ours if n.startswith("optimizer/_variables/")]) == len(
      [n for n in ours if n.startswith("model/")])
  assert "optimizer/_learning_rate/.ATTRIBUTES/VARIABLE_VALUE" in ours
  for name in ours:
    np.testing.assert_array_equal(ours[name], theirs[name], err_msg=f"step {step}: {name}")


def _checkpoint_writes(workdir):
  try:
    return [n for n in os.listdir(os.path.join(workdir, "checkpoints"))
            if n.startswith(".tmp-step-")]
  except FileNotFoundError:
    return []


def _kill_mid_epoch(process, workdir, after_step):
  """SIGKILL between two checkpoint writes, once step `after_step` is saved."""
  while True:
    _wait_until(lambda: _steps(workdir) and _steps(workdir)[-1] >= after_step, process)
    process.send_signal(signal.SIGSTOP)
    if not _checkpoint_writes(workdir):
      process.send_signal(signal.SIGKILL)
      process.wait(TIMEOUT)
      return
    process.send_signal(signal.SIGCONT)


def _kill_while_writing(process, workdir, after_step):
  """SIGKILL while a checkpoint after step `after_step` is being written: the process is
  frozen (SIGSTOP) when a write is seen and killed only if the write is still going on."""
  while True:
    _wait_until(lambda: _checkpoint_writes(workdir) and _steps(workdir)[-1] >= after_step,
                process)
    process.send_signal(signal.SIGSTOP)
    partial = _checkpoint_writes(workdir)
    if partial:
      process.send_signal(signal.SIGKILL)
      process.wait(TIMEOUT)
      return partial[0]
    process.send_signal(signal.SIGCONT)


def test_killed_and_stopped_runs_resume_exactly(data_dir, reference, tmp_path):
  """SIGKILL mid-epoch, then SIGKILL during a checkpoint write, then SIGTERM: each restart
  continues at the last saved step with the uninterrupted run's state, and (deterministic
  mode) every step has the uninterrupted run's loss."""
  workdir = str(tmp_path / "run")
  args = _args(data_dir, workdir)
  resumed_at = []

  # 1. SIGKILL mid-epoch, between checkpoint writes.
  _kill_mid_epoch(_start(args, workdir + ".1.log"), workdir, after_step=2)
  last = _steps(workdir)[-1]
  assert last % STEPS_PER_EPOCH, f"killed at an epoch boundary ({last}); expected mid-epoch"

  # 2. Restart; SIGKILL it while it writes a checkpoint.
  process = _start(args, workdir + ".2.log")
  partial = _kill_while_writing(process, workdir, after_step=last + 1)
  assert f"Resuming at step {last}:" in open(workdir + ".2.log").read()
  resumed_at.append(last)
  assert os.path.isdir(os.path.join(workdir, "checkpoints", partial))  # Killed mid-write...
  last = _steps(workdir)[-1]                                           # ...the last good one
  assert last < int(partial.split("-")[2])                             # loads next.

  # 3. Restart; SIGTERM: it saves, then exits with 128 + 15.
  log = workdir + ".3.log"
  process = _start(args, log)
  _wait_until(lambda: f"step {last + 1} (epoch" in open(log).read(), process)
  process.send_signal(signal.SIGTERM)
  process.wait(TIMEOUT)
  out = open(log).read()
  assert f"Resuming at step {last}:" in out, out
  resumed_at.append(last)
  assert not [n for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.startswith(".tmp-")]
  assert process.returncode == 128 + signal.SIGTERM, out
  assert "SIGTERM received" in out and "stopped by SIGTERM at step" in out, out
  stopped_at = int(out.split("stopped by SIGTERM at step ")[1].split(",")[0])
  assert _steps(workdir)[-1] == stopped_at

  # 4. Restart to the end.
  code, out = _run(args, workdir + ".4.log")
  assert code == 0, out
  assert f"Resuming at step {stopped_at}:" in out, out
  resumed_at.append(stopped_at)

  for step in resumed_at:
    _same_state_as_reference(workdir, reference, step)
  losses, ref_losses = _losses(workdir), reference[1]
  after = [s for s in ref_losses if s > resumed_at[0]]
  np.testing.assert_array_equal([losses[s] for s in after], [ref_losses[s] for s in after])


def test_nan_loss_stops_with_the_last_good_checkpoint(data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  # Absurd learning rate: step 1 is finite, then the weights overflow.
  code, out = _run(_args(data_dir, workdir, "--learning_rate=1e30"), workdir + ".log")
  assert code == 1, out
  assert "The loss is nan at step 2 (epoch 1, batch 2)" in out, out
  assert "last good checkpoint is" in out and "step-00000001" in out
  assert _steps(workdir) == [1]
  model, _ = workdir_lib.load_model(workdir, "latest")
  assert all(np.all(np.isfinite(v.numpy())) for v in model.weights)


def _free_ports(n):
  sockets = [socket.socket() for _ in range(n)]
  for s in sockets:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def _workers(args, workdir, tag):
  ports = _free_ports(2)
  cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
  processes = []
  for index in range(2):
    tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
    processes.append(_start(args, f"{workdir}.{tag}.worker{index}.log", TF_CONFIG=tf_config))
  return processes


def test_multi_worker_peer_death_then_restart(data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  args = _args(data_dir, workdir, "--strategy=multi_worker", "--epochs=1")
  chief, worker = _workers(args, workdir, "first")
  try:
    _wait_until(lambda: _steps(workdir) and _steps(workdir)[-1] >= 2, chief)
    worker.send_signal(signal.SIGKILL)
    killed = time.time()
    chief.wait(PEER_EXIT_BOUND)
    elapsed = time.time() - killed
  finally:
    for p in (chief, worker):
      if p.poll() is None:
        p.kill()
  out = open(f"{workdir}.first.worker0.log").read()
  assert chief.returncode not in (0, None), out
  assert elapsed < PEER_EXIT_BOUND
  assert "restart all workers" in out, out
  last = _steps(workdir)[-1]
  metadata = workdir_lib.read_metadata(workdir)
  assert metadata["train"]["replicas"] == 2

  # All workers restarted: they resume from the chief's last checkpoint and finish.
  processes = _workers(args, workdir, "second")
  for p in processes:
    p.wait(TIMEOUT)
  logs = [open(f"{workdir}.second.worker{i}.log").read() for i in range(2)]
  assert [p.returncode for p in processes] == [0, 0], logs
  assert all(f"Resuming at step {last}:" in log for log in logs), logs
  assert _steps(workdir)[-1] == STEPS_PER_EPOCH
  # Only the chief writes summaries.
  assert len(os.listdir(os.path.join(workdir, "tensorboard"))) == 2


def test_bad_input_exits_non_zero_and_leaves_no_workdir(data_dir, tmp_path):
  workdir = str(tmp_path / "never")
  bad_flagfile = tmp_path / "bad.cfg"
  bad_flagfile.write_text("--batch_size=8\n--bogus_flag=3\n")
  train = [sys.executable, "-m", "keras_alexnet.train"]
  cases = [
      (train + ["--flagfile=flags/paper.cfg", f"--workdir={workdir}"],
       "python -m tfrecords.build"),
      (train + [f"--flagfile={tmp_path / 'missing.cfg'}", f"--workdir={workdir}"],
       "missing.cfg"),
      (train + [f"--flagfile={bad_flagfile}", f"--workdir={workdir}"], "bogus_flag"),
      # One CPU device (no --num_cpu_devices): the two towers have nowhere to go.
      (train + [f"--data_dir={data_dir}", f"--workdir={workdir}", "--strategy=two_tower"],
       "needs two devices|two devices"),
  ]
  # At once: each is mostly TensorFlow's import time.
  processes = [_start(args, str(tmp_path / f"{i}.log")) for i, (args, _) in enumerate(cases)]
  for i, ((args, message), process) in enumerate(zip(cases, processes)):
    process.wait(TIMEOUT)
    out = open(tmp_path / f"{i}.log").read()
    assert process.returncode != 0, (args, out)
    assert any(m in out for m in message.split("|")), (args, out)
  assert not os.path.exists(workdir)
