"""Atomic writes: the one way this project writes a file a user keeps.

A reader never sees half a file, and a crash leaves at most a hidden `.tmp-HOST-PID-*` file
beside the target (the host and pid say whose it was), never a truncated file under the final
name. Files get the mode a plain open() would give them under the umask, not mkstemp's
owner-only mode: a server or a colleague often reads them as another user.
"""

import json
import os
import socket
import tempfile
from typing import BinaryIO, Callable

import numpy as np

TEMP_PREFIX = ".tmp-"


def umask() -> int:
  """The process's umask (os.umask can only be read by setting it)."""
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def temp_prefix() -> str:
  """'.tmp-HOST-PID-': the start of every temporary this process makes beside a target."""
  return f"{TEMP_PREFIX}{socket.gethostname()}-{os.getpid()}-"


def write_atomic(path: str, write: Callable[[BinaryIO], None]) -> None:
  """Calls write(file) on a temp file beside `path`, then renames it over `path`."""
  folder = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=temp_prefix(),
                             suffix=os.path.splitext(path)[1])
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
    os.chmod(tmp, 0o666 & ~umask())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_bytes(path: str, data: bytes) -> None:
  write_atomic(path, lambda f: f.write(data))


def write_text(path: str, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def write_json(path: str, obj) -> None:
  write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_npy(path: str, array: np.ndarray) -> None:
  write_atomic(path, lambda f: np.save(f, array))


def write_npz(path: str, arrays: dict) -> None:
  # Not compressed: zlib is slow on the builder's per-shard mean-image sums, which are temporary.
  write_atomic(path, lambda f: np.savez(f, **arrays))


def make_temp_dir(parent: str, prefix: str = "") -> str:
  """A new folder `parent/PREFIX` + 8 random characters (`.tmp-HOST-PID-` by default), with the
  mode a plain mkdir would give it (mkdtemp makes it 0700), to be renamed into place when
  complete."""
  tmp = tempfile.mkdtemp(prefix=prefix or temp_prefix(), dir=parent)
  os.chmod(tmp, 0o777 & ~umask())
  return tmp
