"""The paper's experiments as switches (sections 3, 4 and 7).

The model and training switches live where they act: `keras_alexnet.model.ModelConfig`
(activation, lrn, pooling, dropout, remove) and `keras_alexnet.preprocessing.AugmentConfig`
(random_crop, mirror, pca_lighting), reached from the command line through the training flags.
flags/ablations/*.cfg holds one flagfile per ablation. This package adds the commands that run
the comparisons:

  python -m keras_alexnet.experiments.relu_vs_tanh   # Figure 1: ReLU vs tanh to 25% error
  python -m keras_alexnet.experiments.compare --flagfiles=A.cfg,B.cfg --data_dir=... \
      --output_dir=...                               # two or more runs, one table and plot

and `variant_costs()`: each model ablation's parameter count and forward FLOPs per image, the
price of depth that section 7 trades against accuracy.
"""

import dataclasses
import resource
import sys
from typing import List, NamedTuple, Optional, Sequence

from keras_alexnet import files
from keras_alexnet import model as model_lib

MATPLOTLIB_HINT = ("matplotlib is needed for the PNG: pip install matplotlib (or "
                   "pip install 'keras_alexnet[plot]'), or pass --noplot.")

# name -> (ModelConfig overrides, what the paper reports for it). The flagfiles in
# flags/ablations/ make the same changes from the command line.
MODEL_ABLATIONS = {
    "paper": ({}, "Section 7: 40.7% top-1 / 18.2% top-5 error (1 CNN, ILSVRC-2012 val)"),
    "tanh": ({"activation": "tanh"}, "Section 3.1, Figure 1: ReLUs reach 25% training error "
             "six times faster (CIFAR-10, 4-layer net)"),
    "no_lrn": ({"lrn": False}, "Section 3.3: LRN lowers top-1/top-5 error by 1.4%/1.2%"),
    "non_overlapping_pool": ({"pooling": "non_overlapping"},
                             "Section 3.4: overlapping pooling lowers them by 0.4%/0.3%"),
    "no_dropout": ({"dropout": 0.0}, "Section 4.2: without dropout, substantial overfitting"),
    "remove_conv3": ({"remove": ("conv3",)}, "Section 7: removing any middle conv layer "
                     "costs about 2% top-1"),
    "remove_conv4": ({"remove": ("conv4",)}, "Section 7: about 2% top-1"),
    "remove_conv5": ({"remove": ("conv5",)}, "Section 7: about 2% top-1"),
}


class VariantCost(NamedTuple):
  variant: str
  params: int
  flops_per_image: int   # Forward pass, 2 FLOPs per multiply-add (model.flops_per_image).


def variant_costs(names: Optional[Sequence[str]] = None,
                  num_classes: int = model_lib.NUM_CLASSES) -> List[VariantCost]:
  """(variant, parameters, forward FLOPs per image) for each model ablation in `names`
  (default: all of MODEL_ABLATIONS, the paper net first).

  Builds each network once (a second or two for the full net, no training). Note that removing
  conv5 *adds* parameters: pool5 then sees conv4's 384 maps, so fc6 grows from 6x6x256 to
  6x6x384 inputs.
  """
  import keras   # pylint: disable=g-import-not-at-top

  names = list(MODEL_ABLATIONS) if names is None else list(names)
  unknown = [n for n in names if n not in MODEL_ABLATIONS]
  if unknown:
    raise ValueError(f"Unknown variant(s) {unknown}; allowed: {sorted(MODEL_ABLATIONS)}.")
  rows = []
  for name in names:
    overrides, _ = MODEL_ABLATIONS[name]
    config = dataclasses.replace(model_lib.ModelConfig(num_classes=num_classes), **overrides)
    net = model_lib.alexnet(config)
    rows.append(VariantCost(name, int(net.count_params()), model_lib.flops_per_image(net)))
    del net
    keras.backend.clear_session()
  return rows


def peak_host_memory_bytes() -> int:
  """The process's peak resident set size so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return int(peak if sys.platform == "darwin" else peak * 1024)


def format_costs(rows: Sequence[VariantCost]) -> str:
  """A plain-text table of variant_costs() rows, with each row's change against the first."""
  base = rows[0] if rows else None
  lines = [f"{'variant':<22} {'parameters':>12} {'vs first':>9} {'GFLOP/image':>12} "
           f"{'vs first':>9}"]
  for row in rows:
    lines.append(f"{row.variant:<22} {row.params:>12,} {row.params / base.params - 1:>+9.1%} "
                 f"{row.flops_per_image / 1e9:>12.3f} "
                 f"{row.flops_per_image / base.flops_per_image - 1:>+9.1%}")
  return "\n".join(lines)


def require_matplotlib():
  """pyplot on the file-only Agg backend; a ValueError saying how to get it if missing.

  matplotlib is an optional dependency (the "plot" extra): commands call this before any
  training, so a missing plotting library never costs a finished run its figure.
  """
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ValueError(MATPLOTLIB_HINT) from None
  matplotlib.use("Agg")
  from matplotlib import pyplot  # pylint: disable=g-import-not-at-top
  return pyplot


def save_figure(figure, path: str) -> None:
  """figure.savefig as PNG into a temporary file beside `path`, renamed over it when whole."""
  files.write_atomic(path, lambda f: figure.savefig(f, format="png", dpi=120))
