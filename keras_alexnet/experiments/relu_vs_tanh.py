"""Figure 1 of the paper: ReLU against tanh units in a small convolutional net.

  python -m keras_alexnet.experiments.relu_vs_tanh [--image_dir=DIR | --data_dir=DIR]
      [--output_dir=relu_vs_tanh] [--epochs=30] [--learning_rates=0.01,0.03,0.1,0.3]

Section 3.1, Figure 1: "A four-layer convolutional neural network with ReLUs (solid line)
reaches a 25% training error rate on CIFAR-10 six times faster than an equivalent network with
tanh neurons (dashed line). The learning rates for each network were chosen independently to
make training as fast as possible. No regularization of any kind was employed."

The net (`figure1_net`) is the usual reading of that "four-layer convolutional neural network":
cuda-convnet's example CIFAR-10 net layers-18pct.cfg (the code the paper's networks were trained
with), three 5x5 convolutional layers of 32, 32 and 64 maps, each followed by a 3x3 stride-2
pooling (max after conv1, average after conv2 and conv3), then a fully-connected softmax layer.
Its two response-normalization layers are left out: the figure compares the units alone, with
nothing else between them. Inputs are 32x32 RGB, scaled to [0, 1] with the training set's
per-pixel mean subtracted; weights are Keras' Glorot-uniform default, biases 0, for both units.

Each activation is trained with each learning rate of a small sweep, SGD with momentum 0.9 on
batches of 128 (cuda-convnet's CIFAR batch), with no weight decay, no dropout and no
augmentation, the same initial weights (for a given activation) and the same data order. The
training error recorded for an epoch is the error on the mini-batches of that epoch as they
were trained on, as cuda-convnet reports it. For each activation the rate that reaches the
target error (25%) in the fewest epochs is kept; the command prints both curves, the epochs each
needs and their ratio (tanh / ReLU; the paper's is about 6), and writes figure1.png and
figure1.json into --output_dir.

CIFAR-10 cannot be downloaded here: the command runs on any class-folder dataset (--image_dir,
one sub-folder of images per class) or TFRecord shards (--data_dir, read with
keras_alexnet.dataset), and by default on the demo dataset (keras_alexnet.demo_data, drawn
into --output_dir/demo_data on first use). Images are centre-cropped to a square and resized
to 32x32, CIFAR's size. Results on such data are not the paper's CIFAR-10 figure; the output
says which data was used.
"""

import dataclasses
import os
import textwrap
import time
from typing import Dict, List, Optional, Sequence, Tuple

from absl import app
from absl import flags
from absl import logging
import numpy as np

from keras_alexnet import errors
from keras_alexnet import experiments
from keras_alexnet import files

IMAGE_SIZE = 32           # CIFAR-10's images.
TARGET_ERROR = 0.25       # Figure 1: "reaches a 25% training error rate".
PAPER_RATIO = 6.0         # Figure 1: "six times faster".
BATCH_SIZE = 128          # cuda-convnet's CIFAR-10 examples.
MOMENTUM = 0.9
LEARNING_RATES = (0.01, 0.03, 0.1, 0.3)
EPOCHS = 30
MAX_EXAMPLES = 50_000     # CIFAR-10's training set; more is not needed for this figure.
ACTIVATIONS = ("relu", "tanh")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".tif", ".tiff", ".webp")


@dataclasses.dataclass(frozen=True)
class Figure1Config:
  image_dir: Optional[str] = None       # Class folders; else data_dir; else the demo data.
  data_dir: Optional[str] = None        # TFRecord shards (training split).
  output_dir: str = "relu_vs_tanh"
  epochs: int = EPOCHS
  learning_rates: Tuple[float, ...] = LEARNING_RATES
  batch_size: int = BATCH_SIZE
  target_error: float = TARGET_ERROR
  max_examples: int = MAX_EXAMPLES
  seed: int = 0
  plot: bool = True


@dataclasses.dataclass
class Run:
  activation: str
  learning_rate: float
  errors: List[float]                   # Training error of each epoch, in order.
  seconds: float
  diverged: bool = False

  def epochs_to(self, target: float) -> Optional[int]:
    """The first epoch (1-based) whose training error is at most `target`; None if none."""
    return next((i + 1 for i, e in enumerate(self.errors) if e <= target), None)


