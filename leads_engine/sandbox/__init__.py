"""Sandbox for untrusted code: static rules, OS lock-down and the one process runner.

An LLM agent may edit the source of a diffusion template (``catalogs/diffusion/*.py``) or of a
reaction model (``leads_engine/reactions/*.py``). That code is untrusted: the server process
never imports or executes it. It goes through two layers.

1. :mod:`.rules`: static checks (:func:`check_source`, pure ``ast`` analysis, nothing runs),
   each :class:`Violation` naming the line and the rule.
2. :mod:`.runner`: a fresh worker process (:class:`Worker`, :func:`run_sandboxed`) forked from
   a forkserver with torch, PyG and the engine preloaded, which :mod:`.lockdown` locks down
   (:func:`enter_sandbox`, :class:`SandboxLimits`) before the untrusted code is compiled:
   private empty working directory, scrubbed environment, rlimits, network/mount namespaces
   where the OS permits them, dropped capabilities, and an audit hook (:pep:`578`). The parent
   enforces the wall-clock limit, reads replies with ``torch.load(weights_only=True)`` and
   names every failure from one table of exit causes (:mod:`.exit_causes`).

The trial run of an edited diffusion source lives next to the diffusion code
(:mod:`leads_engine.diffusion_trial`), that of a reaction source in
:mod:`leads_engine.reaction_trial`; the server's training jobs run through the same runner.
"""

from __future__ import annotations

from .exit_causes import ExitCause, exception_reason, exit_cause, timeout_cause, worker_died
from .lockdown import LockdownState, SandboxError, SandboxLimits, enter_sandbox, lock_down
from .rules import (
    EDITED_FILENAME,
    EDITED_REACTION_FILENAME,
    MAX_SOURCE_CHARS,
    SourceKind,
    Violation,
    check_source,
)
from .runner import (
    MAX_MESSAGE_BYTES,
    PRELOAD,
    SETUP_SECONDS,
    Worker,
    WorkerChannel,
    WorkerOutcome,
    run_sandboxed,
    worker_context,
)

__all__ = [
    "EDITED_FILENAME",
    "EDITED_REACTION_FILENAME",
    "MAX_MESSAGE_BYTES",
    "MAX_SOURCE_CHARS",
    "PRELOAD",
    "SETUP_SECONDS",
    "ExitCause",
    "LockdownState",
    "SandboxError",
    "SandboxLimits",
    "SourceKind",
    "Violation",
    "Worker",
    "WorkerChannel",
    "WorkerOutcome",
    "check_source",
    "enter_sandbox",
    "exception_reason",
    "exit_cause",
    "lock_down",
    "run_sandboxed",
    "timeout_cause",
    "worker_context",
    "worker_died",
]
