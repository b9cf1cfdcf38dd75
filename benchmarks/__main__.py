"""`python -m benchmarks run [...]`: the side-by-side comparison with Litestream (run.py).

The focused benchmarks run on their own: `python -m benchmarks.bench_wal`, `python -m benchmarks.bench_replicate`.
"""

import sys

from .run import main

if len(sys.argv) < 2 or sys.argv[1] != "run":
    sys.exit("usage: python -m benchmarks run [--quick] [--full] [--only NAME ...]  (see --help)")
main(sys.argv[2:])
