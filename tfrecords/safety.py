"""What the builder may delete, how it notices a dead worker, and how it reports a full disk.

The rule (issue 17): nothing of the user's is ever deleted. A build lists every file it wrote,
with its size, in dataset_info.json ("files"); --overwrite removes exactly the listed names
that are still regular files (never a folder, never a link, never an unlisted name) and says
which. An unfinished build is known by its state folder (.build/): a shard is the builder's
when .build/<shard>.npz exists, because the builder writes that file just before it renames
the shard into place. Temporary files live in .build/ and carry the host and pid that made
them, so only those of a process that is gone are cleaned.
"""

import errno
import os
import re
import shutil
import socket
import stat
import sys
from concurrent import futures
from typing import Callable, Iterable, Optional

from absl import logging

from keras_alexnet import workdir_lock

from .sources import InputError

# .build/.tmp-train-00003-of-01024.HOST-PID: a shard being written by process PID on HOST.
_TEMP_RE = re.compile(r"\.tmp-(?P<shard>(?:train|validation)-\d{5}-of-\d{5})"
                      r"\.(?P<host>[^/]+)-(?P<pid>\d+)")
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class BuildError(RuntimeError):
  """The build could not finish (a worker died, the disk is full); the message says why and
  what is kept. Rerunning the same command resumes."""


def temp_name(shard: str) -> str:
  return f".tmp-{shard}.{socket.gethostname()}-{os.getpid()}"


def stale_temps(state_dir: str) -> list[str]:
  """Names in state_dir that are shard temporaries of dead processes of this host."""
  if not os.path.isdir(state_dir):
    return []
  host = socket.gethostname()
  found = []
  for name in sorted(os.listdir(state_dir)):
    match = _TEMP_RE.fullmatch(name)
    if (match and match["host"] == host and not workdir_lock.pid_alive(int(match["pid"]))
        and is_regular(os.path.join(state_dir, name))):
      found.append(name)
  return found


def is_regular(path: str) -> bool:
  """A regular file, not a link to one (a link's target may be anything of the user's)."""
  try:
    return stat.S_ISREG(os.lstat(path).st_mode)
  except FileNotFoundError:
    return False


def remove_files(folder: str, names: Iterable[str], why: str) -> list[str]:
  """Removes folder/name for each listed name that is a regular file; returns those removed.

  Folders, links and absent names are left alone (and a folder or link is reported)."""
  removed = []
  for name in names:
    path = os.path.join(folder, name)
    if is_regular(path):
      os.remove(path)
      removed.append(name)
    elif os.path.lexists(path):
      logging.warning("Not removing %s (%s): it is not a regular file the builder wrote.",
                      path, why)
  if removed:
    shown = ", ".join(removed[:20]) + (f" and {len(removed) - 20} more" if len(removed) > 20
                                       else "")
    logging.warning("%s: removed %d file(s) from %s: %s.", why, len(removed), folder, shown)
    print(f"{why}: removed {len(removed)} file(s) from {folder}: {shown}", file=sys.stderr)
  return removed


def remove_dir_if_empty(path: str) -> None:
  try:
    os.rmdir(path)
  except OSError:
    pass   # Absent, or it holds something the builder did not write: kept.


def check_free_names(folder: str, names: Iterable[str], ours: set) -> None:
  """Raises InputError when a name the build will write is taken by something
  that is not the builder's (a user's file or folder): it would be replaced or block the
  rename."""
  taken = [n for n in names if os.path.lexists(os.path.join(folder, n)) and n not in ours]
  if taken:
    kinds = ["folder" if os.path.isdir(os.path.join(folder, n)) else "file" for n in taken]
    raise InputError(
        f"--output_dir={folder} holds {len(taken)} name(s) the build must write but that no "
        f"build recorded writing, e.g. the {kinds[0]} {taken[0]!r}. Nothing was changed and "
        "--overwrite does not delete them (it removes only files listed in a build's "
        "dataset_info.json). Move them away or choose another --output_dir.")


