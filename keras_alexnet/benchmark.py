"""How fast each part runs, against the bound of the machine it runs on.

  python -m keras_alexnet.benchmark [--batch_size=64] [--steps=5] [--parts=train,pipeline,...]

One table. Each row gives images/s and its ratio to a bound measured in the same process:
- compute (training step, SavedModel): achieved GFLOP/s over the float32 matmul rate of the
  same device (2 FLOPs per multiply-add; training = 3x the forward pass). The training step
  with keras_alexnet.cpu_kernels' speed-ups on and off (the plain TF path), in adjacent rows;
- input (CPU pipeline): images/s over a bare tf.io.decode_jpeg loop on the same records, over
  a PIL loader in one process per core (the PyTorch-style comparator, keras_alexnet.pil_loader),
  over PyTorch's own DataLoader where torch is installed, and the decode-free raw shards of
  the same images over the JPEG path, per core too; with the targets (JPEG >= 0.9 of the
  bare loop and >= 1.5x PIL, raw >= 5x JPEG) met or not;
- augmentation: XLA-compiled vs not, and the batched crop vs a per-image map_fn.
Then peak host memory, and parameters and FLOPs per image for each model variant.
Figures are medians over timed repetitions after warm-up.
"""

import dataclasses
import statistics
from typing import Callable, List, Optional

from absl import app
from absl import flags
import keras
import tensorflow as tf

from keras_alexnet import bench
from keras_alexnet import cpu_kernels
from keras_alexnet import model as model_lib

MATMUL_SIZE = 2048  # Large enough for the BLAS kernel to run at its peak on a CPU core.
TRAIN_FLOPS_FACTOR = 3  # Backward costs about twice the forward (input and weight grads).


def matmul_gflops(device: Optional[str] = None, size: int = MATMUL_SIZE,
                  repeats: int = 5) -> float:
  """The float32 matmul rate (GFLOP/s) on `device`: the compute bound."""
  with tf.device(device):
    a = tf.random.normal((size, size))
    b = tf.random.normal((size, size))

    @tf.function
    def chain():
      # Several dependent products per call so that call overhead is negligible.
      x = a
      for _ in range(4):
        x = tf.matmul(x, b) * 1e-3
      return tf.reduce_sum(x)

    seconds = bench.median_seconds(lambda: chain().numpy(), repeats)
  return 4 * 2 * size ** 3 / seconds / 1e9


@dataclasses.dataclass
class StepRate:
  images_per_second: float   # median over the timed steps
  gflops: float              # from images_per_second and the FLOPs per training image
  ratio: float               # median of (step GFLOP/s / the bound measured just before it)
  bound_gflops: float        # median of those bounds


