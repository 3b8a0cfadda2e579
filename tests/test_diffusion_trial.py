"""The diffusion trial run (``leads_engine.diffusion_trial``) and the hostile-input corpus.

Every file in ``tests/hostile/`` is a full template-shaped source with three header lines:

    # hostile: what it attempts
    # expect-static: the static rule that must refuse it, or "none" (only the worker can tell)
    # expect-dynamic: "|"-separated phrases, one of which must appear in the refusal when the
    #                 source runs in the sandbox *without* the static checks (defence in depth);
    #                 "skip" where only the static layer is claimed

After the corpus, nothing may have escaped: the canary file is unchanged, no marker file
(``LEADS_PWNED``) exists in /tmp or the repository, no sandbox folder is left behind, and this
process still validates a legitimate edit.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from leads_engine.diffusion import list_templates, template_source
from leads_engine.diffusion_trial import dynamic_check, validate_diffusion_source
from leads_engine.sandbox import (
    EDITED_FILENAME,
    SandboxError,
    SandboxLimits,
    Violation,
    check_source,
    run_sandboxed,
)

REPO = Path(__file__).resolve().parents[1]
HOSTILE = sorted((Path(__file__).parent / "hostile").glob("*.py"))
CANARY_DIR = Path("/tmp/leads_canary_dir")
CANARY = CANARY_DIR / "canary.txt"
CANARY_TEXT = "untouched\n"
MARKER = "LEADS_PWNED"
LIMITS = SandboxLimits(memory_bytes=3 * 2**30, file_size_bytes=8 * 2**20, cpu_seconds=30)
TIMEOUT = 4.0

pytestmark = pytest.mark.skipif(os.name != "posix", reason="the sandbox needs POSIX")


def load_entry(path: Path) -> tuple[str, str, list[str] | None]:
    """(source, expected static rule or 'none', accepted dynamic phrases or None)."""
    source = path.read_text(encoding="utf-8").replace("@REPO@", str(REPO))
    headers = dict(
        line[2:].split(": ", 1) for line in source.splitlines()[:3] if line.startswith("# ")
    )
    dynamic = headers["expect-dynamic"].strip()
    phrases = None if dynamic == "skip" else [p.lower() for p in dynamic.split("|")]
    return source, headers["expect-static"].strip(), phrases


def sandbox_dirs() -> set[str]:
    return {p.name for p in Path("/tmp").iterdir() if p.name.startswith("leads-sandbox-")}


def escaped_markers() -> list[str]:
    found = []
    for root in (Path("/tmp"), REPO, CANARY_DIR, Path.cwd()):
        with_marker = [p for p in root.iterdir() if MARKER in p.name] if root.is_dir() else []
        found.extend(str(p) for p in with_marker)
    return found


@pytest.fixture(scope="module", autouse=True)
def canary():
    """A canary outside the sandbox, and the /tmp listing before the corpus runs."""
    CANARY_DIR.mkdir(exist_ok=True)
    CANARY.write_text(CANARY_TEXT)
    assert not escaped_markers(), "marker files exist before the tests: remove them"
    yield sandbox_dirs()


def test_corpus_is_large_enough():
    assert len(HOSTILE) >= 30
    statics = {load_entry(p)[1] for p in HOSTILE}
    assert {"import-not-allowed", "forbidden-call", "forbidden-attribute", "no-dunder"} <= statics
    assert "none" in statics  # some entries only the worker can catch


@pytest.mark.parametrize("path", HOSTILE, ids=[p.stem for p in HOSTILE])
def test_hostile_source_is_refused(path: Path):
    source, static, phrases = load_entry(path)
    report = validate_diffusion_source(source, timeout_s=TIMEOUT, limits=LIMITS)
    assert not report.accepted, report.message
    assert report.violations and all(isinstance(v, Violation) for v in report.violations)
    if static != "none":
        rules = {v.rule for v in report.violations}
        assert static in rules, report.message
        assert report.seconds < 1.0  # refused before any worker starts
        assert all(v.line > 0 for v in report.violations if v.rule == static)
    else:
        text = f"{report.message} {report.traceback}".lower()
        assert phrases and any(p in text for p in phrases), report.message


DYNAMIC = [p for p in HOSTILE if load_entry(p)[1] != "none" and load_entry(p)[2] is not None]


@pytest.mark.parametrize("path", DYNAMIC, ids=[p.stem for p in DYNAMIC])
def test_hostile_source_is_contained_without_static_checks(path: Path):
    """Defence in depth: the worker alone also stops what the static rules refuse."""
    source, _, phrases = load_entry(path)
    try:
        result = run_sandboxed(dynamic_check, source, {}, limits=LIMITS, timeout_s=TIMEOUT)
        assert not result["accepted"], result
        text = f"{result['rule']} {result['message']}".lower()
    except SandboxError as exc:
        text = f"{exc.reason} {exc} {exc.traceback}".lower()
    assert any(p in text for p in phrases), text


# ----------------------------------------------------------------------------- feedback


def test_runtime_error_reports_line_and_trimmed_traceback():
    source = template_source("laplacian_global").replace(
        "    def forward(self, u: torch.Tensor, graph) -> torch.Tensor:\n",
        "    def forward(self, u: torch.Tensor, graph) -> torch.Tensor:\n"
        "        u = u @ torch.ones(3, 3)\n",
    )
    line = source.splitlines().index("        u = u @ torch.ones(3, 3)") + 1
    report = validate_diffusion_source(source, timeout_s=TIMEOUT, limits=LIMITS)
    assert not report.accepted
    assert report.violations[0].rule == "runtime-error"
    assert report.violations[0].line == line
    assert f"line {line}, in forward" in report.traceback
    assert "site-packages" not in report.traceback and "runner.py" not in report.traceback
    assert "diffusion_trial.py" not in report.traceback
    assert "RuntimeError" in report.traceback


def test_timeout_names_the_slow_line():
    path = Path(__file__).parent / "hostile" / "infinite_loop.py"
    source = load_entry(path)[0]
    started = time.perf_counter()
    report = validate_diffusion_source(source, timeout_s=2.0, limits=LIMITS)
    assert time.perf_counter() - started < 5.0
    assert report.violations[0].rule == "timeout"
    lines = source.splitlines()
    assert lines[report.violations[0].line - 1].strip() in {"while True:", "pass"}


def test_printed_output_is_returned_in_a_tail():
    source = template_source("laplacian_global").replace(
        "        super().__init__()\n", "        super().__init__()\n        print('hello agent')\n"
    )
    report = validate_diffusion_source(source, timeout_s=TIMEOUT, limits=LIMITS)
    assert report.accepted, report.message


# ----------------------------------------------------------------------------- legitimate


@pytest.mark.parametrize("name", [t.name for t in list_templates()])
def test_catalog_templates_are_accepted(name: str):
    source = template_source(name)
    assert check_source(source) == []
    report = validate_diffusion_source(source, limits=LIMITS)
    assert report.accepted, f"{report.message}\n{report.traceback}\n{report.output}"
    assert report.parameter_count is not None


GATED_GAT_INIT = """        self.gain = nn.Parameter(torch.tensor(0.1))
        self.gate = nn.Parameter(torch.tensor(0.0))  # residual gate, sigmoid(0) = 0.5
