"""train_and_evaluate: the paper's training (section 5) in a custom loop under a tf.distribute
strategy, resumable at any step.

Per step, on each replica: the uint8 batch the input pipeline yields is augmented on the device
(preprocessing.augment, seeded by (seed, global step, replica)), the model runs with dropout
seeded the same way, the loss is the summed cross-entropy over the replica's examples divided
by the *global* batch (so the replicas' gradients, summed by the all-reduce, are the gradient of
the global batch's mean loss), and PaperSGD applies the paper's update once to the summed
gradient. Every random choice is a function of (seed, step, replica) and the data order of
(seed, epoch), so a run resumed from step k repeats exactly what an uninterrupted run does
after step k (bit for bit with --deterministic).

After each epoch: validation error (centre crop), the learning-rate schedule, a checkpoint
(kept as "best" when the validation error is the lowest so far), TensorBoard summaries.

Where the run stands (step, epoch, best error, the schedule's state) is one TrainState, saved
into and restored from each checkpoint's state.json in one place. This module is the loop and
its steps only: the strategy comes from distribute, the workdir and its checkpoint store from
workdir (the lock from workdir_lock), fine-tuning from finetune, TensorBoard from summaries.
"""

import dataclasses
import os
import signal
import sys
import time
from typing import Any, Optional

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from keras_alexnet import bounded_input
from keras_alexnet import config as config_lib
from keras_alexnet import cpu_kernels
from keras_alexnet import data_sources
from keras_alexnet import dataset as dataset_lib
from keras_alexnet import dataset_info
from keras_alexnet import distribute
from keras_alexnet import files
from keras_alexnet import finetune
from keras_alexnet import optimizer as optimizer_lib
from keras_alexnet import preprocessing
from keras_alexnet import summaries
from keras_alexnet import workdir as workdir_lib
from keras_alexnet import workdir_lock

# Seeds of the random streams, folded with the step and the replica.
_AUGMENT_STREAM = 0
_DROPOUT_STREAM = 1


class NonFiniteLossError(RuntimeError):
  """The loss became NaN or Inf; training stopped without saving."""


class Stopped(Exception):
  """A signal (SIGTERM, SIGINT) stopped training after saving a checkpoint."""

  def __init__(self, signum, step):
    super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}, after saving "
                     "a checkpoint; run the same command again to resume.")
    self.signum = signum
    self.step = step


# ---------------------------------------------------------------------------------------------
# The loop's state.


@dataclasses.dataclass
class TrainState:
  """Where the run stands besides the weights and the optimizer's slots: all that a resumed run
  needs to go on as an uninterrupted one would. Written into every checkpoint's state.json
  (`to_json`) and read back from it (`from_json`), here only.

  schedule: the learning-rate schedule (optimizer.make_schedule); its state is saved too.
  """
  schedule: Any
  step: int = 0                 # Steps done, over all epochs.
  epoch: int = 0                # Epochs done.
  batch: int = 0                # Batches done in the current epoch.
  best_top1_error: Optional[float] = None
  history: list = dataclasses.field(default_factory=list)   # One record per epoch done.
  earlier_seconds: float = 0.0  # Wall time of the run's earlier sessions.
  # The run's time up to its last checkpoint: what the summary reports, now and on a rerun.
  saved_seconds: float = 0.0
  session_start: float = dataclasses.field(default_factory=time.perf_counter)

  def to_json(self, steps_per_epoch: int, batch_size: int, learning_rate: float) -> dict:
    """state.json. Its keys never change: checkpoints of earlier versions must restore."""
    return {"step": self.step, "epoch": self.epoch, "batch": self.batch,
            "steps_per_epoch": steps_per_epoch, "batch_size": batch_size,
            "learning_rate": learning_rate, "schedule": self.schedule.state(),
            "best_top1_error": self.best_top1_error, "history": self.history,
            # Wall time of every session of the run: the closing summary's total.
            "train_seconds": self.earlier_seconds + time.perf_counter() - self.session_start}

  @classmethod
  def from_json(cls, saved: dict, schedule) -> "TrainState":
    """The state a checkpoint's state.json holds; restores `schedule` from it."""
    schedule.restore(saved["schedule"])
    seconds = float(saved.get("train_seconds", 0.0))
    return cls(schedule, step=saved["step"], epoch=saved["epoch"], batch=saved["batch"],
               best_top1_error=saved.get("best_top1_error"),
               history=saved.get("history", []), earlier_seconds=seconds,
               saved_seconds=seconds)


