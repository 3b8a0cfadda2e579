"""A custom search loop of your own over the LEADS tools: anonymised reactions compared under
one diffusion, then the diffusion templates tried with the winner, each training started in the
background and polled (no request stays open for a whole fit).

    python examples/custom_search.py --dataset ap --budget 8
"""

from __future__ import annotations

import argparse

import anyio
from leads_server import connect
from leads_server.scripting import Tools

TEMPLATES = ("laplacian_global", "laplacian_nodewise", "gcn", "gat")


async def train(tools: Tools, sid: str, epochs: int) -> float:
    """Train the draft in the background and wait for it; its best validation loss."""
    started = await tools.train_candidate(sid, epochs=epochs, wait=False)
    while not (progress := await tools.wait_candidate(started.candidate_id, 30)).done:
        print(f"  {progress.message}")
    loss = progress.result.best_val_loss if progress.result else None
    return float("inf") if loss is None else loss


async def search(dataset: str, budget: int, epochs: int) -> None:
    async with connect() as tools:
        session = await tools.start_session(dataset=dataset, budget=budget, epochs=epochs)
        sid, left = session.session_id, budget
        losses: dict[str, float] = {}
        for reaction in session.reactions[: max(1, budget // 2)]:  # half the budget: reactions
            await tools.select_reaction(sid, reaction)
            await tools.select_diffusion(sid, TEMPLATES[0])
            losses[reaction] = await train(tools, sid, epochs)
            left -= 1
        best = min(losses, key=losses.__getitem__)
        print(f"reaction: {best} (val {losses[best]:.4g})")
        for template in TEMPLATES[1 : 1 + left]:  # the rest: diffusion structures
            await tools.select_reaction(sid, best)
            await tools.select_diffusion(sid, template)
            print(f"{template}: val {await train(tools, sid, epochs):.4g}")
        table = await tools.query_archive(
            "SELECT candidate_id, reaction, diffusion, val_loss FROM candidates "
            "ORDER BY val_loss NULLS LAST",
            session_id=sid,
        )
        for row in table.rows:
            print(*row, sep="\t")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ap")
    parser.add_argument("--budget", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    anyio.run(search, args.dataset, args.budget, args.epochs)


if __name__ == "__main__":
    main()
