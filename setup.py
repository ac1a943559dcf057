"""keras_alexnet: the network of Krizhevsky, Sutskever & Hinton (NIPS 2012) in TF 2 / Keras 3.

`pip install .` brings the whole toolkit (BUILD_NOTES.md, "Packaging", says why it is laid out
so):
- the package keras_alexnet;
- the dataset builder, the checkout's top-level tfrecords/, as keras_alexnet.tfrecords: PyPI
  has an unrelated distribution that owns the top-level name `tfrecords`, so no file of that
  name is installed. A path-free finder (tfrecords/_alias.py, installed as the top-level module
  _keras_alexnet_tfrecords plus a .pth line importing it) lets `python -m tfrecords.build` find
  the builder where no other `tfrecords` is installed; `keras-alexnet-build` and
  `python -m keras_alexnet.tfrecords.build` work everywhere;
- the recipes, the checkout's flags/, as keras_alexnet/flags (package data): every command
  takes `--flagfile=flags/paper.cfg` (or `paper`) from any directory;
- a console script per command.
"""

import os

from setuptools import setup
from setuptools.command.build_py import build_py

ALIAS_MODULE = "_keras_alexnet_tfrecords"

COMMANDS = {
    "train": "keras_alexnet.train",
    "evaluate": "keras_alexnet.evaluate",
    "export": "keras_alexnet.export",
    "predict": "keras_alexnet.predict",
    "demo": "keras_alexnet.demo",
    "benchmark": "keras_alexnet.benchmark",
    "pipeline-benchmark": "keras_alexnet.pipeline_benchmark",
    "data-service": "keras_alexnet.data_service",
    "compare": "keras_alexnet.experiments.compare",
    "relu-vs-tanh": "keras_alexnet.experiments.relu_vs_tanh",
    "figure4": "keras_alexnet.experiments.figure4",
    "extract": "keras_alexnet.extract",
    "convert": "keras_alexnet.convert",
    "build": "keras_alexnet.tfrecords.build",
    "build-benchmark": "keras_alexnet.tfrecords.benchmark",
}


class BuildPyWithAlias(build_py):
  """Also writes the `tfrecords` fallback finder and the .pth line that imports it at start-up.

  Only for wheels: a checkout (editable install included) has tfrecords/ itself."""

  def run(self):
    super().run()
    with open(os.path.join("tfrecords", "_alias.py")) as f:
      source = f.read()
    with open(os.path.join(self.build_lib, ALIAS_MODULE + ".py"), "w") as f:
      f.write(source)
    with open(os.path.join(self.build_lib, "keras_alexnet_tfrecords.pth"), "w") as f:
      f.write(f"import {ALIAS_MODULE}\n")


setup(
    name="keras_alexnet",
    version="0.1.0",
    description=("AlexNet (Krizhevsky, Sutskever & Hinton, NIPS 2012) exact to the paper: "
                 "TFRecord builder, tf.data pipeline, training, evaluation, SavedModel export."),
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["keras_alexnet", "keras_alexnet.data", "keras_alexnet.experiments",
              "keras_alexnet.tfrecords", "keras_alexnet.flags", "keras_alexnet.flags.ablations"],
    package_dir={"keras_alexnet.tfrecords": "tfrecords", "keras_alexnet.flags": "flags",
                 "keras_alexnet.flags.ablations": "flags/ablations"},
    package_data={"keras_alexnet": ["data/*"], "keras_alexnet.flags": ["*.cfg"],
                  "keras_alexnet.flags.ablations": ["*.cfg"]},
    cmdclass={"build_py": BuildPyWithAlias},
    entry_points={"console_scripts": [f"keras-alexnet-{name}={module}:run"
                                      for name, module in COMMANDS.items()]},
    install_requires=[
        # TF >= 2.16 brings Keras 3; 2.21 is what this project is tested with.
        "tensorflow>=2.16,<2.22",
        "keras>=3.3,<4",
        "absl-py>=1.4",
        "tensorboard>=2.16",
        "numpy>=1.26",
        # JPEG/PNG/CMYK handling in the dataset builder and the demo's image generator.
        "pillow>=10",
    ],
    extras_require={
        # Warm-up records for TF Serving (PredictionLog protos).
        # tensorflow-serving-api 2.X requires tensorflow>=2.X (2.21.0: >=2.21.0,<3), so its
        # range follows the TF range above; 2.22 would ask for a TF this project excludes.
        "serving": ["tensorflow-serving-api>=2.16,<2.22"],
        # PNG plots of the paper's experiments.
        "plot": ["matplotlib>=3.7"],
        # ILSVRC-2010's devkit meta.mat (tfrecords/releases.py); a text mapping needs nothing.
        "ilsvrc2010": ["scipy>=1.9"],
        # Reading published torchvision .pth and ONNX weights (python -m keras_alexnet.convert);
        # Caffe's .caffemodel and caffe-tensorflow's .npy need neither.
        "convert": ["torch>=2.1", "onnx>=1.14"],
        # torch/onnx write the test's weight files; onnxruntime is the ONNX reference forward.
        # torch pinned to the CPU build that lies on this project's machines (a newer or
        # unpinned torch is a multi-GB CUDA build there); any torch >= 2.1 passes the tests.
        "test": ["pytest>=7", "scipy>=1.9", "torch==2.13.0", "onnx>=1.14", "onnxruntime>=1.16"],
    },
)