@dataclasses.dataclass(frozen=True)
class _Run:
  """What stays fixed while the loop runs: the settings, the strategy, the model and its
  optimizer, where they are saved and where the summaries go."""
  config: config_lib.Config
  strategy: Any
  model: keras.Model
  optimizer: Any
  checkpoint: tf.train.Checkpoint
  store: workdir_lib.CheckpointStore
  writers: summaries.Writers
  stats: dataset_info.Statistics
  steps_per_epoch: int
  chief: bool

  @property
  def train(self) -> config_lib.TrainConfig:
    return self.config.train


# ---------------------------------------------------------------------------------------------
# The steps.


def make_optimizer(t: config_lib.TrainConfig, learning_rate: float):
  """The paper's SGD with the run's momentum and weight decay; loss scaling under
  mixed_float16 (bfloat16 needs none)."""
  optimizer = optimizer_lib.PaperSGD(learning_rate, momentum=t.momentum,
                                     weight_decay=t.weight_decay, decay_biases=t.decay_biases)
  if t.precision == "mixed_float16":
    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
  return optimizer


def _step_seed(seed, step, replica, stream):
  """A stateless seed [2] for (base seed, global step, replica id, stream)."""
  s = tf.constant([seed, stream], tf.int64)
  s = tf.random.experimental.stateless_fold_in(s, tf.cast(step, tf.int64))
  return tf.random.experimental.stateless_fold_in(s, tf.cast(replica, tf.int64))


def _metrics(logits, labels):
  logits = tf.cast(logits, tf.float32)
  losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
  top1 = tf.reduce_sum(tf.cast(tf.math.in_top_k(labels, logits, 1), tf.float32))
  top5 = tf.reduce_sum(tf.cast(tf.math.in_top_k(labels, logits, 5), tf.float32))
  return losses, top1, top5


def make_train_step(model, optimizer, strategy, stats, augment, global_batch, seed, xla):
  """train_step(images, labels, step, stop) -> (loss sum, top-1 hits, top-5 hits, stops), each
  summed over all replicas: `stops` > 0 when any worker was asked to stop (so all stop at
  the same step)."""
  seed_states = [layer.seed_generator.state for layer in model.layers
                 if isinstance(layer, keras.layers.Dropout)]

  def forward_backward(images, labels, augment_seed):
    x = preprocessing.augment(images, stats, augment, augment_seed)
    with tf.GradientTape() as tape:
      logits = model(x, training=True)
      losses, top1, top5 = _metrics(logits, labels)
      # Divided by the global batch: the all-reduce sums the replicas' gradients.
      loss = tf.reduce_sum(losses) / global_batch
      scaled = optimizer.scale_loss(loss)
    grads = tape.gradient(scaled, model.trainable_variables)
    return grads, tf.reduce_sum(losses), top1, top5

  if xla:
    forward_backward = tf.function(forward_backward, jit_compile=True)

  def replica_step(images, labels, step, stop):
    replica = tf.distribute.get_replica_context().replica_id_in_sync_group
    dropout_seed = _step_seed(seed, step, replica, _DROPOUT_STREAM)
    for i, state in enumerate(seed_states):
      # Different masks on every replica and step, the same after a resume.
      state.assign(tf.cast(tf.random.experimental.stateless_fold_in(dropout_seed, i),
                           state.dtype))
    grads, loss_sum, top1, top5 = forward_backward(
        images, labels, _step_seed(seed, step, replica, _AUGMENT_STREAM))
    optimizer.apply(grads, model.trainable_variables)
    return loss_sum, top1, top5, tf.identity(stop)   # Per replica, so that it reduces.

  @tf.function
  def train_step(images, labels, step, stop):
    out = strategy.run(replica_step, args=(images, labels, step, stop))
    loss_sum, top1, top5, stop = out
    total = lambda x: strategy.reduce(tf.distribute.ReduceOp.SUM, x, axis=None)
    return total(loss_sum), total(top1), total(top5), total(stop)

  return train_step


