"""The paper's Tables 2 and 3, measured on this machine: same as ``leads-bench``.

    python benchmarks/paper_tables.py            # full size: AP, RM, MS, all methods
    python benchmarks/paper_tables.py --quick    # tiny mesh and horizon, a few minutes

Writes ``results.md``, ``results.json`` and ``activation_maps.png`` under
``$LEADS_HOME/bench/full`` (or ``--out``); a rerun resumes where the last one stopped. Exits 1
when a run failed or one of the paper's orderings does not hold.
"""

import sys

from leads_bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