def check_config(config: Figure1Config) -> None:
  """Raises ValueError naming the first bad setting; touches nothing."""
  def bad(what, got, allowed):
    raise errors.invalid(f"--{what}", got, allowed)
  if config.image_dir and config.data_dir:
    bad("image_dir/--data_dir", (config.image_dir, config.data_dir),
        "at most one of them (neither: the demo dataset)")
  for name in ("image_dir", "data_dir"):
    path = getattr(config, name)
    if path and not os.path.isdir(path):
      bad(name, path, "an existing folder")
  for name in ("epochs", "batch_size", "max_examples"):
    if getattr(config, name) < 1:
      bad(name, getattr(config, name), "an integer >= 1")
  if not config.learning_rates or any(not lr > 0 for lr in config.learning_rates):
    bad("learning_rates", list(config.learning_rates), "a non-empty list of rates > 0")
  if not 0 < config.target_error < 1:
    bad("target_error", config.target_error, "a fraction in (0, 1)")
  if config.plot:
    experiments.require_matplotlib()


# ---------------------------------------------------------------------------------------------
# Data: every image as uint8 32x32, in memory (CIFAR-10's whole training set is 150 MB).


def _to_small(image) -> np.ndarray:
  """PIL image -> uint8 [32, 32, 3]: RGB, central square, area-averaged down to 32x32."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = image.convert("RGB")
  w, h = image.size
  side = min(w, h)
  left, top = (w - side) // 2, (h - side) // 2
  image = image.crop((left, top, left + side, top + side))
  return np.asarray(image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX), np.uint8)


def load_image_dir(image_dir: str, max_examples: int = MAX_EXAMPLES
                   ) -> Tuple[np.ndarray, np.ndarray, List[str]]:
  """Class folders (image_dir/<class>/<image>) -> (uint8 [N, 32, 32, 3], int32 [N], class
  names in label order = sorted folder names). Files that are not images are skipped with a
  warning; at most max_examples images, taken evenly from the classes."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  classes = sorted(d for d in os.listdir(image_dir)
                   if os.path.isdir(os.path.join(image_dir, d)) and not d.startswith("."))
  if len(classes) < 2:
    raise ValueError(f"{image_dir} must hold one sub-folder of images per class (at least 2); "
                     f"found {classes}.")
  files = []
  for label, name in enumerate(classes):
    folder = os.path.join(image_dir, name)
    files.append([(os.path.join(folder, f), label) for f in sorted(os.listdir(folder))
                  if f.lower().endswith(IMAGE_EXTENSIONS)])
  # Round-robin over the classes, so that a cap keeps them balanced.
  ordered = [item for group in _interleave(files) for item in group][:max_examples]
  images, labels = [], []
  for path, label in ordered:
    try:
      with Image.open(path) as image:
        images.append(_to_small(image))
    except (OSError, ValueError) as e:
      logging.warning("Skipping %s: not a readable image (%s).", path, e)
      continue
    labels.append(label)
  if not images:
    raise ValueError(f"{image_dir} holds no readable images with extensions "
                     f"{IMAGE_EXTENSIONS} in its class folders {classes}.")
  return np.stack(images), np.asarray(labels, np.int32), classes


def _interleave(groups):
  longest = max(len(g) for g in groups)
  for i in range(longest):
    yield [g[i] for g in groups if i < len(g)]