def make_eval_step(model, strategy, stats, mean, distributed):
  """eval_step(images, labels) -> (loss sum, top-1 hits, top-5 hits, examples) on the centre
  crops; `distributed`: a batch from strategy.experimental_distribute_dataset."""

  def replica_step(images, labels):
    logits = model(preprocessing.center_crop(images, stats, mean), training=False)
    losses, top1, top5 = _metrics(logits, labels)
    return tf.reduce_sum(losses), top1, top5, tf.cast(tf.size(labels), tf.float32)

  @tf.function
  def eval_step(images, labels):
    if not distributed:
      return replica_step(images, labels)
    out = strategy.run(replica_step, args=(images, labels))
    return tuple(strategy.reduce(tf.distribute.ReduceOp.SUM, x, axis=None) for x in out)

  return eval_step


def validation_batches(strategy, data: data_sources.DataConfig, batch_size: int, steps: int,
                       num_examples: int, distributed: bool):
  """A function that yields one validation pass (the whole split, or its first `steps`
  batches) per call, every call the same batches, all from one iterator made at the first
  call: deleting an iterator per epoch can stall on TF 2.21's lost autotuner wake-up, as
  training's did (see _chain_epochs). The pass's length comes from num_examples and is
  asserted, so a wrong count fails instead of shifting later passes."""
  # Synthetic validation repeats whole batches only (dataset._synthetic_split).
  count = num_examples // batch_size if data.synthetic else -(-num_examples // batch_size)
  if steps:
    count = min(steps, count)
  ds = dataset_lib.create_split(data, train=False, batch_size=batch_size).take(count)
  ds = ds.apply(tf.data.experimental.assert_cardinality(count)).repeat()
  if distributed:
    ds = strategy.experimental_distribute_dataset(ds)
  iterator = None

  def one_pass():
    nonlocal iterator
    if iterator is None:
      iterator = iter(ds)
    for _ in range(count):
      yield next(iterator)

  return one_pass


def evaluate_split(eval_step, strategy, data: data_sources.DataConfig, batch_size: int,
                   steps: int, distributed: bool, batches=None, timeout: float = 0.0,
                   signals=None, on_stop=None) -> dict:
  """Validation loss and top-1/top-5 error over the whole split (or `steps` batches).
  batches: a `validation_batches` function to take the pass from, instead of a new dataset.
  timeout, signals, on_stop: see bounded_input.BoundedNext."""
  if batches is not None:
    ds = batches()
  else:
    ds = dataset_lib.create_split(data, train=False, batch_size=batch_size)
    if steps:
      ds = ds.take(steps)
    if distributed:
      ds = strategy.experimental_distribute_dataset(ds)
  totals = np.zeros(4)
  for images, labels in bounded_input.iterate(ds, timeout, _input_source(data), signals,
                                              on_stop):
    totals += np.array([float(x) for x in eval_step(images, labels)])
  loss, top1, top5, n = totals
  if n == 0:
    return {}
  return {"loss": loss / n, "top1_error": 1 - top1 / n, "top5_error": 1 - top5 / n,
          "examples": int(n)}


def _input_source(data: data_sources.DataConfig) -> str:
  if data.data_service_address:
    return f"the tf.data service at {data.data_service_address}"
  return f"the shards in {data.data_dir}"


# ---------------------------------------------------------------------------------------------
# The loop.


def _learning_rate(optimizer) -> float:
  # .numpy(): float() of a variable mirrored over replicas is refused.
  return float(optimizer.learning_rate.numpy())


class _SignalFlag:
  """SIGTERM/SIGINT request a stop; the loop saves and exits after the current step."""

  def __init__(self):
    self.signum = 0
    self._previous = {}

  def __enter__(self):
    for signum in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[signum] = signal.signal(signum, self._handle)
      except ValueError:   # Not the main thread: leave signals alone.
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    if self.signum:   # A second signal: stop at once.
      raise KeyboardInterrupt
    logging.warning("%s received: saving a checkpoint after this step, then exiting.",
                    signal.Signals(signum).name)
    self.signum = signum

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)


