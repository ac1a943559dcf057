"""ILSVRC-2012 label facts shipped with the package (plain text, one item per line).

- ilsvrc2012_classes.txt: the 1000 wnids, sorted, each with its WordNet lemmas
  ("n01440764<TAB>tench, Tinca tinca"). The line number (0-based) is the label: the convention
  of Caffe, TFDS, Keras and torchvision.
- ilsvrc2012_validation_labels.txt: the ground-truth wnid of ILSVRC2012_val_00000001.JPEG ..
  ILSVRC2012_val_00050000.JPEG, in that order.

Where each list came from is recorded in BUILD_NOTES.md ("Dataset builder").
"""

import functools
import importlib.resources

NUM_CLASSES = 1000
NUM_VALIDATION_IMAGES = 50_000
CLASSES_FILE = "ilsvrc2012_classes.txt"
VALIDATION_LABELS_FILE = "ilsvrc2012_validation_labels.txt"


def _lines(name: str) -> list[str]:
  text = importlib.resources.files(__name__).joinpath(name).read_text(encoding="utf-8")
  return text.splitlines()


@functools.cache
def ilsvrc2012_classes() -> tuple[tuple[str, str], ...]:
  """The 1000 (wnid, WordNet name) pairs in label order (sorted wnids)."""
  classes = tuple(tuple(line.split("\t", 1)) for line in _lines(CLASSES_FILE))
  assert len(classes) == NUM_CLASSES, f"{CLASSES_FILE}: {len(classes)} lines"
  return classes


@functools.cache
def ilsvrc2012_validation_wnids() -> tuple[str, ...]:
  """The wnid of ILSVRC2012_val_{i+1:08d}.JPEG at index i."""
  wnids = tuple(_lines(VALIDATION_LABELS_FILE))
  assert len(wnids) == NUM_VALIDATION_IMAGES, f"{VALIDATION_LABELS_FILE}: {len(wnids)} lines"
  return wnids