def train_step_rate(batch_size: int, precision: str = "float32", xla: bool = False,
                    steps: int = 5, num_classes: int = model_lib.NUM_CLASSES,
                    bound: Callable[[], float] = matmul_gflops) -> StepRate:
  """The paper net's training step as the trainer runs it (training.make_train_step: the
  augmentation on the device, forward, backward and the paper's update; XLA as --xla compiles
  it), on random uint8 256x256 batches such as the input pipeline yields, on one device.

  Each timed step follows a measurement of `bound` (the float32 matmul rate), and the ratio is
  the median of the per-pair ratios: on a shared machine the bound itself moves within a
  minute, and a ratio to one bound taken at the start then measures the neighbours.
  """
  from keras_alexnet import config as config_lib  # pylint: disable=g-import-not-at-top
  from keras_alexnet import dataset_info  # pylint: disable=g-import-not-at-top
  from keras_alexnet import decoding  # pylint: disable=g-import-not-at-top
  from keras_alexnet import preprocessing  # pylint: disable=g-import-not-at-top
  from keras_alexnet import training  # pylint: disable=g-import-not-at-top
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy("float32" if precision == "float32" else precision)
  try:
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0" if not tf.config.list_logical_devices(
        "GPU") else "/gpu:0")
    with strategy.scope():
      net = model_lib.alexnet(num_classes=num_classes)
      # The trainer's optimizer (and loss scaling under mixed_float16); a small rate keeps
      # random inputs from diverging over the timed steps.
      optimizer = training.make_optimizer(config_lib.TrainConfig(precision=precision), 1e-4)
      optimizer.build(net.trainable_variables)
    size = decoding.STORED_SIZE
    images = tf.random.uniform((batch_size, size, size, 3), 0, 256, dtype=tf.int32)
    images = tf.cast(images, tf.uint8)
    labels = tf.random.uniform((batch_size,), 0, num_classes, dtype=tf.int32)
    train_step = training.make_train_step(net, optimizer, strategy,
                                          dataset_info.imagenet_statistics(),
                                          preprocessing.AugmentConfig(), batch_size, seed=0,
                                          xla=xla)
    no_stop = tf.constant(0.0)
    count = iter(range(1 << 30))

    def step():
      out = train_step(images, labels, tf.constant(next(count), tf.int64), no_stop)
      return [x.numpy() for x in out]

    flops = TRAIN_FLOPS_FACTOR * model_lib.flops_per_image(net) * batch_size
    bounds, seconds = [], []
    for _ in range(2):   # warm-up: tracing, oneDNN's kernel selection, the slots
      step()
    for _ in range(steps):
      bounds.append(bound())
      seconds.append(bench.median_seconds(step, 1, warmup=0))
  finally:
    keras.config.set_dtype_policy(previous)
  ratios = [flops / s / 1e9 / b for s, b in zip(seconds, bounds)]
  images_per_second = batch_size / statistics.median(seconds)
  return StepRate(images_per_second, images_per_second * flops / batch_size / 1e9,
                  statistics.median(ratios), statistics.median(bounds))


def saved_model_rows(matmul: float, repeats: int) -> List[bench.Row]:
  """The paper net (random weights, 1000 classes) exported as for TF Serving, then served:
  batch-1 latency and batch-64 throughput, JPEG bytes in and preprocessed crops in."""
  import tempfile
  from keras_alexnet import dataset_info
  from keras_alexnet import export as export_lib
  from keras_alexnet import predict as predict_lib

  net = model_lib.alexnet()
  forward_flops = model_lib.flops_per_image(net)
  classes = [[f"class{i:04d}", f"class {i}"] for i in range(model_lib.NUM_CLASSES)]
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    path = export_lib.export_saved_model(net, {"classes": classes},
                                         dataset_info.imagenet_statistics(), tmp,
                                         warmup=False)
    del net
    loaded = tf.saved_model.load(path)
    figures = predict_lib.benchmark(loaded, (1, 64), repeats)
  alone = {f["batch_size"]: f for f in figures if f["signature"] == "preprocessed"}
  for f in figures:
    gflops = f["images_per_second"] * forward_flops / 1e9
    bytes_in = f["signature"] != "preprocessed"
    detail = f"{f['median_ms']:.1f} ms/batch; {gflops:.1f} GFLOP/s"
    if bytes_in:
      model_alone = alone[f["batch_size"]]["images_per_second"]
      detail += f"; {f['images_per_second'] / model_alone:.2f} x the model alone"
    rows.append(bench.Row(f"SavedModel {'JPEG bytes' if bytes_in else 'preprocessed'}, "
                    f"batch {f['batch_size']}", f["images_per_second"], "matmul",
                    gflops / matmul, detail))
  return rows


def variant_rows() -> str:
  from keras_alexnet import experiments
  peak = experiments.peak_host_memory_bytes() / 2**30
  return (f"peak host memory of this run: {peak:.2f} GiB\n\n"
          + experiments.format_costs(experiments.variant_costs()))


PARTS = ("train", "pipeline", "saved_model", "variants")
FLAGS = flags.FLAGS