def train_and_evaluate(config: config_lib.Config, workdir: str, flags_text: str = "") -> dict:
  """Trains (or resumes) the run in `workdir`; returns the final validation results.

  Everything that can be checked is checked before the workdir is touched. Raises
  NonFiniteLossError on a NaN/Inf loss (nothing saved after the last good step) and Stopped
  after a SIGTERM/SIGINT (a checkpoint saved).
  """
  config_lib.check_train_config(config)
  t = config.train
  if t.strategy == "auto":
    distribute.refuse_auto_under_tf_config()   # Before anything is read.
  strategy = None
  if t.strategy == "multi_worker":
    # Collective ops must be set up before TF runs anything, e.g. reading the dataset below.
    strategy, tower_devices = distribute.make_strategy(t)
  # What the dataset itself says, without --num_classes: this project's shards declare their
  # classes, and a different --num_classes is a mistake. Model Garden and TFDS shards do not
  # (1000 assumed), and there --num_classes=1001 keeps their background class.
  data_meta = data_sources.dataset_metadata(dataclasses.replace(config.data, num_classes=None))
  num_classes = data_meta["num_classes"]
  wanted = config.model.num_classes
  if wanted is not None and wanted != num_classes:
    if data_meta["format"] == "keras_alexnet":
      raise ValueError(f"--num_classes={wanted} but the dataset in {config.data.data_dir} has "
                       f"{num_classes} classes; drop --num_classes or use a matching dataset.")
    num_classes = wanted
  num_train = data_meta["num_examples"]["train"]
  if num_train == 0:
    raise FileNotFoundError(f"{config.data.data_dir} holds no training shards; build them with "
                            f"`{data_sources.BUILD_COMMAND}`.")
  has_validation = data_meta["num_examples"].get("validation", 0) > 0
  if not has_validation and t.schedule.kind == "plateau":
    logging.warning("No validation split: the plateau schedule will never lower the learning "
                    "rate. Use --lr_schedule=step, or build a validation split.")
  stats = (dataset_info.imagenet_statistics() if config.data.synthetic
           else dataset_info.statistics_from_dataset_info(config.data.data_dir))

  if strategy is None:
    strategy, tower_devices = distribute.make_strategy(
        t, paper_net=config.model.variant == "paper")
  replicas = strategy.num_replicas_in_sync
  if t.batch_size % replicas:
    raise ValueError(f"--batch_size={t.batch_size} (the global batch) is not divisible by the "
                     f"{replicas} replicas of --strategy={t.strategy}; use a multiple of "
                     f"{replicas}" + (", or name fewer devices with --devices (auto mirrors "
                                      "over every GPU)" if t.strategy == "auto" else "") + ".")
  steps_per_epoch = num_train // t.batch_size
  if t.steps_per_epoch:
    steps_per_epoch = min(steps_per_epoch, t.steps_per_epoch)
  if steps_per_epoch == 0:
    raise ValueError(f"The training split has {num_train} examples, fewer than one global "
                     f"batch of {t.batch_size}.")
  model_config = dataclasses.replace(config.model, num_classes=num_classes)
  if t.init_checkpoint and not t.tiny_model:
    # A converted pretrained net is fine-tuned as the source's own architecture (on the usual
    # 224 crops: Caffe's unpadded net reaches fc6's 6x6 grid there too, by its ceil pooling).
    source = finetune.init_architecture(t.init_checkpoint)
    if source:
      logging.info("--init_checkpoint is a converted net; its architecture is kept: %s", source)
      model_config = dataclasses.replace(model_config, **source)
  metadata = workdir_lib.run_metadata(config, model_config, data_meta, stats, steps_per_epoch,
                                      strategy.num_replicas_in_sync)
  # One trainer per workdir (the chief's: other workers of a run write no files of their own).
  lock = workdir_lock.WorkdirLock(workdir) if strategy.extended.should_checkpoint else None
  if lock is not None:
    lock.acquire()
  try:
    if t.resume:
      workdir_lib.check_same_run(workdir, metadata)
    keras.mixed_precision.set_global_policy(t.precision)
    with cpu_kernels.using(t.cpu_kernels):   # read when the steps are traced, inside _train
      return _train(config, workdir, flags_text, strategy, tower_devices, model_config,
                    metadata, stats)
  finally:
    keras.mixed_precision.set_global_policy("float32")
    if lock is not None:
      lock.release()


