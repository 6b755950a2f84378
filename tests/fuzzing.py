"""Knobs shared by the fuzzers (tests/test_fuzz_http.py, tests/test_fuzz_ws.py).

CI runs a bounded number of examples from a fixed seed, so a failure reproduces with the same command.
A long run raises the count, and another seed explores other inputs:

    PYSTACKER_FUZZ_EXAMPLES=1000 PYSTACKER_FUZZ_SEED=7 .venv/bin/python -m pytest tests/test_fuzz_http.py tests/test_fuzz_ws.py
"""

from __future__ import annotations

import os

FUZZ_EXAMPLES = int(os.environ.get("PYSTACKER_FUZZ_EXAMPLES", "20"))
FUZZ_SEED = int(os.environ.get("PYSTACKER_FUZZ_SEED", "20250601"))