def define_flags():
  """Defined only when run as the command, so importing this module (tests, other entry
  points) never clashes with another entry point's flags of the same name."""
  flags.DEFINE_integer("batch_size", 64, "Batch size of the training step.")
  flags.DEFINE_integer("steps", 5, "Timed repetitions (the median is reported).")
  flags.DEFINE_list("precisions", ["float32", "mixed_bfloat16"],
                    "Training-step precisions: float32, mixed_bfloat16, mixed_float16.")
  flags.DEFINE_list("xla", ["off", "on"], "Training step with XLA off and/or on.")
  flags.DEFINE_list("cpu_kernels", ["on", "off"], "Training step with the CPU speed-ups of "
                    "keras_alexnet.cpu_kernels on (custom gradients, XLA-fused LRN and update) "
                    "and/or off (TF's own ops and gradients); auto: as the trainer chooses.")
  flags.DEFINE_list("parts", list(PARTS), f"Which parts to measure, of {PARTS}.")
  flags.DEFINE_integer("pipeline_images", 8192, "JPEG records generated for the CPU pipeline, "
                       "in shards of 1,024 (ImageNet's hold 1,251).")
  flags.DEFINE_integer("pipeline_repeats", 5, "Alternated rounds of the CPU pipeline passes.")
  flags.DEFINE_string("data_dir", None, "Measure the CPU pipeline on these 256x256 training "
                      "shards instead of generated ones.")


def main(argv: List[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  for precision in FLAGS.precisions:
    if precision not in ("float32", "mixed_bfloat16", "mixed_float16"):
      raise app.UsageError(f"--precisions: unknown {precision!r}; allowed: float32, "
                           "mixed_bfloat16, mixed_float16.")
  for xla in FLAGS.xla:
    if xla not in ("on", "off"):
      raise app.UsageError(f"--xla takes 'on' and/or 'off'; received {xla!r}.")
  for mode in FLAGS.cpu_kernels:
    if mode not in cpu_kernels.MODES:
      raise app.UsageError(f"--cpu_kernels: unknown {mode!r}; allowed: "
                           f"{', '.join(cpu_kernels.MODES)}.")
  for part in FLAGS.parts:
    if part not in PARTS:
      raise app.UsageError(f"--parts: unknown {part!r}; allowed: {', '.join(PARTS)}.")
  if FLAGS.batch_size < 1 or FLAGS.steps < 1:
    raise app.UsageError("--batch_size and --steps must be >= 1.")
  matmul = matmul_gflops()
  rows = [bench.Row(f"float32 matmul {MATMUL_SIZE}x{MATMUL_SIZE}", float("nan"),
              detail=f"{matmul:.1f} GFLOP/s (the compute bound)")]
  if "train" in FLAGS.parts:
    for precision in FLAGS.precisions:
      for xla in FLAGS.xla:
        first = None
        for mode in FLAGS.cpu_kernels:
          with cpu_kernels.using(mode):   # read when the step is traced, inside
            r = train_step_rate(FLAGS.batch_size, precision, xla == "on", FLAGS.steps)
          first = first or r
          detail = (f"{r.gflops:.1f} GFLOP/s; ratio to the bound measured before each step "
                    f"(median {r.bound_gflops:.1f})")
          if r is not first:
            detail += (f"; {r.images_per_second / first.images_per_second:.2f} x the CPU "
                       f"kernels {FLAGS.cpu_kernels[0]} row")
          rows.append(bench.Row(f"train step {precision}, XLA {xla}, CPU kernels {mode}, "
                                f"batch {FLAGS.batch_size}", r.images_per_second, "matmul",
                                r.ratio, detail))
  if "pipeline" in FLAGS.parts:
    from keras_alexnet import pipeline_benchmark
    rows += pipeline_benchmark.rows(FLAGS.pipeline_images, data_dir=FLAGS.data_dir,
                                    repeats=FLAGS.pipeline_repeats)
  if "saved_model" in FLAGS.parts:
    rows += saved_model_rows(matmul, FLAGS.steps)
  bench.print_table(rows, bench.machine_description())
  if "variants" in FLAGS.parts:
    print()
    print(variant_rows())


def run():
  """The command (`python -m keras_alexnet.benchmark`, or its console script)."""
  from keras_alexnet import cli  # pylint: disable=g-import-not-at-top
  cli.run(main, define_flags)


if __name__ == "__main__":
  run()