def load_tfrecords(data_dir: str, max_examples: int = MAX_EXAMPLES, seed: int = 0
                   ) -> Tuple[np.ndarray, np.ndarray, List[str]]:
  """The training split of TFRecord shards (keras_alexnet.dataset) -> 32x32 arrays, labels,
  class names."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from keras_alexnet import data_sources  # pylint: disable=g-import-not-at-top
  from keras_alexnet import dataset as dataset_lib  # pylint: disable=g-import-not-at-top
  config = data_sources.DataConfig(data_dir=data_dir, seed=seed)
  meta = data_sources.dataset_metadata(config)
  images, labels, n = [], [], 0
  # Batches of 16: drop_remainder loses at most 15 examples of the split.
  for batch, batch_labels in dataset_lib.create_split(config, train=True, batch_size=16):
    # Area averaging, as for class folders; the shards hold 256x256 centre squares already.
    small = tf.image.resize(batch, (IMAGE_SIZE, IMAGE_SIZE), method="area")
    images.append(np.clip(np.round(small.numpy()), 0, 255).astype(np.uint8))
    labels.append(batch_labels.numpy().astype(np.int32))
    n += len(batch_labels)
    if n >= max_examples:
      break
  if not images:
    raise ValueError(f"{data_dir} yielded no training examples.")
  classes = [str(c[1] if isinstance(c, (list, tuple)) else c) for c in meta.get("classes") or
             range(meta["num_classes"])]
  return (np.concatenate(images)[:max_examples], np.concatenate(labels)[:max_examples],
          classes)


def load_data(config: Figure1Config) -> Tuple[np.ndarray, np.ndarray, List[str], str]:
  """(images, labels, class names, a sentence saying what the data is)."""
  if config.image_dir:
    x, y, classes = load_image_dir(config.image_dir, config.max_examples)
    source = f"class folders in {os.path.abspath(config.image_dir)}"
  elif config.data_dir:
    x, y, classes = load_tfrecords(config.data_dir, config.max_examples, config.seed)
    source = f"TFRecord shards in {os.path.abspath(config.data_dir)} (training split)"
  else:
    from keras_alexnet import demo_data  # pylint: disable=g-import-not-at-top
    demo_dir = os.path.join(config.output_dir, "demo_data")
    logging.info("The demo dataset in %s (drawn on first use).", demo_dir)
    demo_data.generate(demo_dir)
    x, y, classes = load_image_dir(os.path.join(demo_dir, "train"), config.max_examples)
    source = f"the demo dataset (drawn shapes) in {os.path.abspath(demo_dir)}"
  counts = np.bincount(y, minlength=len(classes))
  if np.count_nonzero(counts) < 2:
    raise ValueError(f"The data ({source}) has examples of fewer than 2 classes: {counts}.")
  return x, y, classes, (f"{source}: {len(y)} images of {len(classes)} classes, resized to "
                         f"{IMAGE_SIZE}x{IMAGE_SIZE}; not CIFAR-10, which cannot be downloaded "
                         "here")


# ---------------------------------------------------------------------------------------------
# The net and its training.


def figure1_net(activation: str, num_classes: int, image_size: int = IMAGE_SIZE):
  """cuda-convnet's layers-18pct net without its response normalizations (module docstring):
  conv 32@5x5 -> max-pool 3/2 -> conv 32@5x5 -> avg-pool 3/2 -> conv 64@5x5 -> avg-pool 3/2
  -> fc num_classes (logits). "same" padding: 32 -> 16 -> 8 -> 4."""
  import keras  # pylint: disable=g-import-not-at-top
  if activation not in ACTIVATIONS:
    raise errors.invalid("activation", activation, f"one of {ACTIVATIONS}")
  inputs = keras.Input((image_size, image_size, 3), name="images")
  x = keras.layers.Conv2D(32, 5, padding="same", activation=activation, name="conv1")(inputs)
  x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)
  x = keras.layers.Conv2D(32, 5, padding="same", activation=activation, name="conv2")(x)
  x = keras.layers.AveragePooling2D(3, strides=2, padding="same", name="pool2")(x)
  x = keras.layers.Conv2D(64, 5, padding="same", activation=activation, name="conv3")(x)
  x = keras.layers.AveragePooling2D(3, strides=2, padding="same", name="pool3")(x)
  x = keras.layers.Flatten(name="flatten")(x)
  outputs = keras.layers.Dense(num_classes, name="fc4")(x)
  return keras.Model(inputs, outputs, name=f"figure1_{activation}")


def normalize(images: np.ndarray) -> np.ndarray:
  """uint8 images -> float32 in [0, 1] minus the per-pixel mean of these (training) images."""
  x = images.astype(np.float32) / 255.0
  return x - x.mean(axis=0, keepdims=True)


def train_run(x: np.ndarray, y: np.ndarray, num_classes: int, activation: str,
              learning_rate: float, epochs: int, batch_size: int = BATCH_SIZE,
              seed: int = 0) -> Run:
  """Trains figure1_net from scratch; the training error of each epoch."""
  import keras  # pylint: disable=g-import-not-at-top
  keras.backend.clear_session()
  keras.utils.set_random_seed(seed)   # Same initial weights and data order for every rate.
  net = figure1_net(activation, num_classes, x.shape[1])
  net.compile(optimizer=keras.optimizers.SGD(learning_rate, momentum=MOMENTUM),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
  start = time.perf_counter()
  history = net.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=0,
                    callbacks=[keras.callbacks.TerminateOnNaN()])
  seconds = time.perf_counter() - start
  losses = history.history["loss"]
  diverged = len(losses) < epochs or not np.all(np.isfinite(losses))
  errors = [1.0 - float(a) for a in history.history["accuracy"]]
  return Run(activation, learning_rate, errors, seconds, diverged)


def best_run(runs: Sequence[Run], target: float) -> Run:
  """The run that reaches `target` in the fewest epochs (ties: the lower error summed over
  the epochs); if none reaches it, the lowest final error. Diverged runs last."""
  def key(run):
    reached = run.epochs_to(target)
    return (run.diverged, reached is None, reached or 0,
            run.errors[-1] if run.errors else 1.0, sum(run.errors))
  return min(runs, key=key)


def run_experiment(config: Figure1Config) -> dict:
  """Sweeps, picks each activation's best rate, writes the JSON (and PNG); returns results."""
  check_config(config)
  x_uint8, y, classes, source = load_data(config)
  x = normalize(x_uint8)
  runs = {a: [] for a in ACTIVATIONS}
  for activation in ACTIVATIONS:
    for lr in config.learning_rates:
      run = train_run(x, y, len(classes), activation, lr, config.epochs, config.batch_size,
                      config.seed)
      logging.info("%s, learning rate %g: training error %s (%.1f s)%s", activation, lr,
                   " ".join(f"{e:.3f}" for e in run.errors), run.seconds,
                   " DIVERGED" if run.diverged else "")
      runs[activation].append(run)
  best = {a: best_run(runs[a], config.target_error) for a in ACTIVATIONS}
  epochs_to = {a: best[a].epochs_to(config.target_error) for a in ACTIVATIONS}
  ratio = (epochs_to["tanh"] / epochs_to["relu"]
           if epochs_to["relu"] and epochs_to["tanh"] else None)
  results = {
      "data": source,
      "examples": int(len(y)),
      "classes": classes,
      "target_error": config.target_error,
      "epochs": config.epochs,
      "batch_size": config.batch_size,
      "seed": config.seed,
      "sweep": {a: [{"learning_rate": r.learning_rate, "epochs_to_target":
                     r.epochs_to(config.target_error), "final_error": r.errors[-1],
                     "diverged": r.diverged, "seconds": round(r.seconds, 2)}
                    for r in runs[a]] for a in ACTIVATIONS},
      "best": {a: {"learning_rate": best[a].learning_rate, "errors": best[a].errors,
                   "epochs_to_target": epochs_to[a]} for a in ACTIVATIONS},
      "ratio_tanh_over_relu": ratio,
      "best_rate_at_sweep_edge": {
          a: len(config.learning_rates) > 1 and best[a].learning_rate in (
              min(config.learning_rates), max(config.learning_rates)) for a in ACTIVATIONS},
      "paper_ratio": PAPER_RATIO,
  }
  os.makedirs(config.output_dir, exist_ok=True)
  results["json"] = os.path.join(config.output_dir, "figure1.json")
  if config.plot:
    results["png"] = os.path.join(config.output_dir, "figure1.png")
    plot_curves(best, config.target_error, source, results["png"])
  files.write_json(results["json"], results)
  return results


