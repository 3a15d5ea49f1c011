"""r1jax entry point: `python -m r1jax.main --config=configs/STAGE.py[:variant] [--config.key=value ...]`.

The config file picks the stage (`config.stage`); every field can be overridden from the
command line, and an unknown key fails before any compute (ml_collections config_flags).
`configs/NAME.py` names a file of a checkout, or, where there is none (an installed r1jax),
the packaged config r1jax/configs/NAME.py.

User errors (an unknown key, a missing file, a bad value, malformed data, an unwritable
run_dir ...) print one line naming the key, file or line and exit with status 1; the
traceback is printed too with --verbosity=1 or R1JAX_TRACEBACK=1.
"""

from __future__ import annotations

import difflib
import logging as std_logging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.",
                                          lock_config=True)
flags.mark_flags_as_required(["config"])


class _QuietLibraries(std_logging.Filter):
  """Drops INFO chatter of orbax/grain/jax internals from the absl log (warnings pass)."""

  def filter(self, record):
    if record.levelno >= std_logging.WARNING:
      return True
    return not any(f"/{lib}/" in record.pathname for lib in ("orbax", "grain", "jax", "etils"))


def _user_errors() -> tuple:
  from r1jax.train.loop import NonFiniteUpdateError
  return (ValueError, OSError, KeyError, NotImplementedError, NonFiniteUpdateError)


def _verbose(argv=()) -> bool:
  """Tracebacks wanted: R1JAX_TRACEBACK=1, --verbosity=N >= 1 (parsed, or still in argv)."""
  if os.environ.get("R1JAX_TRACEBACK", "") not in ("", "0") or logging.get_verbosity() >= 1:
    return True
  for a in argv:
    name, _, value = a.partition("=")
    if name in ("--verbosity", "-v") and value.lstrip("-").isdigit() and int(value) >= 1:
      return True
  return False


def _one_line(e: BaseException) -> str:
  msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
  msg = " ".join(str(msg).split())
  return msg or type(e).__name__


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  config = _CONFIG.value
  try:
    # Multi-controller runtime first: nothing may touch a JAX device before it.
    from r1jax import sharding
    if (sharding.initialize_distributed(config.get("distributed"))
        and not sharding.is_main_process()):
      logging.set_verbosity(logging.WARNING)  # process 0 logs; the others only warn
    from r1jax import stages  # imported late so that --help is fast
    logging.info("stage %s", config.stage)
    stages.run(config)
  except _user_errors() as e:
    if _verbose():
      raise
    sys.exit(f"r1jax: error: {_one_line(e)}")


def _flat_keys(c, prefix: str = "") -> list[str]:
  out = []
  for k, v in c.items():
    out.append(prefix + k)
    if hasattr(v, "items"):
      out += _flat_keys(v, f"{prefix}{k}.")
  return out


def _unknown_override(argv, config_spec: str) -> str:
  """The first --config.KEY override whose KEY the config lacks, with close matches."""
  from r1jax import configs
  try:
    keys = set(_flat_keys(configs.load(config_spec)))
  except Exception:  # the config itself fails: nothing better to say than the flag error
    return ""
  for a in argv[1:]:
    if a.startswith("--config.") and "=" in a:
      key = a[len("--config."):].split("=", 1)[0]
      if key not in keys:
        near = difflib.get_close_matches(key, sorted(keys), n=1)
        return f"unknown config key {key}" + (f" (did you mean {near[0]}?)" if near else "")
  return ""


def _config_error(spec: str) -> str:
  """The one-line error of loading the config itself ("" when it loads): config_flags wraps
  it with a traceback."""
  from r1jax import configs
  try:
    configs.load(spec)
  except Exception as e:  # any error of the user's config file
    return _one_line(e)
  return ""


def _config_spec(argv) -> tuple[int, str]:
  for i, a in enumerate(argv):
    if a.startswith("--config="):
      return i, a.split("=", 1)[1]
  return -1, ""


def _parse_flags(argv):
  """absl flag parsing with one-line errors (no traceback) for a missing config file, a bad
  variant and bad overrides; `configs/NAME.py` falls back to the packaged config."""
  argv = list(argv)
  i, spec = _config_spec(argv)
  if i >= 0:
    from r1jax import configs
    try:
      argv[i] = "--config=" + configs.resolve(spec)
    except FileNotFoundError as e:
      sys.exit(f"r1jax: error: {_one_line(e)}")
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    if _verbose(argv):
      raise
    sys.exit(f"r1jax: error: {_config_error(argv[i].split('=', 1)[1]) if i >= 0 else ''}"
             f"{'' if i >= 0 and _config_error(argv[i].split('=', 1)[1]) else _one_line(e)}")
  except (AttributeError, KeyError, ValueError, TypeError) as e:
    if _verbose(argv):
      raise
    msg = _unknown_override(argv, argv[i].split("=", 1)[1]) if i >= 0 else ""
    sys.exit(f"r1jax: error: {msg or _one_line(e)}")


def run():
  """Console-script entry point (`r1jax --config=...`)."""
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
