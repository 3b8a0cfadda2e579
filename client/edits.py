"""A small library of sound code edits for the neural diffusion templates (``modify``).

Every neural template of the catalog is flux-form: ``edge_conductance`` returns
``graph.edge_weight * F.softplus(self.raw_conductivity + self.gain * <learned>)`` and the
constructor holds ``self.gain = nn.Parameter(torch.tensor(0.1))``. Each edit is a purely
textual transform of such a source that keeps it a valid, self-contained template:

* ``gated_residual``: a learnable gate mixes the learned conductance with the plain FE
  conductance ``w_FE * softplus(c)``, so the network can only move away from physics as far as
  the data asks (a residual connection to the physical operator);
* ``layer_norm``: layer normalisation (parameter free, ``F.layer_norm``) of the hidden node
  features between graph layers, or of the edge MLP's hidden layers;
* ``soft_gain``: a softer output gain, ``g * tanh(learned)`` started at 0.02 instead of
  ``g * learned`` at 0.1, which bounds how far the conductance can swing (stability).

An edit that does not apply to a source raises :class:`EditError` rather than returning code
that silently does nothing.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["EDITS", "CodeEdit", "EditError", "apply_edit", "applicable_edits"]


class EditError(ValueError):
    """The edit does not apply to this source (the pattern it rewrites is absent)."""


_RETURN = re.compile(
    r"^(?P<indent>[ \t]+)(?P<lhs>return |learned = )graph\.edge_weight \* F\.softplus\("
    r"(?P<inner>.+)\)[ \t]*$",
    re.MULTILINE,
)
_GAIN_INIT = re.compile(
    r"^(?P<indent>[ \t]+)self\.gain = nn\.Parameter\(torch\.tensor\((?P<value>[0-9.eE+-]+)\)\)"
    r"[ \t]*$",
    re.MULTILINE,
)
_GAIN_TERM = re.compile(r"self\.gain \* (?P<term>\(.+\)|[A-Za-z_][A-Za-z_0-9\[\]\.]*)$")
_ACT_LINE = re.compile(r"^(?P<indent>[ \t]+)h = self\.act\(h\)[ \t]*$", re.MULTILINE)
_MLP_NORM = re.compile(r"norm=None")


def _require(match: re.Match[str] | None, what: str) -> re.Match[str]:
    if match is None:
        raise EditError(f"the source has no {what}")
    return match


def _gated_residual(source: str) -> str:
    if "self.mix_logit" in source:
        raise EditError("the source is already gated")
    init = _require(_GAIN_INIT.search(source), "'self.gain = nn.Parameter(...)' line")
    indent = init["indent"]
    source = (
        source[: init.end()]
        + f"\n{indent}self.mix_logit = nn.Parameter(torch.tensor(0.0))"
        + source[init.end() :]
    )
    ret = _require(_RETURN.search(source), "'return graph.edge_weight * F.softplus(...)' line")
    if ret["lhs"] != "return ":
        raise EditError("the source is already gated")
    pad = ret["indent"]
    replacement = (
        f"{pad}learned = graph.edge_weight * F.softplus({ret['inner']})\n"
        f"{pad}plain = graph.edge_weight * F.softplus(self.raw_conductivity)\n"
        f"{pad}gate = torch.sigmoid(self.mix_logit)\n"
        f"{pad}return gate * learned + (1.0 - gate) * plain"
    )
    return source[: ret.start()] + replacement + source[ret.end() :]


def _layer_norm(source: str) -> str:
    if "layer_norm" in source:
        raise EditError("the source already normalises its features")
    if _ACT_LINE.search(source):
        return _ACT_LINE.sub(
            lambda m: f"{m['indent']}h = F.layer_norm(self.act(h), h.shape[-1:])", source
        )
    if _MLP_NORM.search(source) and "MLP(" in source:
        return _MLP_NORM.sub('norm="layer_norm"', source, count=1)
    raise EditError("the source has no hidden activation 'h = self.act(h)' nor an MLP norm")


def _soft_gain(source: str) -> str:
    if "torch.tanh" in source:
        raise EditError("the gain is already soft")
    ret = _require(_RETURN.search(source), "'return graph.edge_weight * F.softplus(...)' line")
    term = _require(_GAIN_TERM.search(ret["inner"]), "'self.gain * <learned>' term")
    inner = ret["inner"][: term.start()] + f"self.gain * torch.tanh({term['term']})"
    line = f"{ret['indent']}{ret['lhs']}graph.edge_weight * F.softplus({inner})"
    source = source[: ret.start()] + line + source[ret.end() :]
    init = _require(_GAIN_INIT.search(source), "'self.gain = nn.Parameter(...)' line")
    new_init = f"{init['indent']}self.gain = nn.Parameter(torch.tensor(0.02))"
    return source[: init.start()] + new_init + source[init.end() :]


@dataclass(frozen=True)
class CodeEdit:
    """One named source transform and the reason an agent would apply it."""

    name: str
    purpose: str
    transform: Callable[[str], str]


EDITS: dict[str, CodeEdit] = {
    edit.name: edit
    for edit in (
        CodeEdit(
            "gated_residual",
            "mix the learned conductance with the plain FE conductance through a learnable "
            "gate (a residual path to the physical operator)",
            _gated_residual,
        ),
        CodeEdit(
            "layer_norm",
            "layer-normalise the hidden features so that deeper networks train evenly",
            _layer_norm,
        ),
        CodeEdit(
            "soft_gain",
            "bound the learned conductance swing with g * tanh(.) and a smaller initial gain",
            _soft_gain,
        ),
    )
}


def apply_edit(name: str, source: str) -> str:
    """Apply the edit ``name`` to a template ``source``; the result parses as Python."""
    try:
        edit = EDITS[name]
    except KeyError:
        raise EditError(f"unknown edit {name!r}; choose one of {', '.join(EDITS)}") from None
    edited = edit.transform(source)
    try:
        ast.parse(edited)
    except SyntaxError as exc:  # a bug in the transform, never expected
        raise EditError(f"edit {name!r} produced invalid code: {exc}") from exc
    return edited


def applicable_edits(source: str) -> list[str]:
    """The names of the edits that apply to ``source`` (in library order)."""
    names = []
    for name in EDITS:
        try:
            apply_edit(name, source)
        except EditError:
            continue
        names.append(name)
    return names
