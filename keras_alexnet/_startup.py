"""TensorFlow's start-up lines, filtered as TF_CPP_MIN_LOG_LEVEL=2 would filter them.

TF 2.21 logs through absl's C++ logging, which writes everything to stderr until
absl::InitializeLog() runs, and TF never calls it; so TF_CPP_MIN_LOG_LEVEL no longer hides the
lines that `import tensorflow` and the first device query print (oneDNN, CPU features, CUDA
probing; measured here: 7 lines, the same with the variable at 0, 1, 2 or 3). They are caught
on file descriptor 2 while that happens and written back unless they are what level 2 hides
(INFO and WARNING lines); a user who set TF_CPP_MIN_LOG_LEVEL gets TF's own behaviour.
"""

import contextlib
import os
import re
import sys
import tempfile

_HIDDEN = re.compile(
    r"^([IW]\d{4} [\d:.]+ +\d+ \S+\] |"      # absl INFO/WARNING lines
    r"WARNING: All log messages before absl::InitializeLog\(\) is called|"
    r"To enable the following instructions: .* rebuild TensorFlow)")   # cpu_feature_guard's 2nd line
_NO_GPU = re.compile(r"^E\d{4} .*\] failed call to cuInit")


@contextlib.contextmanager
def _stderr_filtered(no_gpu):
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
        if not _HIDDEN.match(line) and not (no_gpu() and _NO_GPU.match(line)):
          sys.stderr.write(line)
      sys.stderr.flush()


def import_tensorflow_quietly() -> None:
  """Imports TF and lists its devices (what prints the lines), quietly unless the user chose a
  TF_CPP_MIN_LOG_LEVEL; sets the variable to 2 for what TF logs later."""
  if "TF_CPP_MIN_LOG_LEVEL" in os.environ or "tensorflow" in sys.modules:
    return
  os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
  gpus = []
  # A CUDA build on a machine without a GPU reports that once as an error; that it has no GPU
  # is all it says, and the strategy choice logs the devices it found.
  with _stderr_filtered(lambda: not gpus):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    gpus = tf.config.list_physical_devices("GPU")
