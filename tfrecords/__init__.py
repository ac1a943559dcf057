"""The dataset builder: raw images (ILSVRC-2012 tars, extracted folders, any class-folder
dataset) -> TFRecord shards + dataset_info.json. Run from the checkout:

  python -m tfrecords.build --input=PATH --output_dir=DIR
  python -m tfrecords.benchmark

Not installed with keras_alexnet (PyPI already has a package named "tfrecords"); the record
schema it writes lives in keras_alexnet.features so writer and reader share one definition.
"""
