"""The paper's comparison, measured here, in one command: ``leads-bench``.

Every method runs on the AP, RM and MS benchmark sets with the same splits, seeds and budgets
(3 epochs per candidate, 10 epochs of fine-tuning for the chosen one, 15 search steps):

================  ============================================================================
physics           oracle: true reaction with its true parameters + learnable conductivity map
hybrid-gat        human-designed hybrid: true reaction + GAT diffusion (HyPer-EP)
diff-only         true reaction; the diffusion chosen among the catalog (ablation)
react-only        GAT diffusion; the reaction chosen among the catalog (ablation)
all-neural        neural (MLP) reaction + GAT diffusion (ablation)
leads-offline     the LEADS search with the offline policy, through the MCP server
leads-llm         the LEADS search with an LLM policy (``--llm``)
hdtwingen         free-form model code written by the LLM, sandboxed, same budget (``--llm``)
================  ============================================================================

The scripted baselines run on the engine (:mod:`leads_bench.baselines`) and share a fit cache
(:mod:`leads_bench.fit_cache`), so a candidate two baselines both try trains once; the searches
run through the bundled MCP server, one archive per run, and are read back through its tools
only (:mod:`leads_bench.search_rows`). Each finished run is a JSON file under ``<out>/runs``:
a rerun skips it, an interrupted search resumes from its archive, an interrupted baseline from
its cached fits. The result is ``<out>/results.md`` (the paper's Tables 2 and 3 layout),
``<out>/results.json`` (every figure) and ``<out>/activation_maps.png``.

``--quick`` runs the same pipeline on a 300-node mesh and an 80 ms horizon, one seed and an
8-step search, in a few minutes, and checks the orderings the paper reports.
"""

from .config import METHODS, BenchConfig, Check, Run
from .harness import BenchResult, planned_runs, run_bench
from .table import check_orderings, summarise

__all__ = [
    "METHODS",
    "BenchConfig",
    "BenchResult",
    "Check",
    "Run",
    "check_orderings",
    "planned_runs",
    "run_bench",
    "summarise",
]
