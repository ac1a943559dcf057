"""Features of a trained run's hidden layers for image files (e.g. fc7, DeCAF-style).

  python -m keras_alexnet.extract --workdir=DIR --layer=fc7 IMAGES_OR_FOLDERS... \
      --output=features.npz [--which=best|latest] [--batch_size=64]

Each image goes through the evaluation preprocessing (keras_alexnet.preprocessing: the shorter
side to 256, the central 256x256, its centre 224x224 crop minus the run's training mean) and
the model up to --layer: fc6, fc7 (4096-d, after the ReLU, as the paper's section 6.1 uses for
Figure 4), pool5 ([6, 6, 256]) or any layer the model names. The .npz holds `features`
[N, ...] float32, `files` [N] (the paths, in the order of the rows), `layer`, and `failed` /
`failed_reasons` for files that could not be read or decoded (the others are extracted, and
the exit code is then 1). The file is written atomically; an existing one is replaced only with
--overwrite. Folders are searched recursively for .jpg/.jpeg/.png files.

`layer_model` and `features_of` are the library functions; Figure 4's nearest-neighbour search
(keras_alexnet.experiments.figure4) uses the same two.
"""

import dataclasses
import os
import sys
from typing import Iterable, List, Sequence, Tuple

import numpy as np
import tensorflow as tf

from keras_alexnet import cli
from keras_alexnet import errors
from keras_alexnet import files

EXIT_FAILED_IMAGES = 1


def layer_model(model, layer: str):
  """A keras.Model from the model's input to `layer`'s output (sharing its weights); the
  dropout layers after fc6/fc7 are not on the way, so fc7 is its ReLU output."""
  import keras  # pylint: disable=g-import-not-at-top
  names = [l.name for l in model.layers]
  if layer not in names:
    raise ValueError(f"--layer={layer!r} is not a layer of this model; it has "
                     f"{', '.join(n for n in names if n != 'images')}.")
  return keras.Model(model.inputs, model.get_layer(layer).output,
                     name=f"{model.name}_to_{layer}")


def features_of(features_model, images, stats, mean: str = "per_pixel") -> np.ndarray:
  """uint8 [B, 256, 256, 3] stored images -> float32 features [B, ...] of their centre crops
  (the evaluation preprocessing), with training=False (no dropout)."""
  from keras_alexnet import preprocessing  # pylint: disable=g-import-not-at-top
  crops = preprocessing.center_crop(images, stats, mean)
  return np.asarray(tf.cast(features_model(crops, training=False), tf.float32))


def _decode(data: bytes) -> np.ndarray:
  from keras_alexnet import decoding  # pylint: disable=g-import-not-at-top
  return decoding.decode_to_stored(data).numpy()


def _first_line(message: str) -> str:
  from keras_alexnet import predict  # pylint: disable=g-import-not-at-top
  return predict._first_line(message)  # pylint: disable=protected-access


def extract_files(features_model, stats, mean: str, files: Sequence[str],
                  batch_size: int = 64, progress: bool = True) -> dict:
  """Features of image files, batched: {"features" [N, ...], "files" [N] (those extracted,
  in order), "failed" [(file, reason)]}. A file that cannot be read or decoded is listed in
  "failed" and costs the others nothing."""
  if batch_size < 1:
    raise errors.invalid("--batch_size", batch_size, ">= 1")
  rows, done, failed = [], [], []
  bar = cli.Progress(len(files), features_model.name.rsplit("_to_", 1)[-1], progress)
  for start in range(0, len(files), batch_size):   # read per batch: folders can be large
    images, names = [], []
    for path in files[start:start + batch_size]:
      try:
        with open(path, "rb") as f:
          images.append(_decode(f.read()))
        names.append(path)
      except OSError as e:
        failed.append((path, f"cannot read: {e.strerror or e}"))
      except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
        failed.append((path, f"cannot decode: {_first_line(e.message)}"))
    if images:
      rows.append(features_of(features_model, np.stack(images), stats, mean))
      done.extend(names)
    bar.update(min(start + batch_size, len(files)))
  bar.update(len(files), final=True)
  shape = tuple(features_model.output.shape[1:])
  features = np.concatenate(rows) if rows else np.zeros((0, *shape), np.float32)
  return {"features": features, "files": done, "failed": failed}


