"""``python -m leads_bench``: the paper's comparison table (see :mod:`leads_bench.cli`)."""

from .cli import main

raise SystemExit(main())
