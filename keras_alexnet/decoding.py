"""The stored image, shared by every stage that handles it: the pipeline (keras_alexnet.dataset),
preprocessing, the statistics reader (dataset_info) and export.

- STORED_SIZE: the 256x256 image the builder stores (section 2) and the pipeline yields;
  IMAGE_SIZE, the 224x224 window of it the network takes (section 4.1), and where that window
  may lie: MAX_OFFSET, CENTER_OFFSET.
- RNG: the random generator every stateless draw over it uses (augment's, decode_crop's).
- `decode_to_stored`: encoded image bytes -> that stored image (the pipeline's decoder for
  original-size shards, and the served model's), with `header_pixels` refusing decompression
  bombs before anything is decoded.

Imports only TensorFlow: every stage, the model too, reads these sizes from here, so that no
stage has to import a later one for them.
"""

import tensorflow as tf

STORED_SIZE = 256  # Section 2: shorter side rescaled to 256, central 256x256 patch.
IMAGE_SIZE = 224   # Section 4.1: "random 224x224 patches" of them; the network's input.
MAX_OFFSET = STORED_SIZE - IMAGE_SIZE   # 32: crops start at 0..32, 33 positions per axis.
CENTER_OFFSET = MAX_OFFSET // 2          # 16.
# A stored image as raw pixels (the builder's --encoding=raw): uint8 RGB, row-major.
RAW_BYTES = STORED_SIZE * STORED_SIZE * 3   # 196,608
# The most pixels (width x height, from the header) an image to decode may have: Pillow's
# decompression-bomb threshold, as the builder's (tfrecords/image.py says why). Bounds the
# memory a request takes: at most 3 bytes a pixel for the decoded image (~268 MB).
MAX_IMAGE_PIXELS = 1024 * 1024 * 1024 // 4 // 3
# Philox by name: "auto_select" picks a different generator under XLA, so the same seed would
# give other crops in a jit-compiled step than eagerly.
RNG = "philox"