def _train(config, workdir, flags_text, strategy, tower_devices, model_config, metadata, stats):
  """The loop, in sections: the model and its workdir, the state, the input, then per epoch
  the steps and the end of the epoch (validation, the schedule, a checkpoint)."""
  t = config.train
  steps_per_epoch = metadata["train"]["steps_per_epoch"]
  chief = strategy.extended.should_checkpoint

  # The model and the optimizer, built under the strategy from the run's seed.
  if t.deterministic:
    tf.config.experimental.enable_op_determinism()
  keras.utils.set_random_seed(t.seed)   # The initial weights.
  peak_lr = t.peak_learning_rate()
  with strategy.scope():
    model = workdir_lib.build_model(
        dataclasses.replace(model_config, devices=tower_devices), tiny=t.tiny_model)
    frozen = finetune.freeze_before(model, t.trainable_from) if t.trainable_from else []
    optimizer = make_optimizer(t, peak_lr)
    optimizer.build(model.trainable_variables)
  checkpoint = tf.train.Checkpoint(model=workdir_lib.checkpointed_variables(model),
                                   optimizer=optimizer)

  # The workdir: fine-tuning's starting weights, then the run's files.
  store = workdir_lib.CheckpointStore(workdir, t.keep_checkpoints, chief,
                                      distribute.worker_id(strategy))
  if frozen:
    logging.info("Frozen (--trainable_from=%s): %s.", t.trainable_from, ", ".join(frozen))
  if t.init_checkpoint and not (t.resume and store.steps()):
    # Once, at the start: a resumed run continues from its own checkpoints instead.
    init = finetune.load_init_weights(model, t.init_checkpoint)
    logging.info("Initialised from %s: %s; re-initialised: %s.", init["checkpoint"],
                 ", ".join(init["loaded"]), ", ".join(init["reinitialised"]) or "none")
  if chief:
    os.makedirs(workdir, exist_ok=True)
    if not t.resume:
      workdir_lib.move_aside(workdir)
    store.clean_partial()
    files.write_json(os.path.join(workdir, workdir_lib.CONFIG_FILE), metadata)
    files.write_text(os.path.join(workdir, workdir_lib.FLAGS_FILE), flags_text)
    workdir_lib.save_statistics(workdir, stats)

  # The loop's state: the newest checkpoint's, or fresh.
  state = _restore_or_start(t, workdir, store, checkpoint, optimizer,
                            optimizer_lib.make_schedule(t.schedule, peak_lr), steps_per_epoch,
                            strategy.num_replicas_in_sync)

  # The steps, and their input: one iterator for the rest of the run, one for validation.
  train_step = make_train_step(model, optimizer, strategy, stats, config.augment, t.batch_size,
                               t.seed, t.xla)
  distributed_eval = t.strategy != "multi_worker"
  eval_step = make_eval_step(model, strategy, stats, config.augment.mean, distributed_eval)
  writers = summaries.Writers(os.path.join(workdir, workdir_lib.TENSORBOARD_DIR),
                              strategy.extended.should_save_summary)
  run = _Run(config, strategy, model, optimizer, checkpoint, store, writers, stats,
             steps_per_epoch, chief)
  signals = _SignalFlag()

  def stop_waiting(error):
    """While waiting for input: a signal, or no batch for --data_timeout. The model is at a
    step boundary: save, then stop."""
    _save(run, state)
    if isinstance(error, bounded_input.Interrupted):
      raise Stopped(signals.signum, state.step)
    raise bounded_input.InputTimeout(f"{error} Saved a checkpoint at step {state.step}; rerun "
                                     "the same command to resume.")

  has_validation = metadata["data"]["num_examples"].get("validation", 0) > 0
  val_batches = validation_batches(
      strategy, config.data, t.batch_size, t.eval_steps,
      metadata["data"]["num_examples"].get("validation", 0),
      distributed_eval) if has_validation else None
  if state.epoch < t.epochs:
    iterator = iter(strategy.distribute_datasets_from_function(_train_batches(
        config.data, t.epochs, steps_per_epoch, t.batch_size // strategy.num_replicas_in_sync,
        state.epoch, state.batch)))
    fetch = bounded_input.BoundedNext(iterator, t.data_timeout, _input_source(config.data),
                                      stop_waiting)

  with signals:
    while state.epoch < t.epochs:
      epoch_start = time.perf_counter()
      _train_epoch(run, state, train_step, fetch, signals)
      # The end of the epoch: validation, the schedule, a checkpoint.
      validation_start = time.perf_counter()
      val = (evaluate_split(eval_step, strategy, config.data, t.batch_size, t.eval_steps,
                            distributed_eval, val_batches, t.data_timeout, signals,
                            stop_waiting) if has_validation else {})
      _end_epoch(run, state, val, epoch_start, validation_start)
      if signals.signum:
        raise Stopped(signals.signum, state.step)
  writers.flush()
  if chief:
    _log_summary(state.history, store, state.epoch, state.step, state.saved_seconds)
  return {"step": state.step, "epoch": state.epoch,
          "validation": state.history[-1]["validation"] if state.history else {},
          "best_top1_error": state.best_top1_error}


