"""The name `tfrecords` for the installed builder, where nothing else owns it.

setup.py installs this file as the top-level module _keras_alexnet_tfrecords, imported at
start-up by a .pth line. It appends a finder to the END of sys.meta_path, so it is asked only
after every other finder has failed to find `tfrecords`: PyPI's unrelated `tfrecords`
distribution, if installed, keeps its name, and the builder stays reachable as
keras_alexnet.tfrecords. The finder answers for the top-level name alone; `tfrecords.build`
and the other modules are then found through the package's __path__, and they import one
another relatively, so each name gives one consistent tree. It imports nothing else at
start-up (the builder's own import, and TensorFlow's, happen only when `tfrecords` is used).
"""

import importlib.abc
import importlib.util
import os
import sys

_BUILDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "keras_alexnet", "tfrecords")


class _Finder(importlib.abc.MetaPathFinder):

  def find_spec(self, name, path=None, target=None):
    if name != "tfrecords" or not os.path.isfile(os.path.join(_BUILDER, "__init__.py")):
      return None
    return importlib.util.spec_from_file_location(
        name, os.path.join(_BUILDER, "__init__.py"), submodule_search_locations=[_BUILDER])


if not any(isinstance(f, _Finder) for f in sys.meta_path):
  sys.meta_path.append(_Finder())
