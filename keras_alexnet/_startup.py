"""TensorFlow's start-up lines, filtered as TF_CPP_MIN_LOG_LEVEL says (2 unless the user set it).

TF 2.21 logs through absl's C++ logging, which writes everything to stderr until
absl::InitializeLog() runs, and TF never calls it; so TF_CPP_MIN_LOG_LEVEL no longer hides the
lines that `import tensorflow` and the first device query print (oneDNN, CPU features, CUDA
probing; BUILD_NOTES.md, "Packaging and first contact"). They are caught on file descriptor 2
while that happens and written back unless the level hides them: 1 hides INFO lines, 2 also
WARNING lines (the default here), 3 also errors; 0 shows everything.
"""

import contextlib
import logging
import os
import re
import sys
import tempfile

DEFAULT_LEVEL = "2"
_BANNER = "WARNING: All log messages before absl::InitializeLog() is called"
_SEVERITY = {"I": 1, "W": 2, "E": 3}      # hidden from this level on
_LINE = re.compile(r"^([IWE])\d{4} [\d:.]+ +\d+ \S+\] ")
_CONTINUED = re.compile(r"^To enable the following instructions: .* rebuild TensorFlow")
_NO_GPU = re.compile(r"\] failed call to cuInit")


def _hidden(line: str, level: int, no_gpu: bool) -> bool:
  match = _LINE.match(line)
  if match:
    # A CUDA build on a machine without a GPU reports that as an error; it says only that
    # there is no GPU, which the strategy choice logs anyway.
    if no_gpu and _NO_GPU.search(line) and level >= 2:
      return True
    return level >= _SEVERITY[match.group(1)]
  return level >= 1 and (line.startswith(_BANNER) or bool(_CONTINUED.match(line)))


@contextlib.contextmanager
def _stderr_filtered(level: int, no_gpu):
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile(mode="w+b") as caught:
    os.dup2(caught.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      caught.seek(0)
      for line in caught.read().decode(errors="replace").splitlines(keepends=True):
        if not _hidden(line, level, no_gpu()):
          sys.stderr.write(line)
      sys.stderr.flush()


def import_tensorflow_quietly() -> None:
  """Imports TF and lists its devices (what prints the lines), filtered by the log level."""
  if "tensorflow" in sys.modules:
    return
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", DEFAULT_LEVEL)
  try:
    level = int(os.environ["TF_CPP_MIN_LOG_LEVEL"])
  except ValueError:
    level = int(DEFAULT_LEVEL)
  gpus = []
  if level <= 0:
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
    return
  with _stderr_filtered(level, lambda: not gpus):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    gpus = tf.config.list_physical_devices("GPU")
  # TF's Python INFO lines likewise: through its own logger, and through absl's, which TF's
  # SavedModel code logs to ("Sharding callback duration: 10 microseconds", once per save).
  logging.getLogger("tensorflow").setLevel(logging.WARNING)
  logging.getLogger("absl").addFilter(_not_tensorflow_info)


_TF_SOURCES = (os.sep + "tensorflow" + os.sep, os.sep + "keras" + os.sep)


def _not_tensorflow_info(record: logging.LogRecord) -> bool:
  return record.levelno >= logging.WARNING or not any(
      part in record.pathname for part in _TF_SOURCES)
