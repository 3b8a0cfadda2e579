"""A scripted baseline through the LEADS tools: every reaction under one cheap diffusion, then
the best one fine-tuned and evaluated.

    python examples/scripted_baseline.py --dataset ap --budget 5
"""

from __future__ import annotations

import argparse

import anyio
from leads_server import connect


async def baseline(dataset: str, budget: int, epochs: int) -> None:
    async with connect() as tools:
        session = await tools.start_session(
            dataset=dataset, budget=budget, epochs=epochs, anonymise=False
        )
        sid = session.session_id
        for reaction in session.reactions[:budget]:
            await tools.select_reaction(sid, reaction)
            await tools.select_diffusion(sid, "laplacian_global")
            trained = await tools.train_candidate(sid)
            print(f"{reaction:24s} {trained.status:9s} val {trained.best_val_loss}")
        ranking = await tools.query_archive(
            "SELECT candidate_id, reaction, val_loss FROM candidates "
            "WHERE status = 'ok' ORDER BY val_loss LIMIT 1",
            session_id=sid,
        )
        best_id, reaction, val_loss = ranking.rows[0]
        print(f"best: {best_id} ({reaction}), val loss {val_loss:.4g}")
        tuned = await tools.finetune_candidate(sid, best_id, epochs=epochs)
        scores = await tools.evaluate_candidate(sid, tuned.candidate_id)
        print(f"fine-tuned {tuned.candidate_id}: test MSE {scores.mse:.4g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ap")
    parser.add_argument("--budget", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    anyio.run(baseline, args.dataset, args.budget, args.epochs)


if __name__ == "__main__":
    main()