def free_space_message(path: str, error: OSError) -> str:
  folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
  try:
    usage = shutil.disk_usage(folder)
    free = f"{usage.free:,} bytes free of {usage.total:,}"
  except OSError:
    free = "free space unknown"
  return (f"the disk holding {folder} is full ({os.strerror(error.errno)}; {free}) while "
          f"writing {error.filename or path}. The shards completed so far are kept; free some "
          "space (or choose another --output_dir) and rerun the same command to resume.")


def is_disk_full(error: BaseException) -> bool:
  return isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS


class _MainHidden:
  """Hides the main module's origin while worker processes start (see build._pool): a script
  calling build() without an `if __name__ == "__main__":` guard would otherwise start builds
  in its workers."""

  def __enter__(self):
    main = sys.modules["__main__"]
    self.origin = {k: main.__dict__.get(k) for k in ("__file__", "__spec__")
                   if k in main.__dict__}
    main.__dict__.update(__file__=None, __spec__=None)

  def __exit__(self, *exc):
    main = sys.modules["__main__"]
    main.__dict__.update(self.origin)
    if "__file__" not in self.origin:
      del main.__file__


class WorkerPool:
  """A process pool that fails, instead of waiting forever, when a worker dies.

  multiprocessing.Pool replaces a worker killed by a signal (the OOM killer, kill -9) with a
  new one, but the task it held is lost and its result never comes: the build waited at 0% CPU
  for ever. concurrent.futures.ProcessPoolExecutor marks itself broken instead and fails every
  pending future with BrokenProcessPool, which this turns into a BuildError naming the
  process and how it ended.
  """

  def __init__(self, workers: int, context, initializer, initargs):
    self.executor = futures.ProcessPoolExecutor(workers, mp_context=context,
                                                initializer=initializer, initargs=initargs)
    self._exitcodes = {}

  def _watch(self):
    # The executor's own table of its processes (pid -> Process); read only, for the message.
    for pid, process in dict(getattr(self.executor, "_processes", None) or {}).items():
      self._exitcodes[pid] = process

  def _died(self, error: BaseException) -> BuildError:
    dead = []
    for pid, process in self._exitcodes.items():
      code = process.exitcode
      if code is not None and code != 0:
        how = (f"killed by signal {-code}" + (" (SIGKILL: the out-of-memory killer, or "
                                               "kill -9)" if code == -9 else "")
               if code < 0 else f"exit status {code}")
        dead.append(f"worker process {pid} ({how})")
    who = ", ".join(dead) or "a worker process"
    return BuildError(f"{who} died while building ({type(error).__name__}: {error}). The "
                      "shards completed so far are kept; rerun the same command to resume "
                      "(if memory ran out, use fewer --num_workers or a lower "
                      "--max_image_pixels).")

  def map_unordered(self, fn: Callable, items: list, on_wait: Optional[Callable] = None):
    """Yields fn(item) as they finish; on_wait() every 0.5 s while waiting."""
    with _MainHidden():
      pending = {self.executor.submit(fn, item) for item in items}
    self._watch()
    try:
      while pending:
        done, pending = futures.wait(pending, timeout=0.5,
                                     return_when=futures.FIRST_COMPLETED)
        self._watch()
        for future in done:
          yield future.result()
        if on_wait is not None:
          on_wait()
    except futures.process.BrokenProcessPool as e:
      raise self._died(e) from e
    finally:
      for future in pending:
        future.cancel()

  def map(self, fn: Callable, items: Iterable, chunksize: int = 1):
    """In order, as Executor.map, with a dead worker turned into a BuildError."""
    with _MainHidden():
      results = self.executor.map(fn, items, chunksize=chunksize)
    self._watch()
    try:
      for result in results:
        yield result
    except futures.process.BrokenProcessPool as e:
      raise self._died(e) from e

  def shutdown(self) -> None:
    # Workers of a failed build are stopped, not waited for: one may hang in a decoder.
    processes = list(dict(getattr(self.executor, "_processes", None) or {}).values())
    self.executor.shutdown(wait=False, cancel_futures=True)
    for process in processes:
      if process.is_alive():
        process.terminate()
    for process in processes:
      process.join(timeout=10)
      if process.is_alive():
        process.kill()
