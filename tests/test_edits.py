"""The offline policy's code edits (``leads_agent.edits``): textual transforms of a template's
source that must give code the engine builds."""

from __future__ import annotations

import pytest
from leads_agent.edits import EDITS, EditError, applicable_edits, apply_edit
from leads_agent.offline import detect_edits

from leads_engine.diffusion import list_templates, load_diffusion_class, template_source

NEURAL = [t.name for t in list_templates() if t.family == "neural"]


@pytest.mark.parametrize("template", NEURAL)
@pytest.mark.parametrize("edit", list(EDITS))
def test_every_edit_yields_valid_code_for_every_neural_template(template: str, edit: str):
    source = template_source(template)
    assert edit in applicable_edits(source)
    edited = apply_edit(edit, source)
    assert edited != source and detect_edits(edited) == [edit]
    module = load_diffusion_class(edited)(64)
    assert sum(p.numel() for p in module.parameters()) > 0
    for other in EDITS:  # edits compose; re-applying one is refused
        if other == edit:
            with pytest.raises(EditError):
                apply_edit(other, edited)
        else:
            load_diffusion_class(apply_edit(other, edited))(64)


def test_edits_refuse_physical_templates():
    assert applicable_edits(template_source("laplacian_nodewise")) == []


def test_an_unknown_edit_is_refused_by_name():
    with pytest.raises(EditError, match="no_such_edit"):
        apply_edit("no_such_edit", template_source("gcn"))
