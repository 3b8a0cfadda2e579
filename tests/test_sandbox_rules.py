"""The sandbox's static rules (``leads_engine.sandbox.rules``): nothing runs."""

from __future__ import annotations

import pytest

from leads_engine.diffusion import template_source
from leads_engine.sandbox import Violation, check_source


def test_static_violation_names_line_and_rule():
    source = template_source("laplacian_global").replace(
        "        super().__init__()\n",
        "        super().__init__()\n        self.leak = torch.os.environ\n",
    )
    line = source.splitlines().index("        self.leak = torch.os.environ") + 1
    violations = check_source(source)
    assert Violation(line, "forbidden-attribute", violations[0].message) in violations
    assert "line" in str(violations[0]) and "forbidden-attribute" in str(violations[0])


@pytest.mark.parametrize(
    ("source", "rule"),
    [
        ("x = (", "syntax"),
        ("import torch\n", "interface"),
        ("import numpy\n", "import-not-allowed"),
        ("print('hi')\n", "module-side-effect"),
        ("def f():\n    global x\n", "forbidden-statement"),
        ("def f(x):\n    return x._modules\n", "no-private"),
        ("def f(x):\n    return type('A', (), {})\n", "forbidden-call"),
        ("x = 1\n" * 20_000, "too-large"),
    ],
)
def test_static_rules(source: str, rule: str):
    assert rule in {v.rule for v in check_source(source)}


def test_interface_signatures():
    base = template_source("laplacian_global")
    bad_forward = base.replace("def forward(self, u: torch.Tensor, graph)", "def forward(self, u)")
    assert "interface" in {v.rule for v in check_source(bad_forward)}
    bad_init = base.replace("conductivity: float = 1.0", "conductivity: float")
    assert "interface" in {v.rule for v in check_source(bad_init)}
    twice = base + "\n\nclass Diffusion(nn.Module):\n    pass\n"
    assert "interface" in {v.rule for v in check_source(twice)}