def _train_epoch(run: _Run, state: TrainState, train_step, fetch, signals) -> None:
  """The rest of the current epoch's steps: a log line (and TensorBoard scalars) every
  --log_every_steps, a checkpoint every --checkpoint_every_steps; on a signal (any worker's)
  a checkpoint, then Stopped."""
  t, config, optimizer = run.train, run.config, run.optimizer
  progbar = (keras.utils.Progbar(run.steps_per_epoch, stateful_metrics=["img/s", "lr"])
             if run.chief and sys.stdout.isatty() else None)
  window = np.zeros(4)   # loss sum, top-1 hits, top-5 hits, steps
  window_start = time.perf_counter()
  first_of_epoch, timed_steps = True, 0
  while state.batch < run.steps_per_epoch:
    images, labels = fetch(signals)
    if first_of_epoch and t.summary_images and state.batch == 0:
      summaries.augmented_inputs(run.writers, run.strategy, images, run.stats, config.augment,
                                 _step_seed(t.seed, state.step, 0, _AUGMENT_STREAM),
                                 state.step)
    out = train_step(images, labels, tf.constant(state.step, tf.int64),
                     tf.constant(float(signals.signum > 0)))
    loss_sum, top1, top5, stop = (x.numpy() for x in out)
    loss = loss_sum / t.batch_size
    if not np.isfinite(loss):
      raise _nonfinite_loss(run, state, loss)
    state.step += 1
    state.batch += 1
    window += (loss_sum, top1, top5, 1)
    if first_of_epoch:   # Pipeline start-up (and tracing) is not throughput.
      window_start, timed_steps, first_of_epoch = time.perf_counter(), 0, False
    else:
      timed_steps += 1
    if progbar:
      progbar.update(state.batch, [("loss", loss), ("top1_err", 1 - top1 / t.batch_size),
                                   ("lr", _learning_rate(optimizer))])
    if state.step % t.log_every_steps == 0 or state.batch == run.steps_per_epoch:
      _log_window(run.writers, window, timed_steps, window_start, state.step, state.epoch,
                  state.batch, run.steps_per_epoch, t.batch_size, _learning_rate(optimizer),
                  run.chief, steps_left=t.epochs * run.steps_per_epoch - state.step)
      window, window_start, timed_steps = np.zeros(4), time.perf_counter(), 0
    if stop:
      _save(run, state)
      raise Stopped(signals.signum or signal.SIGTERM, state.step)
    if state.step % t.checkpoint_every_steps == 0 and state.batch < run.steps_per_epoch:
      _save(run, state)


