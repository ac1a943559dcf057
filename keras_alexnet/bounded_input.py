"""next(iterator) with a deadline, and with signals answered while it waits.

A tf.data GetNext blocks in C++: Python runs no signal handler until it returns, and when the
batches come from tf.data service workers that have died, it never returns (the client
retries the lost workers for ever). The trainer then ignored SIGTERM and saved nothing. Here
the GetNext runs in a helper thread while the main thread waits in short slices, so it can:
  - stop for a SIGTERM/SIGINT within a fraction of a second (the caller saves, then exits),
  - give up after `timeout` seconds without a batch, with InputTimeout naming the source.
The helper thread is a daemon: a GetNext that never returns does not keep the process alive.
"""

import queue
import threading
import time

_POLL_S = 0.25


class InputTimeout(RuntimeError):
  """No batch arrived within the timeout."""


class Interrupted(Exception):
  """A signal arrived while waiting for a batch."""


class BoundedNext:
  """fetch = BoundedNext(iterator, timeout_s, "where the data comes from"); fetch(signals)."""

  def __init__(self, iterator, timeout: float, source: str, on_stop=None):
    """on_stop(error): called with the Interrupted or InputTimeout about to be raised (to
    save first); it may raise an error of its own instead."""
    self._iterator = iterator
    self._on_stop = on_stop
    self._timeout = timeout
    self._source = source
    self._requests = queue.Queue()
    self._results = queue.Queue()
    self._thread = threading.Thread(target=self._run, name="bounded-next", daemon=True)
    self._thread.start()

  def _run(self):
    while self._requests.get():
      try:
        self._results.put((True, next(self._iterator)))
      except BaseException as e:  # pylint: disable=broad-except
        # StopIteration included: the caller re-raises whatever the iterator raised.
        self._results.put((False, e))

  def __call__(self, signals=None, stop_at_once=False):
    """The next element; raises what next() raises, Interrupted, or InputTimeout.

    stop_at_once: a signal already received stops before fetching (not only while waiting).
    The training loop leaves it False: there, a signal stops all workers at the same step."""
    if stop_at_once and signals is not None and signals.signum:
      self._stop(Interrupted())
    self._requests.put(True)
    start = time.monotonic()
    while True:
      try:
        ok, value = self._results.get(timeout=_POLL_S)
      except queue.Empty:
        if signals is not None and signals.signum:
          self._stop(Interrupted())
        waited = time.monotonic() - start
        if self._timeout and waited > self._timeout:
          self._stop(InputTimeout(
              f"no input batch from {self._source} for {waited:.0f} s (--data_timeout="
              f"{self._timeout:g}): its readers have stopped (with a tf.data service: its "
              "workers are gone or unreachable; restart them). Raise --data_timeout if the "
              "input is only slow."))
        continue
      if ok:
        return value
      raise value

  def _stop(self, error):
    if self._on_stop is not None:
      self._on_stop(error)
    raise error

  def close(self):
    """Ends the helper thread once its current next() (if any) returns."""
    self._requests.put(False)


def iterate(dataset, timeout: float, source: str, signals=None, on_stop=None):
  """Iterates `dataset` as a for loop would, each element under BoundedNext's rules."""
  fetch = BoundedNext(iter(dataset), timeout, source, on_stop)
  try:
    while True:
      try:
        element = fetch(signals, stop_at_once=True)
      except StopIteration:
        return
      yield element
  finally:
    fetch.close()
