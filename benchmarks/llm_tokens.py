"""Tokens of an LLM search: input tokens per step and the share read from the prompt cache.

Runs a whole search (default 15 steps, 1 epoch per candidate, no fine-tuning) with the scripted
model of ``tests/fake_llm_endpoints.py`` behind a fake Anthropic (or OpenAI) endpoint on
127.0.0.1, through the bundled server in process, on the 4-sample, 200-node ``tiny`` data set
(generated under a temporary ``$LEADS_HOME``). The fake endpoint counts a token per 4
characters of JSON and applies the API's caching rules (breakpoints, 20-block lookback, 1024
tokens minimum), so the share is computed from what the client sends, not assumed.

    python benchmarks/llm_tokens.py [--steps 15] [--provider anthropic|openai] [--observe]

Prints one row per step (requests, input tokens, of which cache reads and writes) and the
totals: cache-read share, the growth of input per step (first and last five steps), and the
cost at the model's list price.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fake_llm_endpoints import ScriptedModel  # noqa: E402
from scripted_search import scripted_search  # noqa: E402
from server_calls import save_tiny  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--provider", choices=("anthropic", "openai"), default="anthropic")
    parser.add_argument(
        "--observe",
        action="store_true",
        help="the model reads the template's source each step (a long tool result)",
    )
    args = parser.parse_args()
    logging.disable(logging.INFO)
    with tempfile.TemporaryDirectory() as folder:
        home = Path(folder)
        os.environ["LEADS_HOME"] = str(home)
        save_tiny(home)
        model = ScriptedModel(observe=args.observe)
        result, steps, _ = scripted_search(home, args.provider, args.steps, model)
    print(f"{'step':>4} {'requests':>8} {'input':>8} {'cache read':>10} {'cache write':>11}")
    for row in steps:
        print(
            f"{row.step:>4} {row.requests:>8} {row.input_tokens:>8} "
            f"{row.cache_read_tokens:>10} {row.cache_creation_tokens:>11}"
        )
    usage = result.usage
    share = usage.cache_read_tokens / usage.input_tokens
    inputs = [row.input_tokens for row in steps]
    early = (inputs[4] - inputs[0]) / 4 if len(inputs) >= 5 else float("nan")
    late = (inputs[-1] - inputs[-5]) / 4 if len(inputs) >= 5 else float("nan")
    cost = f"${usage.cost_usd:.4f}" if usage.cost_usd is not None else "unknown"
    print(
        f"total: {usage.requests} requests, {usage.input_tokens} input tokens, "
        f"{usage.cache_read_tokens} cache reads ({100 * share:.1f}%), "
        f"{usage.cache_creation_tokens} cache writes, {usage.output_tokens} output; "
        f"cost {cost} ({usage.model})"
    )
    print(f"input growth per step: {early:.0f} tokens (steps 1-5), {late:.0f} (last 5 steps)")
    print(f"completed: {result.completed}; repairs: {result.repairs}")


if __name__ == "__main__":
    main()
