"""`python -m benchmarks.slow_sims`: the synthetic side-by-side run (compare.py)."""

import sys

from benchmarks.slow_sims.compare import main

sys.exit(main())
