"""Shared test set-up: every test session gets its own LMSTACK_HOME, so no test touches ~/.lmstack."""

import os
import tempfile

_home = tempfile.mkdtemp(prefix="lmstack-test-home-")
os.environ.setdefault("LMSTACK_HOME", _home)
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