def _end_epoch(run: _Run, state: TrainState, val: dict, epoch_start: float,
               validation_start: float) -> None:
  """After the epoch's steps and its validation `val`: the best error, the schedule, the
  history, the summaries and the log line, then the next epoch's rate and a checkpoint."""
  t, optimizer, schedule = run.train, run.optimizer, state.schedule
  improved = bool(val) and (state.best_top1_error is None
                            or val["top1_error"] < state.best_top1_error)
  if improved:
    state.best_top1_error = val["top1_error"]
  lr = _learning_rate(optimizer)
  # After the last epoch there is no epoch for a new rate: the schedule stays as it is.
  if state.epoch + 1 < t.epochs and schedule.update(state.epoch, val.get("top1_error")):
    logging.info("Validation error stopped improving: learning rate %g -> %g.", lr,
                 schedule.learning_rate(state.epoch + 1))
  state.history.append({"epoch": state.epoch + 1, "step": state.step, "learning_rate": lr,
                        "validation": val})
  summaries.epoch_end(run.writers, run.model, val, state.step, t.summary_images)
  now = time.perf_counter()
  logging.info("Epoch %d/%d done at step %d in %s (validation %.1f s): validation %s.",
               state.epoch + 1, t.epochs, state.step, _duration(now - epoch_start),
               now - validation_start,
               ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in val.items()) or "skipped")
  state.epoch += 1
  state.batch = 0
  optimizer.learning_rate = schedule.learning_rate(state.epoch)
  _save(run, state,
        best={"top1_error": state.best_top1_error, "epoch": state.epoch} if improved else None)


def _last_good(store) -> str:
  steps = store.steps()
  return f"{store.path(steps[-1])}." if steps else "none (none was saved yet)."


def _save(run: _Run, state: TrainState, best: Optional[dict] = None) -> None:
  """A checkpoint of the weights, the optimizer and `state`; `best` marks it the best so far."""
  run.writers.flush()
  # A checkpoint is a "last good" one only with finite weights: a step can overflow them
  # before the loss shows it (the loss of step k is computed before step k's update).
  bad = workdir_lib.nonfinite_variables(run.model)
  if bad:
    raise NonFiniteLossError(
        f"The weights are not finite after step {state.step} ({', '.join(bad[:5])}); not "
        "saved. The last good checkpoint is " + _last_good(run.store)
        + " Lower --learning_rate or check the data.")
  saved = state.to_json(run.steps_per_epoch, run.train.batch_size,
                        _learning_rate(run.optimizer))
  path = run.store.save(run.checkpoint, state.step, saved, best)
  state.saved_seconds = saved["train_seconds"]
  if path:
    logging.info("Saved %s.", path)


def _restore_or_start(t, workdir, store, checkpoint, optimizer, schedule, steps_per_epoch,
                      replicas) -> TrainState:
  """The state of the newest checkpoint that loads (--resume), else a fresh one."""
  saved = store.restore(checkpoint) if t.resume else None
  if saved:
    state = TrainState.from_json(saved, schedule)
    if state.epoch >= t.epochs:
      logging.info("%s holds a complete run: %d of --epochs=%d done (step %d); nothing to "
                   "train. Raise --epochs to train on, or pass --resume=false to start afresh "
                   "(the old checkpoints are moved aside).", workdir, state.epoch, t.epochs,
                   state.step)
    else:
      logging.info("Resuming at step %d: epoch %d, batch %d of %d, learning rate %g.",
                   state.step, state.epoch + 1, state.batch, steps_per_epoch,
                   _learning_rate(optimizer))
    return state
  state = TrainState(schedule)
  optimizer.learning_rate = schedule.learning_rate(0)
  logging.info("Starting afresh: %d epochs of %d steps, global batch %d on %d replica(s), "
               "learning rate %g.", t.epochs, steps_per_epoch, t.batch_size, replicas,
               t.peak_learning_rate())
  return state


def _train_batches(data, epochs, steps_per_epoch, per_replica, first_epoch, skip):
  """The rest of the run as one dataset function: epoch `first_epoch` from its batch `skip`,
  then every later epoch, each cut at steps_per_epoch. So one iterator serves the whole run
  (an iterator per epoch stalled epoch starts: see _chain_epochs)."""
  def fn(context):
    local_replicas = context.num_replicas_in_sync // context.num_input_pipelines
    parts = []
    for e in range(first_epoch, epochs):
      done = skip if e == first_epoch else 0
      ds = dataset_lib.create_split(data, True, per_replica, input_context=context,
                                    epoch=e, skip_batches=done * local_replicas)
      if context.num_input_pipelines > 1:
        # Workers with fewer examples in their files wrap around rather than stall the others.
        ds = ds.repeat()
      # Each step takes one batch per local replica. The assertion fails the run, as running
      # out of data did with an iterator per epoch, instead of starting the next epoch early.
      batches = (steps_per_epoch - done) * local_replicas
      parts.append(ds.take(batches).apply(tf.data.experimental.assert_cardinality(batches)))
    return _chain_epochs(parts)
  return fn