# ---------------------------------------------------------------------------------------------
# Output.


def plot_curves(best: Dict[str, Run], target: float, source: str, path: str) -> None:
  """The paper's Figure 1: training error against epochs, ReLU solid, tanh dashed."""
  plt = experiments.require_matplotlib()
  figure, axes = plt.subplots(figsize=(6, 4.5))
  for activation, style in (("relu", "-"), ("tanh", "--")):
    run = best[activation]
    axes.plot(range(1, len(run.errors) + 1), run.errors, style, color="black",
              label=f"{activation} (learning rate {run.learning_rate:g})")
  axes.axhline(target, color="grey", linewidth=0.8, linestyle=":")
  axes.set_xlabel("Epochs")
  axes.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
  axes.set_ylabel("Training error rate")
  axes.set_ylim(0, 1)
  axes.set_title("Figure 1: ReLU vs tanh", fontsize=11)
  axes.legend()
  figure.text(0.01, 0.005, "\n".join(textwrap.wrap(source, 130)), fontsize=6, color="grey")
  figure.tight_layout(rect=(0, 0.04, 1, 1))
  try:
    experiments.save_figure(figure, path)
  finally:
    plt.close(figure)


def report(results: dict) -> str:
  lines = [f"Figure 1 (section 3.1) on {results['data']}.",
           f"Training error per epoch (batch {results['batch_size']}, no regularisation), best "
           "learning rate of the sweep for each unit:"]
  for activation in ACTIVATIONS:
    b = results["best"][activation]
    lines.append(f"  {activation:<4} lr {b['learning_rate']:<6g} "
                 + " ".join(f"{e:.3f}" for e in b["errors"]))
  target = results["target_error"]
  for activation in ACTIVATIONS:
    n = results["best"][activation]["epochs_to_target"]
    lines.append(f"{activation} reaches {target:.0%} training error after "
                 + (f"{n} epoch(s)." if n else f"more than {results['epochs']} epochs (not "
                    "reached)."))
  if results["ratio_tanh_over_relu"] is not None:
    lines.append(f"Ratio tanh / ReLU: {results['ratio_tanh_over_relu']:.2f} (the paper: about "
                 f"{results['paper_ratio']:g} on CIFAR-10).")
  else:
    lines.append("Ratio tanh / ReLU: undefined (a net did not reach the target; raise "
                 "--epochs).")
  for activation, edge in results["best_rate_at_sweep_edge"].items():
    if edge:
      lines.append(f"Note: {activation}'s best rate is at the edge of the sweep; a rate beyond "
                   "it might be faster still (widen --learning_rates).")
  lines.append(f"Wrote {results['json']}" + (f" and {results['png']}." if "png" in results
                                               else "."))
  return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Command.

