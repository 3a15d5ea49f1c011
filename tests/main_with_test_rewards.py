"""`python -m r1jax.main` with the test reward functions of tests/reward_fixtures.py
registered (a random tiny model earns no real reward; test_length varies per sample).

Used by tests/test_distributed.py and tests/test_resume.py as the run command.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import reward_fixtures  # noqa: E402,F401  registers test_length
from r1jax import main  # noqa: E402

if __name__ == "__main__":
  main.run()
