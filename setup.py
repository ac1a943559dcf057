"""keras_alexnet: the network of Krizhevsky, Sutskever & Hinton (NIPS 2012) in TF 2 / Keras 3."""

from setuptools import find_packages, setup

setup(
    name="keras_alexnet",
    version="0.1.0",
    description=("AlexNet (Krizhevsky, Sutskever & Hinton, NIPS 2012) exact to the paper: "
                 "TFRecord builder, tf.data pipeline, training, evaluation, SavedModel export."),
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # Only the package is installed. tfrecords/ is a tool run from the checkout
    # (python -m tfrecords.build): PyPI already has a package named "tfrecords".
    packages=find_packages(include=["keras_alexnet", "keras_alexnet.*"]),
    package_data={"keras_alexnet": ["data/*"]},
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
        # Reading published torchvision .pth and ONNX weights (python -m keras_alexnet.convert);
        # Caffe's .caffemodel and caffe-tensorflow's .npy need neither.
        "convert": ["torch>=2.1", "onnx>=1.14"],
        # torch/onnx write the test's weight files; onnxruntime is the ONNX reference forward.
        "test": ["pytest>=7", "torch>=2.1", "onnx>=1.14", "onnxruntime>=1.16"],
    },
)
