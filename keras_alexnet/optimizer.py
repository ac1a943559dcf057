"""The paper's update rule and learning-rate schedules (section 5).

Section 5 writes the update for a weight w as

    v <- 0.9 * v - 0.0005 * eps * w - eps * <dL/dw>_batch
    w <- w + v

with eps the learning rate: weight decay sits *inside* the momentum update, as an L2 term on the
gradient. Keras' `weight_decay=` argument is the decoupled kind (w <- w - eps * wd * w outside
the momentum), which is not this rule, so `PaperSGD` writes the update out.

The learning rate starts at 0.01 and is divided by 10 "when the validation error rate stopped
improving with the current learning rate", three times in the paper's run (section 5).
`PlateauSchedule` does that; `StepSchedule` is the fixed-epoch alternative.
"""

import dataclasses
from typing import Optional, Sequence

import keras
from keras import ops

from keras_alexnet import cpu_kernels
from keras_alexnet import errors

# Section 5.
MOMENTUM = 0.9
WEIGHT_DECAY = 0.0005
LEARNING_RATE = 0.01
LR_DROP_FACTOR = 0.1
MAX_LR_DROPS = 3


@keras.saving.register_keras_serializable(package="keras_alexnet")
class PaperSGD(keras.optimizers.Optimizer):
  """v <- momentum * v - weight_decay * lr * w - lr * g;  w <- w + v  (section 5).

  Equal to keras.optimizers.SGD(momentum, nesterov=False) applied to g + weight_decay * w, but
  written as the paper writes it. Under tf.distribute, `g` is the all-reduced (summed)
  gradient, so the decay term is added once, after the reduction.

  The update of each variable runs as one XLA fusion where keras_alexnet.cpu_kernels takes its
  speed-ups (training on a CPU, by default), as plain TF ops otherwise.

  Args:
    learning_rate: eps. A float (held in a variable the schedules assign to).
    momentum: 0.9 in the paper.
    weight_decay: 0.0005 in the paper; 0 turns it off.
    decay_biases: False (the default) decays only kernels (rank >= 2 variables): the paper's
      cuda-convnet layer files set a weight cost for weights only, and Caffe's reference
      AlexNet likewise uses decay_mult 0 for biases. True decays every trainable variable.
  """

  def __init__(self, learning_rate=LEARNING_RATE, momentum=MOMENTUM,
               weight_decay=WEIGHT_DECAY, decay_biases=False, name="paper_sgd", **kwargs):
    # The base class' weight_decay is the decoupled kind; ours is kept apart on purpose.
    super().__init__(learning_rate=learning_rate, name=name, **kwargs)
    if not 0.0 <= momentum < 1.0:
      raise errors.invalid("momentum", momentum, "in [0, 1)")
    if weight_decay < 0:
      raise errors.invalid("weight_decay", weight_decay, ">= 0")
    self.momentum = float(momentum)
    self.paper_weight_decay = float(weight_decay)
    self.decay_biases = bool(decay_biases)

  def build(self, variables):
    if self.built:
      return
    super().build(variables)
    self.velocities = self.add_optimizer_variables(variables, "velocity")
    self._fused_update = cpu_kernels.fused_update(_paper_update)

  def decays(self, variable) -> bool:
    """Whether the weight-decay term applies to `variable`."""
    return self.paper_weight_decay > 0 and (self.decay_biases or len(variable.shape) >= 2)

  def update_step(self, gradient, variable, learning_rate):
    v = self.velocities[self._get_variable_index(variable)]
    decay = self.paper_weight_decay if self.decays(variable) else 0.0
    dtype = variable.dtype
    update = self._fused_update if cpu_kernels.enabled(training=True) else _paper_update
    update(variable, _tf_variable(v), ops.cast(gradient, dtype), ops.cast(learning_rate, dtype),
           ops.cast(self.momentum, dtype), ops.cast(decay, dtype))

  def get_config(self):
    return {**super().get_config(), "momentum": self.momentum,
            "weight_decay": self.paper_weight_decay, "decay_biases": self.decay_biases}


def _tf_variable(variable):
  return variable.value if isinstance(variable, keras.Variable) else variable


def _paper_update(variable, velocity, gradient, eps, momentum, decay):
  """v <- momentum * v - decay * eps * w - eps * g;  w <- w + v, in place: the plain TF ops,
  or one XLA fusion per variable when cpu_kernels takes its speed-ups (PaperSGD.build compiles
  it). decay = 0 for variables that are not decayed (the term is then exactly zero)."""
  new_v = momentum * velocity - decay * (eps * variable) - eps * gradient
  velocity.assign(new_v)
  variable.assign_add(new_v)


