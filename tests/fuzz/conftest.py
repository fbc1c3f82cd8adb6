"""Fuzzing settings (SPEC section 9): bounded and deterministic in CI, longer on request.

Profiles, chosen with ``HYPOTHESIS_PROFILE``:

- ``ci`` (the default): derandomized, so each target runs the same fixed number of examples in
  every run and finds the same things: a few seconds per target;
- ``explore``: many more examples from a fresh seed; what fails is shrunk and saved in
  ``tests/fuzz/corpus/hypothesis`` (Hypothesis's example database), which replays it first on the
  next explore run.

Hypothesis cannot both derandomize and read a database, so the corpus that CI replays is kept
explicitly: every input that once broke poller is an ``@example`` on its target (and every config
file in ``corpus/configs`` is loaded by the config target), beside the fix it led to.
"""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

CORPUS = Path(__file__).parent / "corpus"

settings.register_profile(
    "ci",
    max_examples=150,
    deadline=2000,  # ms per example: a hang fails fast, a busy CI machine does not
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile(
    "explore",
    max_examples=5000,
    deadline=2000,
    database=DirectoryBasedExampleDatabase(CORPUS / "hypothesis"),
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