FLAGS = flags.FLAGS


def define_flags(flag_values=flags.FLAGS):
  """The command's flags, on flag_values (tests pass their own FlagValues)."""
  f = flag_values
  flags.DEFINE_string("image_dir", None, "Class folders: IMAGE_DIR/<class>/<image>. Default "
                      "(with --data_dir unset): the demo dataset.", flag_values=f)
  flags.DEFINE_string("data_dir", None, "TFRecord shards (python -m tfrecords.build).",
                      flag_values=f)
  flags.DEFINE_string("output_dir", Figure1Config.output_dir, "Where figure1.json/.png go.",
                      flag_values=f)
  flags.DEFINE_integer("epochs", EPOCHS, "Epochs per run.", flag_values=f)
  flags.DEFINE_list("learning_rates", [str(r) for r in LEARNING_RATES],
                    "The sweep; each unit keeps its fastest rate.", flag_values=f)
  flags.DEFINE_integer("batch_size", BATCH_SIZE, "Mini-batch size.", flag_values=f)
  flags.DEFINE_float("target_error", TARGET_ERROR, "Figure 1's 25% training error.",
                     flag_values=f)
  flags.DEFINE_integer("max_examples", MAX_EXAMPLES, "At most this many training images.",
                       flag_values=f)
  flags.DEFINE_integer("seed", 0, "Initial weights and data order.", flag_values=f)
  flags.DEFINE_bool("plot", True, "Write figure1.png (needs matplotlib).", flag_values=f)


def config_from_flags(f) -> Figure1Config:
  try:
    rates = tuple(float(r) for r in f.learning_rates)
  except ValueError:
    raise ValueError("--learning_rates must be a comma-separated list of numbers; received "
                     f"{','.join(f.learning_rates)!r}.") from None
  return Figure1Config(image_dir=f.image_dir, data_dir=f.data_dir, output_dir=f.output_dir,
                       epochs=f.epochs, learning_rates=rates, batch_size=f.batch_size,
                       target_error=f.target_error, max_examples=f.max_examples, seed=f.seed,
                       plot=f.plot)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}; every setting is a --flag.")
  try:
    config = config_from_flags(FLAGS)
    check_config(config)
    print(report(run_experiment(config)))
  except (ValueError, FileNotFoundError) as e:
    raise SystemExit(f"error: {e}") from None


def run():
  """The command (`python -m keras_alexnet.experiments.relu_vs_tanh`, or its console script)."""
  from keras_alexnet import cli  # pylint: disable=g-import-not-at-top
  cli.run(main, define_flags)


if __name__ == "__main__":
  run()
