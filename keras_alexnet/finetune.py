"""Fine-tuning: the weights of a trained run copied into a new model layer by layer
(--init_checkpoint), the architecture kept from a converted pretrained net, and the layers
frozen before --trainable_from.

Its own module because it reads another run's workdir into the model of this one: the
workdir module only describes and loads one run, the trainer only runs the loop. Imports the
workdir module (load_model, the run metadata), errors and Keras.
"""

import dataclasses

import keras

from keras_alexnet import errors
from keras_alexnet import workdir as workdir_lib


# The fields of a converted pretrained net (keras_alexnet.convert) that fine-tuning from it keeps:
# the source's own architecture (LRN constants, padding, pooling, channel order, input scale).
SOURCE_ARCHITECTURE = ("variant", "lrn", "conv1_padding", "lrn_bias", "lrn_alpha", "lrn_towers",
                       "ceil_pooling", "bgr", "input_scale")


def init_architecture(path: str) -> dict:
  """{field: value} of SOURCE_ARCHITECTURE when `path` (as for workdir.load_model) is a
  converted pretrained net, {} for a training run (its architecture comes from the flags as
  always)."""
  metadata = workdir_lib.read_metadata(workdir_lib.resolve(path, "best")[0])
  if "converted_from" not in metadata:
    return {}
  fields = dataclasses.asdict(workdir_lib.model_config_from_json(metadata["model_config"]))
  return {name: fields[name] for name in SOURCE_ARCHITECTURE}


def _layer_weights(model: keras.Model) -> dict:
  """{layer name: its checkpointed variables} of the layers that have any, in model order."""
  found = {}
  for layer in model.layers:
    weights = [w for w in layer.weights if "seed_generator" not in w.path]
    if weights:
      found[layer.name] = weights
  return found


def load_init_weights(model: keras.Model, path: str, which: str = "best") -> dict:
  """Fine-tuning: copies the weights of a trained run into `model`, layer by layer by name.

  path: as for workdir.load_model. The classifier (the model's last layer with weights, fc8)
  keeps its fresh initialisation when its shape differs (another number of classes); every
  other layer must exist in both with the same shapes, else ValueError listing the ones that
  do not, before anything is copied. Returns {"loaded": [layer names], "reinitialised": [...],
  "checkpoint"}.
  """
  source, metadata = workdir_lib.load_model(path, which)
  ours, theirs = _layer_weights(model), _layer_weights(source)
  classifier = list(ours)[-1]
  missing, extra = [n for n in ours if n not in theirs], [n for n in theirs if n not in ours]
  shapes = {n: ([tuple(w.shape) for w in ours[n]], [tuple(w.shape) for w in theirs[n]])
            for n in ours if n in theirs}
  reinitialised = ([classifier] if classifier in shapes
                   and shapes[classifier][0] != shapes[classifier][1] else [])
  misfits = [f"{n}: checkpoint {s[1]}, model {s[0]}" for n, s in shapes.items()
             if s[0] != s[1] and n not in reinitialised]
  if missing or extra or misfits:
    raise ValueError(
        f"--init_checkpoint {metadata['checkpoint']} does not fit this model (only "
        f"{classifier}, the classifier, may differ, in its number of classes). Layers only in "
        f"this model: {missing or 'none'}; only in the checkpoint: {extra or 'none'}; shapes "
        "that differ: " + ("\n  " + "\n  ".join(misfits) if misfits else "none") + "\nUse "
        "the variant, --remove and --conv6 of the checkpoint's run (its config.json).")
  loaded = [n for n in ours if n not in reinitialised]
  for name in loaded:
    for mine, saved in zip(ours[name], theirs[name]):
      mine.assign(saved.numpy())
  return {"loaded": loaded, "reinitialised": reinitialised,
          "checkpoint": metadata["checkpoint"]}


def freeze_before(model: keras.Model, trainable_from: str) -> list:
  """Marks the layers before `trainable_from` untrainable (no gradients, no weight decay, no
  momentum); returns their names. Layers are named by the paper's groups: conv2 is conv2_a
  and conv2_b."""
  groups = []
  for layer in model.layers:
    if layer.weights and layer.name.split("_")[0] not in groups:
      groups.append(layer.name.split("_")[0])
  if trainable_from not in groups:
    raise errors.invalid("--trainable_from", trainable_from,
                         f"one of this model's layers {groups}")
  frozen_groups = groups[:groups.index(trainable_from)]
  frozen = [layer for layer in model.layers if layer.name.split("_")[0] in frozen_groups]
  for layer in frozen:
    layer.trainable = False
  return [layer.name for layer in frozen if layer.weights]
