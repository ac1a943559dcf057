"""TensorBoard: the writers of a run, the scalars and images the trainer writes, and the conv1
kernel grid (the paper's Figure 3 layout), which the demo draws too.

Imports the preprocessing (to show inputs augmented as the step augments them) and nothing of
the trainer: the demo imports this module without the training machinery."""

import math
import os

import numpy as np
import tensorflow as tf

from keras_alexnet import preprocessing

SUMMARY_IMAGES = 3          # Augmented inputs shown in TensorBoard each epoch.
KERNEL_ZOOM = 4             # conv1 kernels are 11x11: enlarged so that TensorBoard shows them.


def kernel_grid(kernels: np.ndarray, columns: int = 12) -> np.ndarray:
  """conv1 kernels [h, w, 3, n] -> one RGB image [1, H, W, 3] in [0, 1], as the paper's
  Figure 3 shows them: each kernel scaled on its own, 1-pixel gaps. With 96 kernels the first
  4 rows are tower a's 48, the last 4 tower b's."""
  h, w, _, n = kernels.shape
  columns = columns if n % columns == 0 else int(math.ceil(math.sqrt(n)))
  rows = int(math.ceil(n / columns))
  grid = np.ones((rows * (h + 1) + 1, columns * (w + 1) + 1, 3), np.float32)
  for i in range(n):
    k = kernels[..., i]
    scale = np.abs(k).max() or 1.0
    r, c = divmod(i, columns)
    grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + c * (w + 1):1 + c * (w + 1) + w] = (
        0.5 + 0.5 * k / scale)
  grid = np.repeat(np.repeat(grid, KERNEL_ZOOM, axis=0), KERNEL_ZOOM, axis=1)
  return grid[None]


def _display(images):
  """Mean-subtracted float crops -> [0, 1] per image, for TensorBoard."""
  lo = tf.reduce_min(images, axis=[1, 2, 3], keepdims=True)
  hi = tf.reduce_max(images, axis=[1, 2, 3], keepdims=True)
  return (images - lo) / tf.maximum(hi - lo, 1e-6)


class Writers:
  """TensorBoard writers under `root` (the workdir's tensorboard/): the chief writes, the other
  workers write nothing."""

  def __init__(self, root, active):
    if active:
      self.train = tf.summary.create_file_writer(os.path.join(root, "train"))
      self.validation = tf.summary.create_file_writer(os.path.join(root, "validation"))
    else:
      self.train = self.validation = tf.summary.create_noop_writer()

  def flush(self):
    self.train.flush()
    self.validation.flush()


def train_scalars(writers, step, loss, top1_error, top5_error, learning_rate,
                  images_per_second=None):
  """The training scalars of one log window (averages over its steps)."""
  with writers.train.as_default(step=step):
    tf.summary.scalar("loss", loss)
    tf.summary.scalar("top1_error", top1_error)
    tf.summary.scalar("top5_error", top5_error)
    tf.summary.scalar("learning_rate", learning_rate)
    if images_per_second:
      tf.summary.scalar("images_per_second", images_per_second)


def augmented_inputs(writers, strategy, images, stats, augment, augment_seed, step):
  """A few inputs of the coming step, augmented as replica 0 will augment them (augment_seed:
  replica 0's seed of that step)."""
  local = strategy.experimental_local_results(images)[0][:SUMMARY_IMAGES]
  crops = preprocessing.augment(local, stats, augment, augment_seed)
  with writers.train.as_default(step=step):
    tf.summary.image("augmented_inputs", _display(crops), max_outputs=SUMMARY_IMAGES)


def epoch_end(writers, model, val, step, images):
  """The validation scalars, and (images: true) the conv1 kernels as they are now."""
  with writers.validation.as_default(step=step):
    for key in ("loss", "top1_error", "top5_error"):
      if key in val:
        tf.summary.scalar(key, val[key])
  if images:
    conv1 = model.get_layer("conv1").kernel
    with writers.train.as_default(step=step):
      tf.summary.image("conv1_kernels", kernel_grid(np.asarray(conv1)))
  writers.flush()