def _nonfinite_loss(run: _Run, state: TrainState, loss) -> NonFiniteLossError:
  """The error for a NaN/Inf loss of the coming step; nothing is saved."""
  run.writers.flush()
  store, steps = run.store, run.store.steps()
  return NonFiniteLossError(
      f"The loss is {loss} at step {state.step + 1} (epoch {state.epoch + 1}, batch "
      f"{state.batch + 1}); stopping without saving. The last good checkpoint is "
      + _last_good(store)
      + (f" Its weights are finite but are the ones that gave this loss; the one "
         f"before it is {store.path(steps[-2]) if len(steps) > 1 else 'none'}."
         if steps and steps[-1] == state.step else "")
      + " Lower --learning_rate or check the data.")


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _log_summary(history, store, epochs, step, seconds):
  """The closing lines: the best validation epoch, the run's total time, the best checkpoint.

  The best epoch is the one of the lowest top-1 error, as for the "best" checkpoint."""
  logging.info("Training complete: %d epochs, %d steps in %s (all sessions of the run).",
               epochs, step, _duration(seconds))
  validated = [h for h in history if h.get("validation")]
  if not validated:
    logging.info("No validation results, so no best checkpoint; the latest is %s.",
                 store.path(step) if store.steps() else "none")
    return
  best = min(validated, key=lambda h: h["validation"]["top1_error"])
  marked = store.best()
  where = (store.path(int(marked["step"])) if marked and int(marked["step"]) in store.steps()
           else "not kept")
  logging.info("Best validation: top-1 error %.4f, top-5 error %.4f at epoch %d (step %d); "
               "best checkpoint: %s.", best["validation"]["top1_error"],
               best["validation"].get("top5_error", float("nan")), best["epoch"], best["step"],
               where)


def _chain_epochs(epochs):
  """epochs[0].concatenate(epochs[1])... as a balanced tree, so that a run of many epochs is
  a shallow graph.

  Why one dataset for the whole run: deleting a tf.data iterator waits for its autotuning
  thread (model::Model::OptimizeLoop), which sleeps between optimizations for a period that
  doubles up to 60 s. In TF 2.21 the cancellation can lose that thread's wake-up:
  CancellationManager::StartCancel runs the callback that wakes it before it sets
  is_cancelled_, and a thread that wakes in between sleeps out its period, idle. Deleting
  each epoch's iterator so stalled half the demo's epoch starts (the figures: BUILD_NOTES.md,
  "One training iterator for the whole run").
  """
  if len(epochs) == 1:
    return epochs[0]
  middle = len(epochs) // 2
  return _chain_epochs(epochs[:middle]).concatenate(_chain_epochs(epochs[middle:]))


def _log_window(writers, window, timed_steps, start, step, epoch, batch, steps_per_epoch,
                global_batch, lr, chief, steps_left=0):
  """Training scalars averaged over the steps since the last log line."""
  loss_sum, top1, top5, steps = window
  n = steps * global_batch
  seconds = time.perf_counter() - start
  images_per_second = timed_steps * global_batch / seconds if timed_steps else None
  summaries.train_scalars(writers, step, loss_sum / n, 1 - top1 / n, 1 - top5 / n, lr,
                          images_per_second)
  if chief:
    # ETA: the steps left at the rate since the last log line (validation not included).
    eta = (_duration(steps_left * seconds / timed_steps) if timed_steps and steps_left
           else "-" if steps_left else "0:00:00")
    logging.info("step %d (epoch %d, %d/%d): loss %.4f, top-1 error %.4f, top-5 error %.4f, "
                 "lr %g, %s images/s, ETA %s (%d steps left)", step, epoch + 1, batch,
                 steps_per_epoch, loss_sum / n, 1 - top1 / n, 1 - top5 / n, lr,
                 f"{images_per_second:.1f}" if images_per_second else "-", eta, steps_left)
