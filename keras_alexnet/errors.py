"""The one shape of a bad-setting error: what must hold, and what was received."""


def invalid(name: str, received, allowed: str) -> ValueError:
  """ValueError("NAME must be ALLOWED; received RECEIVED."): name is the flag or field as the
  user wrote it ("--batch_size", "DataConfig.format", "variant"), so they can find it."""
  return ValueError(f"{name} must be {allowed}; received {received!r}.")