def read_split(data_dir: str, split: str, batch_size: int, label_offset: int = 0
               ) -> Iterable[Tuple[np.ndarray, np.ndarray, List[str]]]:
  """(uint8 [B, 256, 256, 3] images, int [B] labels, [B] image/filename) batches of a split
  of the builder's shards, in file order: what evaluation reads, with the file names."""
  from keras_alexnet import data_sources  # pylint: disable=g-import-not-at-top
  from keras_alexnet import decoding  # pylint: disable=g-import-not-at-top
  from keras_alexnet import features  # pylint: disable=g-import-not-at-top
  files = data_sources.list_shards(data_dir, split)
  if not files:
    raise FileNotFoundError(f"{data_dir} holds no {split} shards ({split}-NNNNN-of-NNNNN); "
                            f"build them with `{data_sources.BUILD_COMMAND}`.")
  spec = {k: features.FEATURE_SPEC[k] for k in (features.ENCODED, features.LABEL,
                                                 features.FILENAME)}

  def parse(records):
    parsed = tf.io.parse_example(records, spec)
    images = tf.map_fn(decoding.decode_to_stored, parsed[features.ENCODED],
                       fn_output_signature=tf.TensorSpec([256, 256, 3], tf.uint8))
    return images, parsed[features.LABEL] - label_offset, parsed[features.FILENAME]

  ds = tf.data.TFRecordDataset(files).batch(batch_size).map(parse).prefetch(2)
  for images, labels, names in ds.as_numpy_iterator():
    yield images, labels, [n.decode() for n in names]


def count_records(data_dir: str, split: str) -> int:
  """The split's example count, from dataset_info.json (or by reading the shards)."""
  from keras_alexnet import data_sources  # pylint: disable=g-import-not-at-top
  return int(data_sources.dataset_metadata(data_sources.DataConfig(data_dir))
             ["num_examples"].get(split, 0))


@dataclasses.dataclass(frozen=True)
class ExtractConfig:
  workdir: str
  layer: str
  paths: Tuple[str, ...]
  output: str
  which: str = "best"
  batch_size: int = 64
  progress: bool = True
  overwrite: bool = False


def extract(config: ExtractConfig) -> dict:
  """Loads the run, extracts, writes config.output atomically; returns what extract_files
  returned plus "output"."""
  from keras_alexnet import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from keras_alexnet import predict  # pylint: disable=g-import-not-at-top
  if not config.paths:
    raise ValueError("name the images: python -m keras_alexnet.extract --workdir=DIR "
                     "--layer=fc7 IMAGES_OR_FOLDERS... --output=features.npz")
  if not config.output.endswith(".npz"):
    raise ValueError(f"--output must name a .npz file; received {config.output!r}.")
  if os.path.exists(config.output) and not config.overwrite:
    raise ValueError(f"--output={config.output} exists; pass --overwrite to replace it, or "
                     "name another file.")
  model, metadata = workdir_lib.load_model(config.workdir, config.which)
  features_model = layer_model(model, config.layer)   # a bad --layer fails before any work
  stats = workdir_lib.load_statistics(metadata["workdir"])
  mean = metadata.get("augment", {}).get("mean", "per_pixel")
  result = extract_files(features_model, stats, mean, predict.image_files(config.paths),
                         config.batch_size, config.progress)
  failed = result["failed"]
  arrays = dict(features=result["features"], files=np.array(result["files"], dtype=str),
                layer=np.array(config.layer), checkpoint=np.array(metadata["checkpoint"]),
                failed=np.array([f for f, _ in failed], dtype=str),
                failed_reasons=np.array([r for _, r in failed], dtype=str))
  os.makedirs(os.path.dirname(os.path.abspath(config.output)), exist_ok=True)
  files.write_npz(config.output, arrays)
  return {**result, "output": config.output}


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  try:
    config = ExtractConfig(workdir=f.workdir, layer=f.layer, paths=tuple(argv[1:]),
                           output=f.output, which=f.which, batch_size=f.batch_size,
                           progress=f.progress, overwrite=f.overwrite)
    result = extract(config)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  for path, reason in result["failed"]:
    print(f"{path}: {reason}", file=sys.stderr)
  print(f"Wrote {result['output']}: {len(result['files'])} images x "
        f"{list(result['features'].shape[1:])} {config.layer} features"
        + (f"; {len(result['failed'])} files failed (listed above)" if result["failed"] else ""))
  if result["failed"]:
    sys.exit(EXIT_FAILED_IMAGES)


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("workdir", None, "A training workdir (or a converted one).")
  flags.DEFINE_string("layer", "fc7", "fc6, fc7, pool5 or any layer name of the model.")
  flags.DEFINE_string("output", "features.npz", "The .npz written (atomically).")
  flags.DEFINE_enum("which", "best", ("best", "latest"), "Checkpoint of the workdir.")
  flags.DEFINE_integer("batch_size", 64, "Images per forward pass.")
  flags.DEFINE_bool("progress", True, "A progress bar on stderr.")
  flags.DEFINE_bool("overwrite", False, "Replace an existing --output file.")
  flags.mark_flag_as_required("workdir")


def run():
  """The command (`python -m keras_alexnet.extract`, or its console script)."""
  cli.run(main, _define_flags)


if __name__ == "__main__":
  run()
