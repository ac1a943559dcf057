"""The benchmark's figures are real measurements with consistent arithmetic (not timings)."""

import subprocess
import sys

import numpy as np

from keras_alexnet import benchmark
from keras_alexnet import model as model_lib


def test_matmul_bound_is_a_positive_rate():
  rate = benchmark.matmul_gflops(size=256, repeats=2)
  assert np.isfinite(rate) and rate > 0


def test_train_step_gflops_follow_from_images_per_second():
  images_per_second, gflops = benchmark.train_step_rate(
      batch_size=2, steps=1, num_classes=10)
  assert images_per_second > 0
  flops = 3 * model_lib.flops_per_image(model_lib.alexnet(num_classes=10))
  np.testing.assert_allclose(gflops, images_per_second * flops / 1e9, rtol=1e-9)


def test_unknown_part_is_refused_before_measuring():
  result = subprocess.run(
      [sys.executable, "-m", "keras_alexnet.benchmark", "--parts=train,gpu"],
      capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert "--parts: unknown 'gpu'" in result.stderr
  assert "allowed: train, pipeline, saved_model, variants" in result.stderr
