"""What training tells its user: the ETA and epoch times, the closing summary, the message of a
rerun of a finished run (real processes with flags/smoke.cfg), and a plateau schedule that
leaves the rate alone after the last epoch (in-process)."""

import json
import os
import re
import subprocess
import sys

import pytest

from keras_alexnet import optimizer as optimizer_lib
from keras_alexnet import training
from keras_alexnet import workdir as workdir_lib
import tiny_data
from test_training import _config  # pylint: disable=g-bad-import-order

ROOT = tiny_data.REPO
TIMEOUT = 300


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tiny_data.write_dataset(str(tmp_path_factory.mktemp("data")), train=64)


def _train(data_dir, workdir):
  run = subprocess.run(
      [sys.executable, "-m", "keras_alexnet.train", "--flagfile=flags/smoke.cfg",
       f"--data_dir={data_dir}", f"--workdir={workdir}", "--nosummary_images"],
      cwd=ROOT, env=tiny_data.child_env(), capture_output=True, text=True, timeout=TIMEOUT)
  assert run.returncode == 0, run.stderr[-3000:]
  return run.stderr


def test_eta_epoch_times_closing_summary_and_a_complete_rerun(data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  log = _train(data_dir, workdir)   # smoke.cfg: 2 epochs of 4 steps, a log line every step
  left = [int(n) for n in re.findall(r"ETA (?:\d+:\d\d:\d\d|-) \((\d+) steps left\)", log)]
  assert left == [7, 6, 5, 4, 3, 2, 1, 0], log
  # The first step of an epoch is not timed (tracing, pipeline start), so its ETA is "-".
  assert re.search(r"step 2 \(epoch 1, 2/4\).*ETA \d+:\d\d:\d\d \(6 steps left\)", log), log
  assert len(re.findall(r"Epoch [12]/2 done at step [48] in \d+:\d\d:\d\d \(validation "
                        r"\d+\.\d s\)", log)) == 2, log

  # The summary agrees with the run's own record of its epochs and its best checkpoint.
  store = workdir_lib.CheckpointStore(workdir)
  with open(os.path.join(store.path(8), workdir_lib.STATE_FILE)) as f:
    state = json.load(f)
  best = min(state["history"], key=lambda h: h["validation"]["top1_error"])
  assert store.best()["step"] == best["step"]
  summary = (f"Best validation: top-1 error {best['validation']['top1_error']:.4f}, top-5 "
             f"error {best['validation']['top5_error']:.4f} at epoch {best['epoch']} (step "
             f"{best['step']}); best checkpoint: {store.path(best['step'])}.")
  assert summary in log, log
  complete = re.search(r"Training complete: 2 epochs, 8 steps in (\d+):(\d\d):(\d\d) ", log)
  hours, minutes, seconds = (int(x) for x in complete.groups())
  assert 3600 * hours + 60 * minutes + seconds == round(state["train_seconds"]) > 0

  # Rerun: complete, exit 0, no training, the same summary.
  again = _train(data_dir, workdir)
  assert f"{workdir} holds a complete run: 2 of --epochs=2 done (step 8); nothing to " in again
  assert "Resuming at step" not in again and "steps left" not in again, again
  assert summary in again and complete.group(0) in again
  assert store.steps()[-1] == 8


def test_the_plateau_schedule_leaves_the_rate_alone_after_the_last_epoch(data_dir, tmp_path):
  """A rate too small to change the weights keeps the validation error equal every epoch: a
  plateau. patience=1: a 3-epoch run divides the rate after epoch 2; a 2-epoch run, whose
  epoch 2 is the last, does not."""
  lr = 1e-12
  schedule = optimizer_lib.ScheduleConfig(patience=1)
  results = {}
  for epochs in (2, 3):
    workdir = str(tmp_path / f"epochs{epochs}")
    training.train_and_evaluate(_config(data_dir, epochs=epochs, steps_per_epoch=2,
                                        learning_rate=lr, schedule=schedule,
                                        summary_images=False), workdir)
    store = workdir_lib.CheckpointStore(workdir)
    with open(os.path.join(store.path(store.steps()[-1]), workdir_lib.STATE_FILE)) as f:
      results[epochs] = json.load(f)
  three, two = results[3], results[2]
  errors = [h["validation"]["top1_error"] for h in three["history"]]
  assert errors[0] == errors[1], errors   # the plateau the test relies on
  assert [h["learning_rate"] for h in three["history"]] == pytest.approx([lr, lr, lr / 10])
  assert [h["learning_rate"] for h in two["history"]] == pytest.approx([lr, lr])
  assert two["schedule"]["drops"] == 0 and two["learning_rate"] == pytest.approx(lr)
