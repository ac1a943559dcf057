"""One trainer per workdir: a lock file holding the holder's host and pid.

Two trainers on one workdir would interleave their checkpoints and leave one run's config.json
beside the other's weights. The lock is WORKDIR/train.lock, created with O_CREAT | O_EXCL (one
creator wins, also on NFS v3+), holding {"host", "pid", "started"}. A lock whose holder is a
process of this host that no longer exists (killed with SIGKILL, the machine's OOM killer) is
stale: it is taken over with a warning. A lock held by another host cannot be checked from
here; it is reported with its holder and left for the user to remove.
"""

import fcntl
import json
import os
import socket
import time
from typing import Optional

from absl import logging

LOCK_FILE = "train.lock"
_GUARD_FILE = ".train.lock.guard"


class WorkdirLocked(RuntimeError):
  """Another live process holds the workdir; the message names it."""


def pid_alive(pid: int) -> bool:
  """Whether process `pid` of this host lives (the one check behind every stale-file rule:
  the lock here, the export's and the builder's temporaries)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:   # someone else's live process
    return True
  return True


def read_holder(path: str) -> Optional[dict]:
  """The lock's content, or None when it is unreadable (being written, or damaged)."""
  try:
    with open(path) as f:
      holder = json.load(f)
  except (OSError, ValueError):
    return None
  return holder if isinstance(holder, dict) else None


def _create(path: str) -> bool:
  try:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  except FileExistsError:
    return False
  with os.fdopen(fd, "w") as f:
    json.dump({"host": socket.gethostname(), "pid": os.getpid(),
               "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, f)
    f.flush()
    os.fsync(f.fileno())
  return True


class WorkdirLock:
  """with WorkdirLock(workdir): ... -- raises WorkdirLocked at once if another trainer has it."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_FILE)
    self.held = False
    self.made_workdir = False

  def acquire(self) -> None:
    # A run refused by a later check (bad flags found while building the model) leaves no
    # workdir behind: the one made here goes again on release if nothing else was put in it.
    self.made_workdir = not os.path.exists(self.workdir)
    os.makedirs(self.workdir, exist_ok=True)
    for _ in range(3):
      if _create(self.path):
        self.held = True
        return
      holder = read_holder(self.path)
      if holder is None:
        # Being written by its creator this instant, or damaged: look again shortly.
        time.sleep(0.2)
        holder = read_holder(self.path)
      if holder is None:
        raise WorkdirLocked(
            f"{self.path} exists but is not a readable lock (expected JSON with host and "
            "pid); if no trainer is running on this workdir, remove it and start again.")
      here = holder.get("host") == socket.gethostname()
      pid = holder.get("pid")
      if here and isinstance(pid, int) and pid == os.getpid():
        self.held = True   # Ours already (a second train_and_evaluate in this process).
        return
      if not here or not isinstance(pid, int) or pid_alive(pid):
        raise WorkdirLocked(
            f"{self.workdir} is in use by another trainer: {self.path} is held by pid {pid} on "
            f"host {holder.get('host')!r} since {holder.get('started')}. Wait for it to end, "
            "or use another --workdir"
            + ("" if here else "; if that process is gone, remove the lock file") + ".")
      self._take_over_stale(holder)
    raise WorkdirLocked(f"could not take {self.path}: other processes keep taking it.")

  def _take_over_stale(self, stale: dict) -> None:
    """Removes a dead process's lock, under a guard so two takers cannot remove a live one."""
    with open(os.path.join(self.workdir, _GUARD_FILE), "a") as guard:
      fcntl.flock(guard, fcntl.LOCK_EX)
      try:
        if read_holder(self.path) == stale:
          logging.warning("Taking over %s: its holder, pid %s on this host (since %s), is no "
                          "longer running (killed?).", self.path, stale.get("pid"),
                          stale.get("started"))
          os.remove(self.path)
      finally:
        fcntl.flock(guard, fcntl.LOCK_UN)

  def release(self) -> None:
    if not self.held:
      return
    holder = read_holder(self.path)
    if holder and holder.get("pid") == os.getpid() and holder.get(
        "host") == socket.gethostname():
      os.remove(self.path)
    self.held = False
    if self.made_workdir:
      try:
        os.rmdir(self.workdir)   # only if empty: never anything a run or a user wrote
      except OSError:
        pass

  def __enter__(self):
    self.acquire()
    return self

  def __exit__(self, *exc):
    self.release()
