"""What every benchmark shares: the row of the one table, the median timer, the table printer and
the machine's description. keras_alexnet.benchmark and keras_alexnet.pipeline_benchmark (and
tfrecords.benchmark) import it; it imports neither, so they do not import each other.
"""

import dataclasses
import os
import platform
import statistics
import time
from typing import Callable, Optional, Sequence

import keras
import tensorflow as tf


@dataclasses.dataclass
class Row:
  name: str
  images_per_second: float
  bound_name: str = ""
  ratio: Optional[float] = None
  detail: str = ""


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
  """Median wall time of fn() over `repeats` calls after `warmup` untimed ones.

  fn must block until its work is done (e.g. return a numpy value).
  """
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def print_table(rows: Sequence[Row], machine: str) -> None:
  print(f"\nkeras_alexnet benchmark on {machine}")
  header = f"{'part':<44} {'img/s':>9}  {'ratio':>6}  bound / detail"
  print(header)
  print("-" * len(header))
  for row in rows:
    ratio = f"{row.ratio:6.2f}" if row.ratio is not None else "     -"
    print(f"{row.name:<44} {row.images_per_second:9.1f}  {ratio}  "
          f"{row.bound_name} {row.detail}".rstrip())


def machine_description() -> str:
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  gpus = tf.config.list_physical_devices("GPU")
  return (f"{cpu}, {os.cpu_count()} cores, {len(gpus)} GPU(s), TF {tf.__version__}, "
          f"Keras {keras.__version__}")
