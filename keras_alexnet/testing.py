"""The test-only tiny net behind --tiny_model: tests of checkpoints, resumption, strategies and
fine-tuning run the real trainer (in this process or a subprocess) in seconds with it.

Part of the package, not of tests/: `python -m keras_alexnet.train --tiny_model` and the
workdirs it leaves (config.json's "tiny_model") must rebuild it wherever the package is
installed. Imports the model module only (its input size and initialiser)."""

import keras

from keras_alexnet import decoding
from keras_alexnet import model as model_lib


def tiny_model(num_classes: int, dropout: float = 0.0, conv6: bool = False) -> keras.Model:
  """Tests only (--tiny_model): two small conv layers and a classifier on the same 224x224
  input, so that tests of checkpoints, resumption and strategies run in seconds. Layer names
  are fixed so that checkpoints match across processes. conv6 adds a third conv layer of that
  name, so --conv6 runs (pre-training, then fine-tuning) can be exercised quickly too."""
  # The paper's N(0, 0.01) init suits inputs on the 0..255 scale, as AlexNet's does.
  init = keras.initializers.RandomNormal(stddev=model_lib.INIT_STDDEV)
  inputs = keras.Input((decoding.IMAGE_SIZE, decoding.IMAGE_SIZE, 3), name="images")
  x = keras.layers.Conv2D(8, 11, strides=8, activation="relu", kernel_initializer=init,
                          name="conv1")(inputs)
  x = keras.layers.MaxPooling2D(3, strides=3, name="pool1")(x)
  x = keras.layers.Conv2D(16, 3, activation="relu", kernel_initializer=init, name="conv2")(x)
  if conv6:
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", kernel_initializer=init,
                            name="conv6")(x)
  x = keras.layers.GlobalAveragePooling2D(name="pool2")(x)
  if dropout:
    x = keras.layers.Dropout(dropout, name="dropout")(x)
  outputs = keras.layers.Dense(num_classes, kernel_initializer=init, name="fc")(x)
  return keras.Model(inputs, outputs, name="tiny")
