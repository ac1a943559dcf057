"""`pip install .` brings the whole toolkit: the wheel, installed into a fresh virtual
environment, runs the builder and the trainer (console script, shipped recipe) from a folder
outside the checkout. TensorFlow is not installed again: the new environment reads this one's
site-packages through a .pth line placed after its own, so the wheel's files come first."""

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig

import numpy as np
import pytest
from PIL import Image

import tiny_data

REPO = tiny_data.REPO
SOURCES = ("keras_alexnet", "tfrecords", "flags", "setup.py", "README.md")


def _run(cmd, cwd, env=None, timeout=600):
  result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env)
  assert result.returncode == 0, (cmd, result.stdout[-2000:], result.stderr[-4000:])
  return result


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
  """A virtual environment holding the wheel built from a copy of the checkout's files (so
  the build leaves nothing in the checkout)."""
  root = tmp_path_factory.mktemp("install")
  source = root / "source"
  source.mkdir()
  for name in SOURCES:
    src = os.path.join(REPO, name)
    if os.path.isdir(src):
      shutil.copytree(src, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    else:
      shutil.copy(src, source / name)
  wheels = root / "wheels"
  _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
        "-w", str(wheels), str(source)], cwd=root)
  (wheel,) = wheels.glob("keras_alexnet-*.whl")
  env_dir = root / "venv"
  _run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], cwd=root)
  python = env_dir / "bin" / "python"
  purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                 cwd=root).stdout.strip()
  # This environment's packages (TensorFlow, ...) after the new one's own.
  ours = [p for p in site.getsitepackages() + [sysconfig.get_path("purelib")]
          if os.path.isdir(p)]
  with open(os.path.join(purelib, "zz_parent_environment.pth"), "w") as f:
    f.write("\n".join(dict.fromkeys(ours)) + "\n")
  _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
        "--no-deps", "--no-index", str(wheel)], cwd=root)
  return env_dir


def _env():
  env = {k: v for k, v in tiny_data.child_env().items() if k != "PYTHONPATH"}
  return env


def _photos(folder, per_class=6):
  rng = np.random.default_rng(0)
  for split, count in (("train", per_class), ("val", 2)):
    for name in ("cats", "dogs"):
      os.makedirs(folder / split / name)
      for i in range(count):
        pixels = rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / split / name / f"{i}.jpg", quality=90)


def test_the_wheel_runs_the_builder_and_a_recipe_outside_the_checkout(venv, tmp_path):
  outside = tmp_path / "elsewhere"
  outside.mkdir()
  _photos(outside / "photos")
  python = str(venv / "bin" / "python")

  # Installed, not read from the checkout.
  where = _run([python, "-c", "import keras_alexnet, tfrecords; print(keras_alexnet.__file__);"
                " print(tfrecords.__file__)"], cwd=outside, env=_env()).stdout.split()
  assert all(path.startswith(str(venv)) for path in where), where

  help_text = _run([python, "-m", "tfrecords.build", "--help"], cwd=outside, env=_env()).stdout
  assert "--train_shards" in help_text and "--output_dir" in help_text

  # The builder's defaults (shard counts sized to the data).
  _run([str(venv / "bin" / "keras-alexnet-build"), "--input=photos", "--output_dir=records",
        "--noprogress"], cwd=outside, env=_env())
  with open(outside / "records" / "dataset_info.json") as f:
    info = json.load(f)
  assert info["splits"]["train"]["num_examples"] == 12
  assert [c[0] for c in info["classes"]] == ["cats", "dogs"]

  # The paper's recipe by its checkout path, from a folder that has no flags/, on this one-CPU
  # machine (--strategy=auto), a short run.
  result = _run([str(venv / "bin" / "keras-alexnet-train"), "--flagfile=flags/paper.cfg",
                 "--data_dir=records", "--workdir=run", "--epochs=1", "--steps_per_epoch=1",
                 "--eval_steps=1", "--batch_size=4", "--checkpoint_every_steps=1"],
                cwd=outside, env=_env())
  assert os.path.isfile(outside / "run" / "flags.txt"), result.stderr[-2000:]
  assert any(name.startswith("step-") for name in os.listdir(outside / "run" / "checkpoints"))


def test_a_bad_flagfile_name_lists_the_shipped_recipes(venv, tmp_path):
  result = subprocess.run([str(venv / "bin" / "keras-alexnet-train"), "--flagfile=papr"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=_env())
  assert result.returncode != 0
  assert "'papr'" in result.stderr and "paper" in result.stderr
  assert "ablations/no_lrn" in result.stderr
