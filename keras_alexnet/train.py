"""Trains AlexNet as the paper does (section 5), resumably.

  python -m keras_alexnet.train --flagfile=flags/paper.cfg --data_dir=... --workdir=...

Flags after --flagfile override it. Rerunning the same command resumes from the workdir's last
checkpoint. Exit status: 0 done; 1 an error (a NaN/Inf loss, bad flags or data, a failed
worker); 128 + N when signal N (SIGTERM, SIGINT) stopped the run after saving a checkpoint.
"""

import errno
import os
import shutil
import sys

from absl import app
from absl import flags
from absl import logging

from keras_alexnet import config as config_lib

FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}; every setting is a --flag.")
  if FLAGS.num_cpu_devices:
    # Must precede any other use of TF, which fixes the device list on first use.
    import tensorflow as tf   # pylint: disable=g-import-not-at-top
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration()] * FLAGS.num_cpu_devices)
  from keras_alexnet import bounded_input   # pylint: disable=g-import-not-at-top
  from keras_alexnet import training   # pylint: disable=g-import-not-at-top
  import tensorflow as tf   # pylint: disable=g-import-not-at-top
  try:
    config = config_lib.config_from_flags(FLAGS)
    training.train_and_evaluate(config, FLAGS.workdir, config_lib.flags_text(FLAGS, sys.argv))
  except training.Stopped as e:
    logging.warning("%s", e)
    _exit_now(128 + e.signum)
  except bounded_input.InputTimeout as e:
    print(f"error: {e}", file=sys.stderr)
    _exit_now(1)
  except (ValueError, FileNotFoundError, RuntimeError) as e:
    # RuntimeError covers NonFiniteLossError and unloadable checkpoints.
    sys.exit(f"error: {e}")
  except OSError as e:   # e.g. a full disk while writing the workdir: the message names the file
    sys.exit(f"error: {e}" + (f"; free space under {FLAGS.workdir}: "
                              f"{shutil.disk_usage(FLAGS.workdir).free:,} bytes"
                              if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""))
  except tf.errors.OpError as e:
    if "No space left on device" in e.message:
      sys.exit(f"error: {type(e).__name__}: {e.message.strip()[:2000]}\nThe disk holding "
               f"{FLAGS.workdir} is full ({shutil.disk_usage(FLAGS.workdir).free:,} bytes "
               "free); the checkpoints saved before are complete: free space and run the same "
               "command again to resume.")
    sys.exit(f"error: {type(e).__name__}: {e.message.strip()[:2000]}\nIf this is a multi-worker "
             "run, a peer worker has probably failed; restart all workers to resume from the "
             "last checkpoint.")


def _exit_now(code):
  """Exits without the interpreter's teardown: a batch request that never returns (its
  tf.data service workers are gone) would block TF's iterator clean-up, and with it the exit.
  The checkpoint is saved and the logs are flushed first."""
  logging.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)   # pylint: disable=protected-access


def run():
  """The command (`python -m keras_alexnet.train`, or its console script). Only as the
  command: importing this module (tests, other tools) defines no flags."""
  from keras_alexnet import cli  # pylint: disable=g-import-not-at-top
  cli.run(main, config_lib.define_train_flags, groups=config_lib.TRAIN_HELP_GROUPS)


if __name__ == "__main__":
  run()
