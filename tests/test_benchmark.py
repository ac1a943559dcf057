"""The benchmark's figures are real measurements with consistent arithmetic (not timings)."""

import subprocess
import sys

import numpy as np

from keras_alexnet import benchmark
from keras_alexnet import model as model_lib


def test_matmul_bound_is_a_positive_rate():
  rate = benchmark.matmul_gflops(size=256, repeats=2)
  assert np.isfinite(rate) and rate > 0


def test_train_step_gflops_and_ratio_follow_from_the_measurements():
  bounds = iter([100.0, 400.0, 200.0])
  rate = benchmark.train_step_rate(batch_size=2, steps=3, num_classes=10,
                                   bound=lambda: next(bounds))
  assert rate.images_per_second > 0
  flops = 3 * model_lib.flops_per_image(model_lib.alexnet(num_classes=10))
  np.testing.assert_allclose(rate.gflops, rate.images_per_second * flops / 1e9, rtol=1e-9)
  assert rate.bound_gflops == 200.0
  # Each step against the bound measured just before it: the median ratio lies between the
  # step's GFLOP/s over the largest and over the smallest bound.
  assert rate.gflops / 400 * 0.5 < rate.ratio < rate.gflops / 100 * 2


def test_unknown_part_is_refused_before_measuring():
  result = subprocess.run(
      [sys.executable, "-m", "keras_alexnet.benchmark", "--parts=train,gpu"],
      capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert "--parts: unknown 'gpu'" in result.stderr
  assert "allowed: train, pipeline, saved_model, variants" in result.stderr
