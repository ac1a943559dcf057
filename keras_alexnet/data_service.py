r"""Starts a tf.data service dispatcher or worker: CPU hosts that read and decode for training.

When one host's CPUs cannot decode JPEGs as fast as its accelerators train, the CPU part of
the input pipeline (keras_alexnet.dataset: read, parse, decode, batch) can run on other hosts
through TensorFlow's own tf.data service. Augmentation still runs in the training step.

  # One dispatcher (fault tolerant with a work_dir):
  python -m keras_alexnet.data_service --role=dispatcher --port=5050 --work_dir=/shared/disp
  # Any number of workers, each on a CPU host that sees the shards at the same path:
  python -m keras_alexnet.data_service --role=worker --dispatcher_address=HOST:5050 \
      --port=5051 --worker_host=$(hostname)
  # Training reads from the service:
  python -m keras_alexnet.train ... --data_service_address=grpc://HOST:5050

The workers receive the pipeline as a serialized graph: they need TensorFlow and the data, not
this package's code.

Security: TensorFlow's servers listen on every network interface (TF 2.21 binds 0.0.0.0:PORT;
neither DispatcherConfig nor WorkerConfig takes an address to bind to) with no
authentication (the open-source build's only protocol, "grpc", uses insecure credentials), and
a worker runs whatever dataset graph a client sends it, with the worker's file access (a graph
can read and write files). Run them only on a trusted network or behind a firewall that admits
only the trainers: see README.md, "Security". The launcher prints this when it starts.
"""

import dataclasses
import socket
import sys
from typing import Optional

from absl import app
from absl import flags
from absl import logging
import tensorflow as tf

from keras_alexnet import errors

ROLES = ("dispatcher", "worker")
DEFAULT_DISPATCHER_PORT = 5050
SECURITY_WARNING = (
    "WARNING: the tf.data service {role} listens on port {port} of EVERY network interface "
    "(TensorFlow offers no bind address and no authentication) and runs any dataset graph a "
    "client sends, with this process's access to files. Use it only on a trusted network or "
    "behind a firewall that admits only your trainers (README.md, 'Security').")


@dataclasses.dataclass(frozen=True)
class ServiceConfig:
  role: str
  port: int = 0                              # 0: any free port (printed at start).
  dispatcher_address: Optional[str] = None   # HOST:PORT, for workers.
  worker_host: Optional[str] = None          # How trainers reach this worker; None: hostname.
  work_dir: Optional[str] = None             # Dispatcher state, for restarts (fault tolerant).


def check_config(config: ServiceConfig) -> None:
  if config.role not in ROLES:
    raise errors.invalid("role", config.role, f"one of {ROLES}")
  if not 0 <= config.port < 65536:
    raise errors.invalid("port", config.port, "in 0..65535 (0: any free port)")
  if config.role == "worker":
    if not config.dispatcher_address or ":" not in _strip(config.dispatcher_address):
      raise ValueError("a worker needs --dispatcher_address=HOST:PORT (the dispatcher's); "
                       f"received {config.dispatcher_address!r}.")
  elif config.dispatcher_address or config.worker_host:
    raise ValueError("--dispatcher_address and --worker_host are for workers, not the "
                     "dispatcher.")


def _strip(address):
  return address[len("grpc://"):] if address.startswith("grpc://") else address


def start_dispatcher(port: int = 0, work_dir: Optional[str] = None):
  """A running DispatchServer; its address for trainers is `.target` (grpc://HOST:PORT)."""
  config = tf.data.experimental.service.DispatcherConfig(
      port=port, work_dir=work_dir, fault_tolerant_mode=work_dir is not None)
  return tf.data.experimental.service.DispatchServer(config)


def start_worker(dispatcher_address: str, port: int = 0, worker_host: Optional[str] = None):
  """A running WorkerServer registered with the dispatcher at HOST:PORT. worker_host is the
  name trainers use to fetch batches from it (default: this machine's hostname)."""
  host = worker_host or socket.gethostname()
  config = tf.data.experimental.service.WorkerConfig(
      dispatcher_address=_strip(dispatcher_address), worker_address=f"{host}:%port%", port=port)
  return tf.data.experimental.service.WorkerServer(config)


def serve(config: ServiceConfig) -> None:
  """Starts the server of `config.role` and blocks until the process is stopped."""
  check_config(config)
  if config.role == "dispatcher":
    server = start_dispatcher(config.port, config.work_dir)
    address = server.target
  else:
    server = start_worker(config.dispatcher_address, config.port, config.worker_host)
    address = f"{config.worker_host or socket.gethostname()}:{server._address.split(':')[-1]}"  # pylint: disable=protected-access
  port = address.rsplit(":", 1)[-1]
  print(SECURITY_WARNING.format(role=config.role, port=port), file=sys.stderr, flush=True)
  logging.warning(SECURITY_WARNING.format(role=config.role, port=port))
  # The one line scripts wait for (the port may have been chosen by the OS).
  print(f"tf.data service {config.role} serving at {address}", flush=True)
  logging.info("tf.data service %s serving at %s", config.role, address)
  server.join()


FLAGS = flags.FLAGS


def define_flags():
  """Defined only when run as the command, so importing this module (tests, other entry
  points) never clashes with another entry point's flags of the same name."""
  flags.DEFINE_enum("role", None, list(ROLES), "Which server to run.")
  flags.DEFINE_integer("port", 0, f"Port to listen on; 0 picks a free one (the dispatcher "
                       f"usually runs on {DEFAULT_DISPATCHER_PORT}).")
  flags.DEFINE_string("dispatcher_address", None, "Worker: the dispatcher's HOST:PORT.")
  flags.DEFINE_string("worker_host", None,
                      "Worker: the host name trainers use to reach it (default: hostname).")
  flags.DEFINE_string("work_dir", None,
                      "Dispatcher: a directory for its journal; makes it fault tolerant.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = ServiceConfig(role=FLAGS.role, port=FLAGS.port,
                         dispatcher_address=FLAGS.dispatcher_address,
                         worker_host=FLAGS.worker_host, work_dir=FLAGS.work_dir)
  try:
    check_config(config)
  except ValueError as e:
    sys.exit(f"error: {e}")
  serve(config)


def _define_command_flags():
  define_flags()
  flags.mark_flag_as_required("role")


def run():
  """The command (`python -m keras_alexnet.data_service`, or its console script)."""
  from keras_alexnet import cli  # pylint: disable=g-import-not-at-top
  cli.run(main, _define_command_flags)


if __name__ == "__main__":
  run()
