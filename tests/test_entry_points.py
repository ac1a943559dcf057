"""Every module imports together in one process: no entry point defines absl flags at import.

Entry points define their flags only when run as commands; two modules defining, say,
--num_classes at import would make any process (or pytest session) importing both fail.
"""

import pkgutil
import subprocess
import sys

import keras_alexnet
import keras_alexnet.experiments
import tfrecords


def _modules():
  names = []
  for package in (keras_alexnet, keras_alexnet.experiments, tfrecords):
    names += [f"{package.__name__}.{m.name}" for m in pkgutil.iter_modules(package.__path__)]
  return names


def test_all_modules_import_together_without_defining_flags():
  modules = _modules()
  assert {"keras_alexnet.train", "keras_alexnet.demo", "keras_alexnet.benchmark",
          "tfrecords.build"} <= set(modules)
  script = (
      "import importlib, sys\n"
      "from absl import flags\n"
      f"for name in {modules!r}:\n"
      "  importlib.import_module(name)\n"
      "ours = {m: [f.name for f in fs] for m, fs in flags.FLAGS.flags_by_module_dict().items()\n"
      "        if m.split('.')[0] in ('keras_alexnet', 'tfrecords')}\n"
      "print(ours)\n")
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip().splitlines()[-1] == "{}"
