"""Tests of keras_alexnet.demo: the chain of real commands end to end on a tiny generated
dataset (3 classes x 8 images, a couple of training steps of the test net), the re-run that
reuses every finished step, and the work folders the demo refuses."""

import json
import os
import subprocess
import sys

from PIL import Image
import pytest

from keras_alexnet import demo
from keras_alexnet import demo_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# flags/demo.cfg itself (so the test also proves the trainer accepts it), then overrides that
# shrink the run to a few steps of the test-only tiny net.
TINY_DEMO = ["--num_classes=3", "--train_per_class=8", "--validation_per_class=2",
             "--heldout_per_class=1", "--train_shards=2", "--validation_shards=1",
             "--train_flag=--tiny_model", "--train_flag=--batch_size=8",
             "--train_flag=--epochs=1", "--train_flag=--steps_per_epoch=2",
             "--train_flag=--log_every_steps=1", "--train_flag=--noxla"]


def _demo(work_dir, *args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.run([sys.executable, "-m", "keras_alexnet.demo", f"--work_dir={work_dir}",
                         *args], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=600)


def test_the_whole_chain_then_a_rerun_that_reuses_it(tmp_path):
  work = tmp_path / "work"
  # What an interrupted first run leaves: the marker and a half-drawn dataset.
  (work / ".tmp-images-4242" / "train").mkdir(parents=True)
  (work / ".tmp-images-4242" / "train" / "half.JPEG").write_bytes(b"\xff\xd8")
  (work / demo.MARKER).write_text("")

  first = _demo(work, *TINY_DEMO)
  assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
  assert not (work / ".tmp-images-4242").exists()
  for n in range(1, 9):
    assert f"[{n}/8]" in first.stdout
  for tool in ("tfrecords.build", "keras_alexnet.train --flagfile=", "keras_alexnet.evaluate",
               "keras_alexnet.export", "keras_alexnet.predict",
               "keras_alexnet.experiments.figure4"):
    assert f"$ python -m {tool}" in first.stdout

  summary = json.loads((work / demo.SUMMARY).read_text())
  assert summary["reused"] == []
  assert summary["validation_examples"] == 6
  steps = {"dataset", "build", "train", "evaluate", "export", "predict", "kernels", "figure4"}
  assert set(summary["step_seconds"]) == set(summary["step_cpu_seconds"]) == steps
  assert summary["step_cpu_seconds"]["train"] > 0
  for view in ("center", "ten"):
    assert 0 <= summary["top1_accuracy"][view] <= summary["top5_accuracy"][view] == 1
  assert summary["heldout"] == 3
  # The builder's and each tool's completion markers, where the demo says they are.
  info = json.loads((work / "tfrecords" / "dataset_info.json").read_text())
  assert info["splits"]["train"]["num_examples"] == 24
  assert [c[1] for c in info["classes"]] == ["disc", "square", "triangle"]
  evaluation = json.loads((work / "evaluation.json").read_text())
  assert evaluation["models"][0]["checkpoint"] == summary["checkpoint"]
  assert os.path.isfile(os.path.join(summary["saved_model"], "saved_model.pb"))
  # The predict step's table: every held-out image with its true name and 3 ranked names
  # (3 classes: the "top 5" holds them all).
  for name in ("disc", "square", "triangle"):
    line = next(l for l in first.stdout.splitlines() if l.strip().startswith(f"{name}_1.JPEG"))
    assert sorted(part.split()[0] for part in line.split(maxsplit=3)[3].split(", ")) == [
        "disc", "square", "triangle"]
  # The tiny net's conv1 has 8 kernels of 11x11: a 3x3 grid (the paper's net: 6 rows of 16).
  for name in (demo.KERNELS_PNG, demo.LEARNED_PNG):
    with Image.open(work / name) as png:
      assert png.format == "PNG" and png.size == ((3 * 12 + 1) * 4, (3 * 12 + 1) * 4), name
  assert summary["learned_png"] == str(work / demo.LEARNED_PNG)
  # Figure 4 of the run: every validation image a query, 6 neighbours each, both panels.
  figure = json.loads((work / "figure4" / "figure4.json").read_text())
  assert figure["checkpoint"] == summary["checkpoint"] and len(figure["queries"]) == 6
  assert all(len(q["neighbours"]) == 6 for q in figure["queries"])
  assert 0 <= summary["figure4_neighbours_same_class"] <= 1
  with Image.open(work / "figure4" / "figure4_right.png") as png:
    assert png.format == "PNG" and png.size == (160 * 7, 180 * 5)

  second = _demo(work, *TINY_DEMO)
  assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
  again = json.loads((work / demo.SUMMARY).read_text())
  assert again["reused"] == ["dataset", "build", "evaluate", "export", "figure4"]
  assert again["saved_model"] == summary["saved_model"]
  assert again["top1_accuracy"] == summary["top1_accuracy"]
  assert "$ python -m tfrecords.build" not in second.stdout
  assert os.listdir(work / "export") == ["1"]


def test_a_folder_the_demo_did_not_make_is_refused(tmp_path):
  mine = tmp_path / "mine"
  mine.mkdir()
  (mine / "thesis.tex").write_text("precious")
  result = _demo(mine, *TINY_DEMO)
  assert result.returncode != 0
  assert "not empty and was not made by the demo" in result.stderr
  assert os.listdir(mine) == ["thesis.tex"]


def test_claim_work_dir(tmp_path):
  new = tmp_path / "new"
  demo.claim_work_dir(str(new))
  assert os.listdir(new) == [demo.MARKER]
  demo.claim_work_dir(str(new))           # ours: accepted again
  (new / "images").mkdir()
  demo.claim_work_dir(str(new))
  empty = tmp_path / "empty"
  empty.mkdir()
  demo.claim_work_dir(str(empty))
  assert os.listdir(empty) == [demo.MARKER]
  a_file = tmp_path / "file"
  a_file.write_text("x")
  with pytest.raises(demo.DemoError, match="is a file"):
    demo.claim_work_dir(str(a_file))


def test_a_missing_flagfile_is_named_before_anything_is_written(tmp_path):
  config = demo.DemoConfig(work_dir=str(tmp_path / "w"),
                           train_flagfile=str(tmp_path / "nope.cfg"))
  with pytest.raises(demo.DemoError, match=r"--train_flagfile: flagfile .*nope.cfg.* is neither a file .* the recipes are"):
    demo.run_demo(config)
  assert not (tmp_path / "w").exists()


def test_a_bad_dataset_size_is_refused_before_anything_is_written(tmp_path):
  config = demo.DemoConfig(work_dir=str(tmp_path / "w"),
                           data=demo_data.DemoDataConfig(num_classes=9))
  with pytest.raises(ValueError, match="num_classes must be in 2..6"):
    demo.run_demo(config)
  assert not (tmp_path / "w").exists()
