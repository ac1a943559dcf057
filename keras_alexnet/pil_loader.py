"""The comparator of the input pipeline's benchmark: a PyTorch-style loader without PyTorch.

What a torchvision ImageFolder + DataLoader does per batch, in worker processes: open each
image file, decode it with PIL (`Image.open(path).convert("RGB")`, torchvision's default
loader), make it a uint8 array, stack the batch, and hand it to the main process (here
pickled through a multiprocessing pipe; PyTorch moves it through shared memory). One worker
process per core, as many batches in flight as workers.

This module imports only numpy and PIL, so the worker processes stay small.
"""

import multiprocessing
import os
import time
from typing import Sequence

import numpy as np
from PIL import Image

# A pass that does not finish in this long has a stuck worker: fail rather than hang.
TIMEOUT_SECONDS = 600


def load_batch(paths: Sequence[str]):
  """(uint8 [B, H, W, 3] of the decoded files, CPU seconds this worker spent)."""
  start = time.process_time()
  images = []
  for path in paths:
    with open(path, "rb") as f:
      image = Image.open(f)
      images.append(np.asarray(image.convert("RGB")))
  batch = np.stack(images)
  return batch, time.process_time() - start


class PilLoader:
  """A pool of `workers` processes that loads batches of image files with PIL.

  Use as a context manager; `run` times one pass. Workers are forked before any batch is
  asked for and only run this module's code (numpy and PIL)."""

  def __init__(self, workers: int):
    if workers < 1:
      raise ValueError(f"workers must be >= 1; received {workers}.")
    self.workers = workers
    self._pool = None

  def __enter__(self):
    self._pool = multiprocessing.get_context("fork").Pool(self.workers)
    return self

  def __exit__(self, *exc):
    self._pool.terminate()
    self._pool.join()

  def run(self, paths: Sequence[str], batch_size: int):
    """Loads every full batch of `paths` in order. Returns (wall seconds, CPU seconds of this
    process and the workers, images loaded, the last batch)."""
    chunks = [paths[i:i + batch_size]
              for i in range(0, len(paths) - batch_size + 1, batch_size)]
    wall, cpu = time.perf_counter(), time.process_time()
    worker_cpu, images, batch = 0.0, 0, None
    results = self._pool.imap(load_batch, chunks)
    deadline = time.monotonic() + TIMEOUT_SECONDS
    for _ in chunks:
      batch, seconds = results.next(timeout=max(1.0, deadline - time.monotonic()))
      worker_cpu += seconds
      images += len(batch)
    return (time.perf_counter() - wall, time.process_time() - cpu + worker_cpu, images, batch)


def write_files(encoded_images: Sequence[bytes], folder: str) -> list:
  """Each encoded image as its own file, as an image-folder loader reads them."""
  os.makedirs(folder, exist_ok=True)
  paths = []
  for i, data in enumerate(encoded_images):
    path = os.path.join(folder, f"{i:07d}.jpg")
    with open(path, "wb") as f:
      f.write(data)
    paths.append(path)
  return paths
