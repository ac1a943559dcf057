"""The comparators of the input pipeline's benchmark: a PyTorch-style loader without PyTorch,
and PyTorch's own DataLoader where torch is installed.

What a torchvision ImageFolder + DataLoader does per batch, in worker processes: open each
image file, decode it with PIL (`Image.open(path).convert("RGB")`, torchvision's default
loader), make it a uint8 array, stack the batch, and hand it to the main process through
shared memory (as PyTorch does: the batch is written once, into shared memory, and the main
process reads it in place). One worker process per core, two batches in flight per worker
(DataLoader's default prefetch_factor).

PilLoader does that with numpy and PIL only, so its worker processes stay small and the
benchmark runs without torch. `dataloader_pass` is the real thing, torch.utils.data.DataLoader
over the same files; torch is not a dependency (a test extra), imported only there.
"""

import importlib.util
import multiprocessing
from multiprocessing import shared_memory
import os
import resource
import time
from typing import Sequence

import numpy as np
from PIL import Image

# A pass that does not finish in this long has a stuck worker: fail rather than hang.
TIMEOUT_SECONDS = 600


_slots = {}   # in a worker: shared-memory name -> (SharedMemory, array view)


def _slot(name: str, shape):
  if name not in _slots:
    memory = shared_memory.SharedMemory(name=name)
    _slots[name] = (memory, np.ndarray(shape, np.uint8, buffer=memory.buf))
  return _slots[name][1]


def load_batch(task):
  """Decodes the files of `task` (slot name, batch shape, paths) into that shared-memory
  slot, as a DataLoader worker collates into shared memory; returns (slot name, CPU seconds
  this worker spent)."""
  name, shape, paths = task
  start = time.process_time()
  batch = _slot(name, shape)
  for i, path in enumerate(paths):
    with open(path, "rb") as f:
      image = Image.open(f)
      batch[i] = np.asarray(image.convert("RGB"))
  return name, time.process_time() - start


class PilLoader:
  """A pool of `workers` processes that loads batches of image files with PIL into shared
  memory (two batches in flight per worker, as DataLoader's default prefetch_factor=2).

  Use as a context manager; `run` times one pass. Workers are forked before any batch is
  asked for and only run this module's code (numpy and PIL)."""

  def __init__(self, workers: int, batch_size: int, image_shape=(256, 256, 3)):
    if workers < 1 or batch_size < 1:
      raise ValueError(f"workers and batch_size must be >= 1; received {workers}, "
                       f"{batch_size}.")
    self.workers, self.shape = workers, (batch_size,) + tuple(image_shape)
    self._pool, self._memory = None, []

  def __enter__(self):
    size = int(np.prod(self.shape))
    self._memory = [shared_memory.SharedMemory(create=True, size=size)
                    for _ in range(2 * self.workers)]
    self._pool = multiprocessing.get_context("fork").Pool(self.workers)
    return self

  def __exit__(self, *exc):
    self._pool.terminate()
    self._pool.join()
    for memory in self._memory:
      memory.close()
      memory.unlink()

  def run(self, paths: Sequence[str]):
    """Loads every full batch of `paths` in order. Returns (wall seconds, CPU seconds of this
    process and the workers, images loaded, a copy of the last batch)."""
    batch_size = self.shape[0]
    chunks = [paths[i:i + batch_size]
              for i in range(0, len(paths) - batch_size + 1, batch_size)]
    views = {m.name: np.ndarray(self.shape, np.uint8, buffer=m.buf) for m in self._memory}
    wall, cpu = time.perf_counter(), time.process_time()
    deadline = time.monotonic() + TIMEOUT_SECONDS
    free, pending = [m.name for m in self._memory], []
    worker_cpu, images, last = 0.0, 0, None
    for chunk in chunks + [None] * len(self._memory):
      if chunk is not None:
        if not free:   # the oldest batch is consumed before its slot is reused
          name, seconds = pending.pop(0).get(timeout=max(1.0, deadline - time.monotonic()))
          worker_cpu += seconds
          images += batch_size
          last = views[name]
          free.append(name)
        name = free.pop(0)
        pending.append(self._pool.apply_async(load_batch, ((name, self.shape, chunk),)))
      elif pending:
        name, seconds = pending.pop(0).get(timeout=max(1.0, deadline - time.monotonic()))
        worker_cpu += seconds
        images += batch_size
        last = views[name]
    last = None if last is None else last.copy()
    return (time.perf_counter() - wall, time.process_time() - cpu + worker_cpu, images, last)


class _ImageFiles:
  """A map-style dataset for DataLoader (it needs only __len__ and __getitem__): what
  torchvision's ImageFolder + PILToTensor do, the image kept height x width x 3 as this
  project's batches are. Its label is the file's index, so that a test can check the batch."""

  def __init__(self, paths: Sequence[str]):
    self.paths = list(paths)

  def __len__(self):
    return len(self.paths)

  def __getitem__(self, index):
    import torch  # pylint: disable=g-import-not-at-top
    with open(self.paths[index], "rb") as f:
      image = Image.open(f).convert("RGB")
    return torch.from_numpy(np.array(image)), index


def _cpu_seconds_with_children() -> float:
  own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
      resource.RUSAGE_CHILDREN)
  return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def torch_available() -> bool:
  return importlib.util.find_spec("torch") is not None


def dataloader_pass(paths: Sequence[str], workers: int, batch_size: int):
  """One epoch of torch.utils.data.DataLoader(shuffle=True, num_workers=workers, default
  collate) over the files. Returns (wall seconds, CPU seconds of this process and the
  workers, images loaded, the last batch as uint8 [B, H, W, 3], its files' indices).

  Workers are started for the epoch and joined at its end (persistent_workers=False, the
  default), so their CPU time, start-up included as a user pays it each epoch, is in this
  process's RUSAGE_CHILDREN when the pass returns."""
  import torch  # pylint: disable=g-import-not-at-top
  loader = torch.utils.data.DataLoader(_ImageFiles(paths), batch_size=batch_size, shuffle=True,
                                       num_workers=workers, drop_last=True,
                                       timeout=TIMEOUT_SECONDS)
  wall, cpu = time.perf_counter(), _cpu_seconds_with_children()
  images, last = 0, (None, None)
  for batch, indices in loader:
    images += len(batch)
    last = batch, indices
  wall = time.perf_counter() - wall
  batch, indices = last
  return (wall, _cpu_seconds_with_children() - cpu, images,
          None if batch is None else batch.numpy(), None if indices is None else indices.numpy())


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