@tf.autograph.experimental.do_not_convert
def header_pixels(image_bytes) -> tf.Tensor:
  """Width x height (int64) read from the header of PNG, GIF, BMP and WebP bytes, without
  decoding; -1 for other bytes (the decoder then refuses them, or they are JPEG, whose shape
  tf.io.extract_jpeg_shape reads). Layouts: PNG's IHDR (big-endian width, height at bytes
  16, 20), GIF's frames (_gif_pixels), BMP's info header (32-bit at
  18, 22; 16-bit for the 12-byte OS/2 header), WebP's VP8/VP8L/VP8X chunk."""
  padded = tf.strings.join([tf.convert_to_tensor(image_bytes, tf.string), "\0" * 32])

  def starts(offset, magic):
    return tf.equal(tf.strings.substr(padded, offset, len(magic)), magic)

  def number(offset, size, big_endian=False):
    digits = tf.cast(tf.io.decode_raw(tf.strings.substr(padded, offset, size), tf.uint8),
                     tf.int64)
    powers = tf.constant([256 ** i for i in range(size)], tf.int64)
    return tf.reduce_sum(digits * (powers[::-1] if big_endian else powers))

  def signed32(value):
    return tf.abs(tf.where(value >= 2 ** 31, value - 2 ** 32, value))

  png = number(16, 4, True) * number(20, 4, True)
  gif = tf.cond(starts(0, b"GIF"), lambda: _gif_pixels(padded),
                lambda: tf.constant(0, tf.int64))
  bmp = tf.where(tf.equal(number(14, 4), 12), number(18, 2) * number(20, 2),
                 signed32(number(18, 4)) * signed32(number(22, 4)))
  lossless = number(21, 4)
  webp = tf.where(starts(12, b"VP8X"), (number(24, 3) + 1) * (number(27, 3) + 1),
                  tf.where(starts(12, b"VP8L"),
                           (lossless % 2 ** 14 + 1) * (lossless // 2 ** 14 % 2 ** 14 + 1),
                           (number(26, 2) % 2 ** 14) * (number(28, 2) % 2 ** 14)))
  is_webp = tf.logical_and(starts(0, b"RIFF"), starts(8, b"WEBP"))
  return tf.where(starts(0, b"\x89PNG\r\n\x1a\n"), png,
                  tf.where(starts(0, b"GIF"), gif,
                           tf.where(starts(0, b"BM"), bmp,
                                    tf.where(is_webp, webp, tf.constant(-1, tf.int64)))))


@tf.autograph.experimental.do_not_convert
def _gif_pixels(data) -> tf.Tensor:
  """The pixels TF's GIF decoder holds: it reads every frame (giflib's DGifSlurp) before it
  keeps the first, so a GIF costs the sum of its frames' sizes, not its screen size. Walks the
  GIF89a block structure (extensions and image descriptors, each followed by sub-blocks of at
  most 255 bytes) without decompressing anything."""
  raw = tf.cast(tf.io.decode_raw(data, tf.uint8), tf.int64)
  size = tf.size(raw, out_type=tf.int64)

  def at(i):
    return tf.gather(raw, tf.minimum(tf.cast(i, tf.int64), size - 1))

  def color_table(flags):
    return tf.where(flags >= 128, 3 * tf.bitwise.left_shift(tf.constant(2, tf.int64),
                                                            flags % 8), 0)

  screen = (at(6) + 256 * at(7)) * (at(8) + 256 * at(9))
  start = tf.constant(13, tf.int64) + color_table(at(10))

  def step(pos, in_blocks, pixels, done):
    byte = at(pos)

    def sub_block():
      return (tf.where(byte == 0, pos + 1, pos + 1 + byte), byte != 0, pixels, done)

    def introducer():
      is_image = byte == 0x2C
      frame = (at(pos + 5) + 256 * at(pos + 6)) * (at(pos + 7) + 256 * at(pos + 8))
      after_image = pos + 10 + color_table(at(pos + 9)) + 1   # + LZW minimum code size
      return (tf.where(is_image, after_image, pos + 2), tf.constant(True),
              pixels + tf.where(is_image, frame, 0),
              tf.logical_not(tf.logical_or(is_image, byte == 0x21)))

    return tf.cond(in_blocks, sub_block, introducer)

  _, _, pixels, _ = tf.while_loop(
      lambda pos, in_blocks, pixels, done: tf.logical_and(tf.logical_not(done), pos < size),
      step, (start, tf.constant(False), tf.constant(0, tf.int64), tf.constant(False)),
      maximum_iterations=tf.cast(size, tf.int32))
  return tf.maximum(pixels, screen)


def _check_pixels(pixels, max_pixels: int, what: str):
  """An Assert that fails with InvalidArgument when `pixels` exceeds the limit."""
  return tf.raw_ops.Assert(
      condition=tf.less_equal(pixels, max_pixels),
      data=[tf.constant(f"The {what} header declares"), pixels, tf.constant(
          f"pixels (width x height), more than the limit of {max_pixels} "
          "(max_image_pixels); the image is refused before decoding.")], summarize=4)


def decode_to_stored(image_bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> tf.Tensor:
  """Encoded JPEG/PNG/GIF/BMP (RGB, grayscale or CMYK) -> uint8 [256, 256, 3] RGB: the shorter
  side resized to 256 and the central 256x256 patch (section 2), what the builder stores.

  Resize-then-crop equals crop-the-central-square-then-resize, so a JPEG decodes only its
  central square (tf.io.decode_and_crop_jpeg skips the rest).

  An image whose header declares more than `max_pixels` pixels fails with InvalidArgument
  before any pixel is decoded: a few hundred kB of PNG can declare 20000x20000 (1.2 GB).
  """
  image_bytes = tf.convert_to_tensor(image_bytes, tf.string)

  def square_window(height, width):
    side = tf.minimum(height, width)
    return tf.stack([(height - side) // 2, (width - side) // 2, side, side])

  def jpeg():
    shape = tf.io.extract_jpeg_shape(image_bytes)
    pixels = tf.cast(shape[0], tf.int64) * tf.cast(shape[1], tf.int64)
    with tf.control_dependencies([_check_pixels(pixels, max_pixels, "JPEG")]):
      return tf.io.decode_and_crop_jpeg(image_bytes, square_window(shape[0], shape[1]),
                                        channels=3)

  def other():
    with tf.control_dependencies([_check_pixels(header_pixels(image_bytes), max_pixels,
                                                "image")]):
      image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    window = square_window(tf.shape(image)[0], tf.shape(image)[1])
    return tf.image.crop_to_bounding_box(image, window[0], window[1], window[2], window[3])

  square = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)
  square.set_shape([None, None, 3])

  def resize():
    resized = tf.image.resize(square, [STORED_SIZE, STORED_SIZE], method="bilinear",
                              antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)

  stored = tf.cond(tf.shape(square)[0] == STORED_SIZE, lambda: square, resize)
  return tf.ensure_shape(stored, [STORED_SIZE, STORED_SIZE, 3])

