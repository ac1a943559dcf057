"""The paper's update rule (section 5) and the learning-rate schedules."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_alexnet import cpu_kernels
from keras_alexnet import optimizer as optimizer_lib
import tiny_data


def _run(opt, values, grads_per_step):
  variables = [keras.Variable(np.array(v, np.float32)) for v in values]
  opt.build(variables)
  for grads in grads_per_step:
    opt.apply([tf.constant(g, tf.float32) for g in grads], variables)
  return [v.numpy() for v in variables]


@pytest.mark.parametrize("mode", ["on", "off"])   # the XLA-fused update; plain TF ops
def test_update_matches_hand_computed_paper_rule(mode):
  # eps = 0.1, momentum 0.9, decay 0.0005; a kernel entry w = 2 and a bias b = 1, gradients
  # 1.0 then -0.5. By hand, v <- 0.9 v - 0.0005 eps w - eps g; w <- w + v:
  #   kernel: v1 = -0.0005*0.1*2 - 0.1*1 = -0.1001                     w1 = 1.8999
  #           v2 = 0.9*-0.1001 - 0.0005*0.1*1.8999 + 0.05 = -0.040184995
  #                                                                   w2 = 1.859715005
  #   bias (not decayed): v1 = -0.1, b1 = 0.9; v2 = -0.09 + 0.05 = -0.04, b2 = 0.86
  opt = optimizer_lib.PaperSGD(learning_rate=0.1)
  with cpu_kernels.using(mode):
    kernel, bias = _run(opt, [[[2.0]], [1.0]], [([[1.0]], [1.0]), ([[-0.5]], [-0.5])])
  np.testing.assert_allclose(kernel, [[1.859715005]], rtol=1e-6)
  np.testing.assert_allclose(bias, [0.86], rtol=1e-6)
  np.testing.assert_allclose(opt.velocities[0].numpy(), [[-0.040184995]], rtol=1e-5)


def test_decay_biases_decays_rank_one_variables_too():
  #   b: v1 = -0.0005*0.1*1 - 0.1 = -0.10005, b1 = 0.89995
  #      v2 = 0.9*-0.10005 - 0.0005*0.1*0.89995 + 0.05 = -0.0400899975, b2 = 0.8598600025
  opt = optimizer_lib.PaperSGD(learning_rate=0.1, decay_biases=True)
  (bias,) = _run(opt, [[1.0]], [([1.0],), ([-0.5],)])
  np.testing.assert_allclose(bias, [0.8598600025], rtol=1e-6)


def test_equals_keras_sgd_on_gradient_plus_decay():
  """The paper's rule is SGD(momentum=0.9) on g + 0.0005 w (coupled decay), not Keras'
  decoupled weight_decay."""
  rng = np.random.default_rng(0)
  w0 = rng.normal(size=(3, 4)).astype(np.float32)
  grads = [rng.normal(size=(3, 4)).astype(np.float32) for _ in range(5)]
  (ours,) = _run(optimizer_lib.PaperSGD(learning_rate=0.05), [w0], [[g] for g in grads])

  w = keras.Variable(w0)
  sgd = keras.optimizers.SGD(learning_rate=0.05, momentum=0.9, nesterov=False)
  sgd.build([w])
  for g in grads:
    sgd.apply([tf.constant(g) + 0.0005 * w.value], [w])
  np.testing.assert_allclose(ours, w.numpy(), rtol=1e-5, atol=1e-7)

  (decoupled,) = _run(keras.optimizers.SGD(learning_rate=0.05, momentum=0.9,
                                           weight_decay=0.0005), [w0], [[g] for g in grads])
  assert not np.allclose(decoupled, ours, rtol=1e-7, atol=0)


@pytest.mark.parametrize("mode", ["on", "off"])
def test_decay_added_once_under_mirrored_strategy(monkeypatch, mode):
  """Two replicas each holding half the gradient: the same update as one device with the
  whole gradient (the decay term is added after the all-reduce, not per replica); with the
  fused update and with the plain one."""
  with cpu_kernels.using(mode):
    tiny_data.unique_collective_keys(monkeypatch)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    g = np.array([[0.4, -0.2]], np.float32)
    with strategy.scope():
      w = keras.Variable(np.array([[1.0, 3.0]], np.float32))
      opt = optimizer_lib.PaperSGD(learning_rate=0.1)
      opt.build([w])

    @tf.function
    def step():
      strategy.run(lambda: opt.apply([tf.constant(g / 2)], [w]))

    step()
    step()
    (single,) = _run(optimizer_lib.PaperSGD(learning_rate=0.1), [[[1.0, 3.0]]], [[g], [g]])
    np.testing.assert_allclose(strategy.experimental_local_results(w.value)[1].numpy(), single,
                               rtol=1e-6)


def test_plateau_divides_by_ten_at_most_three_times():
  s = optimizer_lib.PlateauSchedule(0.01, patience=1)
  errors = [0.9, 0.8, 0.8, 0.7, 0.75, 0.69, 0.69, 0.6, 0.6, 0.6, 0.6]
  rates = []
  for epoch, error in enumerate(errors):
    s.update(epoch, error)
    rates.append(s.learning_rate(epoch + 1))
  # Drops after epochs 2 (0.8 not below 0.8), 4 (0.75 > 0.7), 6 (0.69 = 0.69); then none.
  np.testing.assert_allclose(rates, [0.01, 0.01, 1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5, 1e-5,
                                     1e-5, 1e-5], rtol=1e-9)
  assert s.drops == 3


def test_plateau_patience_and_state_round_trip():
  s = optimizer_lib.PlateauSchedule(0.01, patience=2)
  for epoch, error in enumerate([0.5, 0.6]):
    assert not s.update(epoch, error)
  restored = optimizer_lib.PlateauSchedule(0.01, patience=2)
  restored.restore(s.state())
  assert restored.update(2, 0.55)          # The second epoch in a row without beating 0.5.
  assert restored.learning_rate(3) == pytest.approx(1e-3)
  with pytest.raises(ValueError, match="another --lr_schedule"):
    optimizer_lib.StepSchedule(0.01, (30,)).restore(s.state())


def test_step_schedule():
  s = optimizer_lib.StepSchedule(0.01, (30, 60, 80))
  assert [s.learning_rate(e) for e in (0, 29, 30, 59, 60, 80, 89)] == pytest.approx(
      [0.01, 0.01, 1e-3, 1e-3, 1e-4, 1e-5, 1e-5])
  assert s.update(29, None) and not s.update(30, None)
  with pytest.raises(ValueError, match="increasing"):
    optimizer_lib.StepSchedule(0.01, (60, 30))


def test_a_second_model_in_the_same_process_trains_after_the_first_is_gone():
  """The compiled update belongs to its optimizer: a function shared across optimizers kept a
  trace of the first model's (deleted) variables and failed on the second."""
  import gc
  for _ in range(2):
    variable = keras.Variable(np.ones((3, 2), np.float32))
    opt = optimizer_lib.PaperSGD(learning_rate=0.1, weight_decay=0.0)
    tf.function(lambda: opt.apply([tf.ones((3, 2))], [variable]))()
    np.testing.assert_allclose(variable.numpy(), 0.9)
    del variable, opt
    gc.collect()
