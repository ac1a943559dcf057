"""keras_alexnet: the network of Krizhevsky, Sutskever & Hinton (NIPS 2012) in TF 2 / Keras 3.

Importing the package registers its custom layers and the paper's optimizer (PaperSGD) with
Keras, so that `keras.models.load_model("alexnet.keras")` works in a fresh process after
`import keras_alexnet`. README.md maps the modules.
"""

from keras_alexnet import _startup

# TensorFlow's C++ start-up lines say nothing a user of these commands needs (a
# TF_CPP_MIN_LOG_LEVEL the user set wins); first, before anything imports TF.
_startup.import_tensorflow_quietly()

from keras_alexnet import layers as _layers  # pylint: disable=g-import-not-at-top,unused-import,wrong-import-position
from keras_alexnet import optimizer as _optimizer  # pylint: disable=g-import-not-at-top,unused-import,wrong-import-position

__version__ = "0.1.0"