"""
GATED_GAT_RETURN = """        learned = graph.edge_weight * F.softplus(
            self.raw_conductivity + self.gain * (h[src] + h[dst])
        )
        plain = graph.edge_weight * F.softplus(self.raw_conductivity)
        mix = torch.sigmoid(self.gate)
        return mix * learned + (1.0 - mix) * plain
"""


def test_gat_with_residual_gate_is_accepted():
    source = template_source("gat")
    old_return = (
        "        return graph.edge_weight * F.softplus(self.raw_conductivity"
        " + self.gain * (h[src] + h[dst]))\n"
    )
    assert old_return in source
    source = source.replace("        self.gain = nn.Parameter(torch.tensor(0.1))\n", GATED_GAT_INIT)
    source = source.replace(old_return, GATED_GAT_RETURN)
    report = validate_diffusion_source(source, limits=LIMITS)
    assert report.accepted, f"{report.message}\n{report.traceback}"
    baseline = validate_diffusion_source(template_source("gat"), limits=LIMITS)
    assert report.parameter_count == baseline.parameter_count + 1
    assert EDITED_FILENAME.startswith("<edited")


# ----------------------------------------------------------------------------- nothing escaped


def test_zz_nothing_escaped_and_the_caller_still_works(canary):
    assert CANARY.read_text() == CANARY_TEXT
    assert escaped_markers() == []
    assert sandbox_dirs() <= canary, f"left behind: {sandbox_dirs() - canary}"
    report = validate_diffusion_source(template_source("laplacian_global"), limits=LIMITS)
    assert report.accepted, report.message


def test_an_anisotropic_stiffness_with_negative_conductances_passes() -> None:
    """An edited anisotropic template has a few negative FE conductances (obtuse cells with
    respect to the fibres); its Laplacian stays positive semi-definite, so the trial accepts it,
    while conductances that create energy are still refused."""
    from leads_engine.diffusion import template_source
    from leads_engine.diffusion_trial import dynamic_check

    source = template_source("laplacian_anisotropic")
    report = dynamic_check(source, {"anisotropy": 3.0})
    assert report["accepted"], report["message"]

    negated = source.replace(
        "def edge_conductance(self, u: torch.Tensor, graph) -> torch.Tensor:",
        "def edge_conductance(self, u: torch.Tensor, graph) -> torch.Tensor:\n"
        "        return -self._conductance(u, graph)\n\n"
        "    def _conductance(self, u: torch.Tensor, graph) -> torch.Tensor:",
    )
    assert negated != source
    refused = dynamic_check(negated, {"anisotropy": 3.0})
    assert not refused["accepted"] and refused["rule"] == "conductance-negative"