class PlateauSchedule:
  """Divides the learning rate by 10 when the validation error stops improving (section 5).

  After each validation, `update(error)` counts the epochs without an improvement larger than
  `min_delta` since the last drop; after `patience` of them the rate is multiplied by `factor`,
  at most `max_drops` times. Its whole state is `state()`, a JSON-able dict saved with every
  checkpoint.
  """

  def __init__(self, base_lr: float, patience: int, factor: float = LR_DROP_FACTOR,
               max_drops: int = MAX_LR_DROPS, min_delta: float = 0.0):
    if patience < 1:
      raise errors.invalid("plateau patience", patience, ">= 1 epoch")
    if not 0.0 < factor < 1.0:
      raise errors.invalid("the learning-rate drop factor", factor, "in (0, 1)")
    self.base_lr = base_lr
    self.patience = patience
    self.factor = factor
    self.max_drops = max_drops
    self.min_delta = min_delta
    self.drops = 0
    self.best = None
    self.bad_epochs = 0

  def learning_rate(self, epoch: int) -> float:
    del epoch  # Driven by validation results only.
    return self.base_lr * self.factor ** self.drops

  def update(self, epoch: int, error: Optional[float]) -> bool:
    """Records the validation error after `epoch`; returns True if the rate dropped."""
    del epoch
    if error is None:
      return False
    if self.best is None or error < self.best - self.min_delta:
      self.best = error
      self.bad_epochs = 0
      return False
    self.bad_epochs += 1
    if self.bad_epochs < self.patience or self.drops >= self.max_drops:
      return False
    self.drops += 1
    self.bad_epochs = 0
    # The paper compares against "the current learning rate", so a drop starts a new plateau
    # search from the best error so far.
    return True

  def state(self) -> dict:
    return {"kind": "plateau", "drops": self.drops, "best": self.best,
            "bad_epochs": self.bad_epochs}

  def restore(self, state: dict) -> None:
    if state.get("kind") != "plateau":
      raise ValueError(f"cannot restore a plateau schedule from {state!r}: the run was started "
                       "with another --lr_schedule.")
    self.drops = int(state["drops"])
    self.best = state["best"]
    self.bad_epochs = int(state["bad_epochs"])


class StepSchedule:
  """Multiplies the learning rate by `factor` at each epoch in `boundaries`."""

  def __init__(self, base_lr: float, boundaries: Sequence[int], factor: float = LR_DROP_FACTOR):
    if list(boundaries) != sorted(set(boundaries)) or any(b < 1 for b in boundaries):
      raise errors.invalid("step schedule epochs", list(boundaries),
                           "increasing positive integers")
    self.base_lr = base_lr
    self.boundaries = tuple(boundaries)
    self.factor = factor

  def learning_rate(self, epoch: int) -> float:
    """The rate during (0-based) `epoch`."""
    drops = sum(1 for b in self.boundaries if epoch >= b)
    return self.base_lr * self.factor ** drops

  def update(self, epoch: int, error: Optional[float]) -> bool:
    del error
    return self.learning_rate(epoch + 1) != self.learning_rate(epoch)

  def state(self) -> dict:
    return {"kind": "step"}

  def restore(self, state: dict) -> None:
    if state.get("kind") != "step":
      raise ValueError(f"cannot restore a step schedule from {state!r}: the run was started "
                       "with another --lr_schedule.")


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
  kind: str = "plateau"                       # "plateau" | "step"
  # Epochs without improvement before a drop. The paper gives none; 2 keeps one noisy epoch
  # from cutting the rate.
  patience: int = 2
  min_delta: float = 0.0
  max_drops: int = MAX_LR_DROPS
  factor: float = LR_DROP_FACTOR
  step_epochs: Sequence[int] = (30, 60, 80)


def make_schedule(config: ScheduleConfig, base_lr: float):
  if config.kind == "plateau":
    return PlateauSchedule(base_lr, config.patience, config.factor, config.max_drops,
                           config.min_delta)
  if config.kind == "step":
    return StepSchedule(base_lr, config.step_epochs, config.factor)
  raise errors.invalid("lr_schedule", config.kind, "'plateau' or 'step'")
