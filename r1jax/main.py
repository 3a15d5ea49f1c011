"""r1jax entry point: `python -m r1jax.main --config=configs/STAGE.py [--config.key=value ...]`.

The config file picks the stage (`config.stage`); every field can be overridden from the
command line, and an unknown key fails before any compute (ml_collections config_flags).
"""

from __future__ import annotations

import logging as std_logging
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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  config = _CONFIG.value
  # Multi-controller runtime first: nothing may touch a JAX device before it.
  from r1jax import sharding
  if sharding.initialize_distributed(config.get("distributed")) and not sharding.is_main_process():
    logging.set_verbosity(logging.WARNING)  # process 0 logs; the others only warn
  from r1jax import stages  # imported late so that --help is fast
  logging.info("stage %s", config.stage)
  stages.run(config)


def _parse_flags(argv):
  """absl flag parsing with one-line errors for bad config overrides (no traceback)."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f"r1jax: {e}\nUsage: python -m r1jax.main --config=configs/STAGE.py "
             f"[--config.key=value ...]")
  except (AttributeError, KeyError) as e:
    bad = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
    sys.exit(f"r1jax: unknown config key {str(e).strip(chr(34))} in overrides {bad}; "
             f"every key must exist in the config file")


def run():
  """Console-script entry point (`r1jax --config=...`)."""
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
