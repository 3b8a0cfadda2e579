"""The default discovery's wall time, phase by phase, against the sum of its trainings' times.

Runs ``leads-agent discover`` (offline policy, defaults unless given) from an empty
``$LEADS_HOME`` (a temporary folder, or ``--home``), so the data set's generation is included,
and times the whole command. Then it reads the session back from the archive and prints, per
phase of the search (the reaction screening, the diffusion agenda, the diagnosis steps, the
fine-tuning and the test evaluation), the phase's wall time (first training start to last
training end) next to the sum of its trainings' own times: a ratio near 1 is one training at a
time, near 1/cores every core busy. The machine's load average (``os.getloadavg``) at the start
and the end is printed with it, since the machine may be shared.

    python benchmarks/discover_time.py [--dataset ap] [--home DIR] [--json FILE]
        [-- EXTRA leads-agent discover OPTIONS, e.g. --parallel 1]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_TRAINED = re.compile(r"candidate (\S+) \(")
#: the offline policy's phases by the step that ends them, for the default budget of 15
PHASES = (("screening", 6), ("agenda", 9), ("diagnosis", 15))


def run_discover(home: Path, dataset: str, extra: list[str]) -> tuple[dict[str, Any], float]:
    """Run the discovery; its JSON summary and its wall time in seconds."""
    agent = Path(sys.executable).with_name("leads-agent")
    command = [str(agent), "discover", "--dataset", dataset, "--json", *extra]
    env = {**os.environ, "LEADS_HOME": str(home)}
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"leads-agent discover failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), wall


def read_trainings(archive: Path, session_id: str | None = None) -> list[dict[str, Any]]:
    """Each candidate of the session (default: the archive's last) with the step that trained
    it, its start (UTC) and its training's seconds; each evaluation with its time."""
    import duckdb

    with duckdb.connect(str(archive), read_only=True) as con:
        if session_id is None:
            session_id = con.execute(
                "SELECT session_id FROM sessions ORDER BY created_at DESC LIMIT 1"
            ).fetchone()[0]
        rows = con.execute(
            "SELECT candidate_id, operation, created_at, wall_seconds FROM candidates "
            "WHERE session_id = ? ORDER BY created_at",
            [session_id],
        ).fetchall()
        steps = con.execute(  # the agent's steps (the rows with a thought), in order
            "SELECT observation FROM steps WHERE session_id = ? AND thought IS NOT NULL "
            "ORDER BY step",
            [session_id],
        ).fetchall()
        evaluations = con.execute(
            "SELECT e.created_at FROM evaluations e JOIN candidates c "
            "ON e.candidate_id = c.candidate_id WHERE c.session_id = ? ORDER BY e.created_at",
            [session_id],
        ).fetchall()
    step_of = {}
    for step, (observation,) in enumerate(steps, start=1):
        found = _TRAINED.match(observation or "")  # "candidate <id> (<reaction> + ..."
        if found:
            step_of[found.group(1)] = step
    trainings = [
        {
            "operation": r[1],
            "step": step_of.get(r[0], 0),
            "start": r[2],
            "seconds": float(r[3] or 0.0),
        }
        for r in rows
    ]
    trainings += [{"operation": "evaluate", "step": 0, "start": row[0]} for row in evaluations]
    return trainings


def phases(trainings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per phase: its steps, wall time (first start to last end) and its trainings' seconds."""
    rows = []
    first = 1
    for name, last in (*PHASES, ("fine-tune + test", None)):
        if last is None:
            members = [t for t in trainings if t["operation"] in ("finetune", "evaluate")]
        else:
            members = [
                t for t in trainings if t["operation"] != "finetune" and first <= t["step"] <= last
            ]
        if members:
            start = min(t["start"] for t in members)
            end = max((t["start"] - start).total_seconds() + t.get("seconds", 0.0) for t in members)
            rows.append(
                {
                    "phase": name,
                    "steps": f"{first}-{last}" if last else "",
                    "candidates": sum(1 for t in members if "seconds" in t),
                    "wall_s": round(end, 1),
                    "trainings_s": round(sum(t.get("seconds", 0.0) for t in members), 1),
                    "start": start,
                }
            )
        first = (last or 0) + 1
    return rows


def print_phases(rows: list[dict[str, Any]], launched: datetime | None) -> None:
    """The phase table (and the start-up before the first training, when launched is known)."""
    if rows and launched is not None:
        before = (rows[0]["start"] - launched).total_seconds()
        print(f"start-up and data generation until the first training: {before:.1f} s")
    print(
        f"{'phase':<18} {'steps':>6} {'cands':>5} {'wall s':>8} "
        f"{'sum of trainings s':>19} {'ratio':>6}"
    )
    for row in rows:
        ratio = row["wall_s"] / row["trainings_s"] if row["trainings_s"] else float("nan")
        print(
            f"{row['phase']:<18} {row['steps']:>6} {row['candidates']:>5} {row['wall_s']:>8.1f} "
            f"{row['trainings_s']:>19.1f} {ratio:>6.2f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ap", help="data set (default ap)")
    parser.add_argument("--home", type=Path, help="an empty LEADS_HOME (default: a temporary one)")
    parser.add_argument(
        "--phases-of",
        type=Path,
        metavar="HOME",
        help="run nothing: print the phases of the last session in HOME/archive.duckdb",
    )
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("extra", nargs="*", help="more leads-agent discover options (after --)")
    args = parser.parse_args(argv)
    if args.phases_of:
        print_phases(phases(read_trainings(args.phases_of / "archive.duckdb")), None)
        return 0
    home = args.home or Path(tempfile.mkdtemp(prefix="leads-discover-"))
    if home.exists() and any(home.iterdir()):
        raise SystemExit(f"{home} is not empty: the measurement starts from an empty LEADS_HOME")
    home.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()[0]
    launched = datetime.now(UTC).replace(tzinfo=None)  # as the archive stores its times
    try:
        summary, wall = run_discover(home, args.dataset, args.extra)
        load_end = os.getloadavg()[0]
        rows = phases(read_trainings(home / "archive.duckdb", summary["session_id"]))
    finally:
        if args.home is None:
            shutil.rmtree(home, ignore_errors=True)
    best = summary.get("best") or {}
    revealed = summary.get("revealed") or {}
    reaction = (revealed.get("aliases") or {}).get(best.get("reaction"), best.get("reaction"))
    test = summary.get("test") or {}
    print(f"leads-agent discover --dataset {args.dataset} {' '.join(args.extra)}".rstrip())
    print(
        f"wall time {wall:.1f} s; load average {load_start:.2f} at the start, "
        f"{load_end:.2f} at the end"
    )
    print_phases(rows, launched)
    print(
        f"chosen: {reaction} + {best.get('diffusion')}; test MSE {test.get('mse')}, "
        f"AT MAE {test.get('at_mae_ms')} ms"
    )
    if args.json:
        payload = {
            "wall_s": wall,
            "load_start": load_start,
            "load_end": load_end,
            "phases": [{k: v for k, v in r.items() if k != "start"} for r in rows],
            "chosen": {"reaction": reaction, "diffusion": best.get("diffusion")},
            "test": test,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
