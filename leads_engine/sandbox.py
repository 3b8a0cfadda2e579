"""Sandbox for agent-edited diffusion source: static checks, then a locked-down worker process.

An LLM agent may edit the source of a diffusion template (``catalogs/diffusion/*.py``). That
code is untrusted: the server process never imports or executes it. It goes through two layers.

**1. Static checks** (:func:`check_source`, pure ``ast`` analysis, nothing runs). Each
:class:`Violation` names the line and one of these rules:

* ``syntax``: the source does not parse (or contains NUL bytes, or nests too deeply).
* ``too-large``: more than :data:`MAX_SOURCE_CHARS` characters.
* ``import-not-allowed``: an import outside :data:`ALLOWED_IMPORTS` (``math``, ``torch``,
  ``torch.nn``, ``torch.nn.functional``, ``torch.nn.init``, ``torch_geometric`` and its
  submodules, and ``from __future__ import annotations``); relative or ``*`` imports; the
  refused modules :data:`DENIED_MODULES` (``torch.utils.cpp_extension``, ``torch.hub``,
  ``torch.ops``, ``torch.classes``, ``torch.library``, ``torch._C``, ``torch_geometric.io``,
  ``torch_geometric.datasets``, ``torch_geometric.data.download``, ...); importing a refused
  or private name (``from torch import load``).
* ``forbidden-call``: any reference to a builtin in :data:`FORBIDDEN_NAMES` (``eval``,
  ``exec``, ``compile``, ``open``, ``__import__``, ``getattr``, ``setattr``, ``delattr``,
  ``globals``, ``locals``, ``vars``, ``input``, ``breakpoint``, ``memoryview``, ``exit``, ...),
  called or not (aliasing ``f = eval`` is refused too), and ``type(...)`` with 3 arguments.
* ``forbidden-attribute``: an attribute in :data:`DENIED_ATTRIBUTES` on any object (``load``,
  ``save``, ``hub``, ``ops``, ``classes``, ``library``, ``cpp_extension``, ``from_file``,
  ``download_url``, ``system``, ``popen``, ``os``, ``sys``, ``jit``, ``compile``, frame and
  traceback attributes such as ``f_globals``/``gi_frame``/``tb_frame``, ``mro``, ...).
  torch re-exports ``os``, ``sys``, ``ctypes``, ``importlib`` as attributes, so names are
  refused wherever they appear, whatever the object.
* ``no-private``: an attribute starting with ``_`` on anything other than ``self``
  (``torch._C``, ``graph._gradients``).
* ``no-dunder``: any name, attribute, argument, keyword or non-docstring string containing a
  ``__dunder__``, except defining ``__init__`` methods and calling ``super().__init__(...)``.
* ``module-side-effect``: a top-level (or class-body) statement other than imports, ``def``,
  ``class``, the docstring and simple constant assignments (``EPS = 1e-6``; no calls); class
  decorators and class keywords (``metaclass=``); function decorators other than
  ``property``/``staticmethod``/``classmethod``/``x.setter``/``torch.no_grad``.
* ``forbidden-statement``: ``global``, ``async def``, ``await``, ``async for``/``with``.
* ``interface``: not exactly one ``class Diffusion(<base>)``, ``__init__`` not
  ``(self, num_nodes, ...)`` with defaults for every further parameter, ``forward`` not
  ``(self, u, graph)``, ``edge_conductance`` (optional) not ``(self, u, graph)``.

String annotations (evaluated later by PyG's type inspection) are parsed and checked as code.

**2. Dynamic checks** (:func:`validate_diffusion_source`) in a fresh worker process forked
from a ``multiprocessing`` forkserver that has torch, PyG and this module preloaded, so that
a candidate costs a fork rather than a torch import. :func:`enter_sandbox` locks the worker
down before the untrusted code is compiled: private empty working directory, scrubbed
environment, rlimits, network/mount namespaces where the OS permits them, dropped
capabilities, and an audit hook (:pep:`578`) refusing process creation, sockets, ctypes,
file access outside the sandbox and more. The worker instantiates ``Diffusion(num_nodes,
**hyperparameters)`` on a small mesh graph and checks ``forward`` (shape ``[B*N, 1]``,
float32, finite), ``edge_conductance`` if defined (``[B*2E]``, finite, >= 0) and that
gradients flow. Dynamic rules: ``runtime-error``, ``output-shape``, ``output-dtype``,
``output-nonfinite``, ``no-gradient``, ``gradient-nonfinite``, ``conductance-shape``,
``conductance-nonfinite``, ``conductance-negative``, ``timeout``, ``cpu-time``, ``memory``,
``output-too-large``, ``sandbox-denied``, ``killed``, ``crashed``.

The parent enforces the wall-clock limit (SIGKILL to the worker's process group), reads at most
:data:`MAX_RESULT_BYTES` back and deserialises them with ``torch.load(weights_only=True)``,
never with plain pickle, so a compromised worker cannot run code in the server either.
"""

from __future__ import annotations

import ast
import contextlib
import ctypes
import errno
import importlib.util
import io
import json
import linecache
import multiprocessing
import os
import re
import signal
import stat
import sys
import sysconfig
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

__all__ = [
    "Violation",
    "check_source",
    "SandboxLimits",
    "SandboxError",
    "enter_sandbox",
    "run_sandboxed",
    "ValidationReport",
    "validate_diffusion_source",
    "EDITED_FILENAME",
]

T = TypeVar("T")

#: The filename given to ``compile()`` for edited source: tracebacks keep only its frames.
EDITED_FILENAME = "<edited diffusion>"
MAX_SOURCE_CHARS = 100_000
#: Largest reply a worker may send back (serialised result).
MAX_RESULT_BYTES = 256 * 2**20
#: Characters of the worker's stdout/stderr tail kept in reports.
OUTPUT_TAIL_CHARS = 4000

# ----------------------------------------------------------------------------- static rules

ALLOWED_IMPORTS = frozenset({"math", "torch", "torch.nn", "torch.nn.functional", "torch.nn.init"})
ALLOWED_IMPORT_PREFIXES = ("torch_geometric",)  # the package and all its submodules ...
DENIED_MODULES = (  # ... except these (and their submodules)
    "torch.utils.cpp_extension",
    "torch.hub",
    "torch.ops",
    "torch.classes",
    "torch.library",
    "torch._C",
    "torch_geometric.io",
    "torch_geometric.datasets",
    "torch_geometric.data.download",
    "torch_geometric.data.extract",
    "torch_geometric.graphgym",
    "torch_geometric.distributed",
    "torch_geometric.loader",
    "torch_geometric.llm",
    "torch_geometric.testing",
    "torch_geometric.profile",
)
FORBIDDEN_NAMES = frozenset(
    {
        "eval", "exec", "compile", "open", "__import__", "getattr", "setattr", "delattr",
        "globals", "locals", "vars", "input", "breakpoint", "memoryview", "help", "exit",
        "quit", "copyright", "credits", "license", "reload", "execfile", "__builtins__",
        "__loader__", "__spec__",
    }
)  # fmt: skip
DENIED_ATTRIBUTES = frozenset(
    {
        # file, process and code loading entry points of torch / PyG / numpy
        "load", "save", "hub", "ops", "classes", "library", "cpp_extension", "from_file",
        "download_url", "download_url_to_file", "load_url", "load_state_dict_from_url",
        "model_zoo", "extract_zip", "extract_tar", "extract_gz", "extract_bz2", "fs",
        "from_pretrained", "save_pretrained", "push_to_hub", "tofile", "fromfile", "dump",
        "dumps", "loads", "serialization", "jit", "compile", "package", "onnx", "export",
        "profiler", "tensorboard", "distributed", "multiprocessing", "datasets", "io",
        "download", "graphgym", "cuda",
        # modules that torch re-exports as attributes (torch.os, torch.sys, ...)
        "os", "sys", "subprocess", "builtins", "importlib", "ctypes", "socket", "shutil",
        "pickle", "marshal", "signal", "threading", "glob", "inspect", "platform", "pathlib",
        "tempfile", "urllib", "http", "requests", "gc", "runpy", "pty", "mmap",
        # os-style operations
        "system", "popen", "fork", "forkpty", "spawn", "spawnv", "spawnl", "execv", "execve",
        "execl", "execvp", "posix_spawn", "kill", "killpg", "remove", "unlink", "rmdir",
        "rename", "chmod", "chown", "symlink", "environ", "putenv", "urlopen", "urlretrieve",
        # frames, code objects and class-hierarchy walks
        "f_globals", "f_locals", "f_builtins", "f_back", "f_code", "gi_frame", "gi_code",
        "cr_frame", "cr_code", "ag_frame", "ag_code", "tb_frame", "tb_next", "co_code",
        "func_globals", "mro",
    }
)  # fmt: skip
ALLOWED_DECORATORS = frozenset({"property", "staticmethod", "classmethod"})
ALLOWED_DECORATOR_CALLS = frozenset({"torch.no_grad", "torch.enable_grad"})
_DUNDER = re.compile(r"__\w+__")


@dataclass(frozen=True)
class Violation:
    """One problem found in a source: the 1-based line (0: the whole file), a rule, a message."""

    line: int
    rule: str
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line else "file"
        return f"{where} [{self.rule}] {self.message}"


def _is_dunder(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def _dotted(node: ast.AST) -> str | None:
    """``a.b.c`` for a chain of attribute accesses on a name, else ``None``."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _module_refused(module: str) -> str | None:
    """Why importing ``module`` is refused, or ``None`` if it is allowed."""
    for denied in DENIED_MODULES:
        if module == denied or module.startswith(denied + "."):
            return f"module {module!r} is refused (file, network or native-code access)"
    if any(part.startswith("_") for part in module.split(".")):
        return f"private module {module!r} is refused"
    if module in ALLOWED_IMPORTS or any(
        module == p or module.startswith(p + ".") for p in ALLOWED_IMPORT_PREFIXES
    ):
        return None
    allowed = ", ".join(sorted(ALLOWED_IMPORTS)) + ", torch_geometric[.*]"
    return f"import of {module!r} is not allowed; allowed: {allowed}"


def _is_super_init(node: ast.Attribute) -> bool:
    """``super().__init__`` (or ``super(Cls, self).__init__``)."""
    value = node.value
    return (
        node.attr == "__init__"
        and isinstance(value, ast.Call)
        and isinstance(value.func, ast.Name)
        and value.func.id == "super"
    )


def _is_constant_expression(node: ast.AST) -> bool:
    """Literals, names, attribute chains and arithmetic on them: no calls, no comprehensions."""
    if isinstance(node, ast.Constant | ast.Name):
        return True
    if isinstance(node, ast.Attribute):
        return _dotted(node) is not None
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return all(_is_constant_expression(e) for e in node.elts)
    if isinstance(node, ast.Dict):
        return all(
            k is not None and _is_constant_expression(k) and _is_constant_expression(v)
            for k, v in zip(node.keys, node.values, strict=True)
        )
    if isinstance(node, ast.UnaryOp):
        return _is_constant_expression(node.operand)
    if isinstance(node, ast.BinOp):
        return _is_constant_expression(node.left) and _is_constant_expression(node.right)
    return False


class _Checker:
    """Collects violations of one parsed source (see the module docstring for the rules)."""

    def __init__(self) -> None:
        self.violations: list[Violation] = []

    def add(self, node: ast.AST | None, rule: str, message: str) -> None:
        self.violations.append(Violation(getattr(node, "lineno", 0) or 0, rule, message))

    # -- whole tree ------------------------------------------------------------------------
    def check_tree(self, tree: ast.Module) -> None:
        docstrings = self._docstring_nodes(tree)
        self._check_top_level(tree)
        for node in ast.walk(tree):
            self._check_node(node, docstrings)
        self._check_interface(tree)

    @staticmethod
    def _docstring_nodes(tree: ast.Module) -> set[int]:
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef):
                body = node.body
                if (
                    body
                    and isinstance(body[0], ast.Expr)
                    and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)
                ):
                    found.add(id(body[0].value))
        return found

    # -- statements executed at import time ---------------------------------------------
    def _check_top_level(self, tree: ast.Module) -> None:
        for index, stmt in enumerate(tree.body):
            if index == 0 and self._is_docstring(stmt):
                continue
            if isinstance(stmt, ast.Import | ast.ImportFrom | ast.FunctionDef):
                if isinstance(stmt, ast.FunctionDef):
                    self._check_decorators(stmt)
                continue
            if isinstance(stmt, ast.ClassDef):
                self._check_class(stmt)
                continue
            if self._is_constant_assignment(stmt):
                continue
            self.add(
                stmt,
                "module-side-effect",
                f"top-level {type(stmt).__name__} statement: only imports, def, class, the "
                "docstring and constant assignments (NAME = literal) may run at import time",
            )

    @staticmethod
    def _is_docstring(stmt: ast.stmt) -> bool:
        return (
            isinstance(stmt, ast.Expr)
            and isinstance(stmt.value, ast.Constant)
            and isinstance(stmt.value.value, str)
        )

    @staticmethod
    def _is_constant_assignment(stmt: ast.stmt) -> bool:
        if isinstance(stmt, ast.Assign):
            return all(isinstance(t, ast.Name) for t in stmt.targets) and _is_constant_expression(
                stmt.value
            )
        if isinstance(stmt, ast.AnnAssign):
            return isinstance(stmt.target, ast.Name) and (
                stmt.value is None or _is_constant_expression(stmt.value)
            )
        return False

    def _check_class(self, cls: ast.ClassDef) -> None:
        if cls.decorator_list:
            self.add(cls, "module-side-effect", f"class {cls.name}: class decorators run at import")
        if cls.keywords:
            self.add(cls, "module-side-effect", f"class {cls.name}: class keywords (metaclass=...)")
        for index, stmt in enumerate(cls.body):
            if index == 0 and self._is_docstring(stmt):
                continue
            if isinstance(stmt, ast.FunctionDef):
                self._check_decorators(stmt)
            elif isinstance(stmt, ast.Pass) or self._is_constant_assignment(stmt):
                continue
            else:
                self.add(
                    stmt,
                    "module-side-effect",
                    f"class {cls.name}: a {type(stmt).__name__} statement in the class body runs"
                    " at import; only methods, the docstring and constant attributes are allowed",
                )

    def _check_decorators(self, func: ast.FunctionDef) -> None:
        for decorator in func.decorator_list:
            target = decorator.func if isinstance(decorator, ast.Call) else decorator
            name = _dotted(target)
            ok = (
                (isinstance(decorator, ast.Name) and decorator.id in ALLOWED_DECORATORS)
                or (
                    isinstance(decorator, ast.Attribute)
                    and decorator.attr in {"setter", "getter", "deleter"}
                )
                or name in ALLOWED_DECORATOR_CALLS
            )
            if not ok:
                self.add(
                    decorator,
                    "module-side-effect",
                    f"decorator of {func.name}() runs at import; allowed: property, staticmethod,"
                    " classmethod, <property>.setter, torch.no_grad",
                )

    # -- every node ------------------------------------------------------------------------
    def _check_node(self, node: ast.AST, docstrings: set[int]) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                self._check_import(node, alias.name, alias.asname)
        elif isinstance(node, ast.ImportFrom):
            self._check_import_from(node)
        elif isinstance(node, ast.Name):
            if _is_dunder(node.id):
                self.add(node, "no-dunder", f"dunder name {node.id!r} is not allowed")
            elif node.id in FORBIDDEN_NAMES:
                self.add(node, "forbidden-call", f"{node.id!r} is not allowed in edited code")
        elif isinstance(node, ast.Attribute):
            self._check_attribute(node)
        elif isinstance(node, ast.Call):
            if (
                isinstance(node.func, ast.Name)
                and node.func.id == "type"
                and len(node.args) + len(node.keywords) > 1
            ):
                self.add(node, "forbidden-call", "type() with 3 arguments creates classes")
            for keyword in node.keywords:
                if keyword.arg and _is_dunder(keyword.arg):
                    self.add(node, "no-dunder", f"dunder keyword {keyword.arg!r} is not allowed")
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            self._check_definition(node)
        elif isinstance(node, ast.arg):
            if _is_dunder(node.arg) or node.arg in FORBIDDEN_NAMES:
                self.add(node, "no-dunder", f"argument name {node.arg!r} is not allowed")
            if node.annotation is not None:
                self._check_string_annotations(node.annotation)
        elif isinstance(node, ast.Global):
            self.add(node, "forbidden-statement", "'global' is not allowed")
        elif isinstance(node, ast.AsyncFunctionDef | ast.Await | ast.AsyncFor | ast.AsyncWith):
            self.add(node, "forbidden-statement", "async code is not allowed")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str | bytes):
            text = node.value if isinstance(node.value, str) else node.value.decode("latin-1")
            if id(node) not in docstrings and _DUNDER.search(text):
                self.add(node, "no-dunder", "strings may not contain __dunder__ names")
        elif isinstance(node, ast.AnnAssign):
            self._check_string_annotations(node.annotation)

    def _check_definition(self, node: ast.FunctionDef | ast.ClassDef) -> None:
        if isinstance(node, ast.FunctionDef):
            if node.returns is not None:
                self._check_string_annotations(node.returns)
            if node.name == "__init__":
                return  # only legal as a method; the interface check looks at Diffusion's
        if _is_dunder(node.name):
            self.add(node, "no-dunder", f"defining {node.name!r} is not allowed (only __init__)")
        elif node.name in FORBIDDEN_NAMES:
            self.add(node, "forbidden-call", f"defining {node.name!r} shadows a refused builtin")

    def _check_attribute(self, node: ast.Attribute) -> None:
        attr = node.attr
        if _is_dunder(attr):
            if not _is_super_init(node):
                self.add(
                    node, "no-dunder", f"dunder attribute {attr!r} (only super().__init__ is ok)"
                )
        elif attr in DENIED_ATTRIBUTES:
            self.add(
                node,
                "forbidden-attribute",
                f"attribute {attr!r} is refused (file, process, network or code access)",
            )
        elif attr.startswith("_") and not (
            isinstance(node.value, ast.Name) and node.value.id == "self"
        ):
            self.add(node, "no-private", f"private attribute {attr!r} (only self._x is allowed)")

    def _check_import(self, node: ast.AST, module: str, asname: str | None) -> None:
        reason = _module_refused(module)
        if reason:
            self.add(node, "import-not-allowed", reason)
        for part in module.split("."):
            if part in DENIED_ATTRIBUTES:
                self.add(node, "import-not-allowed", f"module part {part!r} is refused")
        if asname and (_is_dunder(asname) or asname in FORBIDDEN_NAMES):
            self.add(node, "no-dunder", f"import alias {asname!r} is not allowed")

    def _check_import_from(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if module == "__future__":
            for alias in node.names:
                if alias.name != "annotations":
                    self.add(node, "import-not-allowed", f"from __future__ import {alias.name}")
            return
        if node.level:
            self.add(node, "import-not-allowed", "relative imports are not allowed")
            return
        self._check_import(node, module, None)
        for alias in node.names:
            name = alias.name
            if name == "*":
                self.add(node, "import-not-allowed", f"'from {module} import *' is not allowed")
                continue
            full = f"{module}.{name}"
            if any(full == d or full.startswith(d + ".") for d in DENIED_MODULES):
                self.add(node, "import-not-allowed", f"module {full!r} is refused")
            elif name in DENIED_ATTRIBUTES or name in FORBIDDEN_NAMES:
                self.add(node, "import-not-allowed", f"importing {name!r} from {module} is refused")
            elif _is_dunder(name):
                self.add(node, "no-dunder", f"importing {name!r} is not allowed")
            elif name.startswith("_"):
                self.add(node, "import-not-allowed", f"private name {name!r} is refused")
            if alias.asname and (_is_dunder(alias.asname) or alias.asname in FORBIDDEN_NAMES):
                self.add(node, "no-dunder", f"import alias {alias.asname!r} is not allowed")

    def _check_string_annotations(self, annotation: ast.AST) -> None:
        """PyG evaluates string annotations of message-passing methods: check them as code."""
        for node in ast.walk(annotation):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                try:
                    parsed = ast.parse(node.value, mode="eval")
                except (SyntaxError, ValueError, RecursionError, MemoryError):
                    self.add(node, "syntax", "string annotation is not a valid expression")
                    continue
                inner = _Checker()
                for sub in ast.walk(parsed):
                    inner._check_node(sub, set())
                for v in inner.violations:
                    self.add(node, v.rule, f"in string annotation: {v.message}")

    # -- the interface ---------------------------------------------------------------------
    def _check_interface(self, tree: ast.Module) -> None:
        classes = [s for s in tree.body if isinstance(s, ast.ClassDef) and s.name == "Diffusion"]
        rebinds = [
            s
            for s in ast.walk(tree)
            if isinstance(s, ast.Name) and s.id == "Diffusion" and isinstance(s.ctx, ast.Store)
        ] + [
            s
            for s in ast.walk(tree)
            if isinstance(s, ast.FunctionDef | ast.ClassDef)
            and s.name == "Diffusion"
            and s not in classes
        ]
        for node in rebinds:
            self.add(node, "interface", "the name 'Diffusion' must be bound only by its class")
        if not classes:
            self.add(None, "interface", "no top-level 'class Diffusion(nn.Module)' found")
            return
        if len(classes) > 1:
            for cls in classes[1:]:
                self.add(cls, "interface", "'class Diffusion' is defined more than once")
        cls = classes[0]
        if not cls.bases:
            self.add(cls, "interface", "Diffusion must subclass torch.nn.Module (nn.Module)")
        methods = {s.name: s for s in cls.body if isinstance(s, ast.FunctionDef)}
        init = methods.get("__init__")
        if init is None:
            self.add(cls, "interface", "Diffusion needs __init__(self, num_nodes, ...)")
        else:
            self._check_signature(init, ("self", "num_nodes"), "__init__(self, num_nodes, ...)")
        forward = methods.get("forward")
        if forward is None:
            self.add(cls, "interface", "Diffusion needs forward(self, u, graph)")
        else:
            self._check_signature(forward, ("self", "u", "graph"), "forward(self, u, graph)")
        if "edge_conductance" in methods:
            self._check_signature(
                methods["edge_conductance"],
                ("self", "u", "graph"),
                "edge_conductance(self, u, graph)",
            )
        for name, method in methods.items():
            if name in ("forward", "__init__", "edge_conductance") and method.decorator_list:
                self.add(method, "interface", f"{name} must be a plain method (no decorators)")

    def _check_signature(self, func: ast.FunctionDef, names: tuple[str, ...], want: str) -> None:
        args = func.args
        positional = args.posonlyargs + args.args
        have = tuple(a.arg for a in positional[: len(names)])
        if len(positional) < len(names) or (have[0] != "self" or have[1] != names[1]):
            self.add(func, "interface", f"signature must be {want}, got ({', '.join(have)})")
            return
        required_extra = len(positional) - len(names) - len(args.defaults)
        missing_kw = [
            a.arg for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is None
        ]
        if required_extra > 0 or missing_kw:
            self.add(
                func,
                "interface",
                f"{want}: every parameter after the interface ones needs a default value",
            )


def check_source(source: str) -> list[Violation]:
    """Static checks of an edited diffusion source; never executes anything.

    Returns the violations sorted by line (empty when the source may go to the dynamic
    check). See the module docstring for the rules.
    """
    if not isinstance(source, str):
        return [Violation(0, "syntax", f"source must be a str, got {type(source).__name__}")]
    if len(source) > MAX_SOURCE_CHARS:
        return [Violation(0, "too-large", f"{len(source)} characters; at most {MAX_SOURCE_CHARS}")]
    try:
        tree = ast.parse(source, filename=EDITED_FILENAME)
    except SyntaxError as exc:
        return [Violation(exc.lineno or 0, "syntax", f"syntax error: {exc.msg}")]
    except (ValueError, RecursionError, MemoryError) as exc:
        return [Violation(0, "syntax", f"cannot parse the source: {type(exc).__name__}: {exc}")]
    checker = _Checker()
    try:
        checker.check_tree(tree)
    except RecursionError:
        return [Violation(0, "syntax", "the source nests too deeply")]
    unique = {(v.line, v.rule, v.message): v for v in checker.violations}
    return sorted(unique.values(), key=lambda v: (v.line, v.rule, v.message))


# ----------------------------------------------------------------------------- the worker


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of a sandboxed worker.

    ``processes`` is RLIMIT_NPROC: 0 means no new processes (and, for a non-root user on
    Linux, no new threads: the worker starts its torch thread pool before the limit is set).
    ``memory_bytes`` is the address-space limit (RLIMIT_AS) of the whole worker, torch
    included (~1 GB after imports).
    """

    wall_seconds: float = 60.0
    cpu_seconds: int = 120
    memory_bytes: int = 4 * 2**30
    open_files: int = 256
    processes: int = 0
    file_size_bytes: int = 64 * 2**20


class SandboxError(RuntimeError):
    """A sandboxed run failed: ``reason`` is one of the dynamic rules of the module docstring
    (``timeout``, ``cpu-time``, ``memory``, ``sandbox-denied``, ``runtime-error``,
    ``killed``, ``crashed``, ``output-too-large``, ``result-too-large``, ``result-type``,
    ``unsupported``), ``traceback`` the traceback trimmed to untrusted frames, ``line`` the
    line of the innermost untrusted frame, ``output`` the tail of the worker's stdout/stderr.
    """

    def __init__(
        self,
        message: str,
        reason: str = "runtime-error",
        traceback: str | None = None,
        line: int | None = None,
        output: str = "",
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.traceback = traceback
        self.line = line
        self.output = output


# Audit events refused outright (exact names and prefixes).
_DENIED_EVENTS = frozenset(
    {
        "subprocess.Popen", "os.system", "os.fork", "os.forkpty", "os.kill", "os.killpg",
        "os.startfile", "os.putenv", "os.unsetenv", "os.chmod", "os.lchmod", "os.chown",
        "os.lchown", "os.chflags", "os.lchflags", "os.link", "os.symlink", "os.setxattr",
        "os.removexattr", "pty.spawn", "resource.setrlimit", "resource.prlimit",
        "sys._current_frames", "gc.get_objects", "gc.get_referrers", "gc.get_referents",
        "mmap.__new__", "pickle.find_class",
        "builtins.input", "builtins.breakpoint", "webbrowser.open", "sqlite3.connect",
        "urllib.Request", "code.__new__", "os.chroot", "signal.pthread_kill",
    }
)  # fmt: skip
_DENIED_EVENT_PREFIXES = (
    "socket.", "os.exec", "os.spawn", "os.posix_spawn", "ctypes.", "shutil.", "http.client.",
    "ftplib.", "smtplib.", "poplib.", "imaplib.", "nntplib.", "telnetlib.", "syslog.", "winreg.",
    "msvcrt.", "_winapi.",
)  # fmt: skip
# Audit events carrying paths that must stay inside the workdir (reading: or a read root).
_WRITE_PATH_EVENTS = frozenset(
    {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.truncate", "os.utime",
     "tempfile.mkstemp", "tempfile.mkdtemp", "os.chdir"}
)  # fmt: skip
_READ_PATH_EVENTS = frozenset({"os.listdir", "os.scandir", "glob.glob", "os.listxattr"})
# Modules that may still be imported (lazily, by torch/PyG) after entering the sandbox.
_LAZY_IMPORT_ROOTS = frozenset(
    {
        "torch", "torch_geometric", "torchgen", "jinja2", "markupsafe", "numpy", "scipy",
        "sympy", "mpmath", "typing_extensions", "encodings", "leads_engine", "leads_catalogs",
        "math", "cmath", "typing", "collections", "functools", "itertools", "operator",
        "dataclasses", "enum", "re", "string", "textwrap", "inspect", "dis", "tokenize",
        "token", "ast", "copy", "copyreg", "weakref", "warnings", "numbers", "abc",
        "contextlib", "types", "linecache", "traceback", "keyword", "heapq", "bisect",
        "random", "statistics", "decimal", "fractions", "hashlib", "struct", "difflib",
        "pprint", "reprlib", "json", "unicodedata", "opcode", "importlib", "zipfile",
    }
)  # fmt: skip
_DENIED_PRIVATE_IMPORTS = frozenset(
    {"_ctypes", "_socket", "_posixsubprocess", "_thread", "_multiprocessing", "_posixshmem",
     "_ssl", "_pickle", "_winapi"}
)  # fmt: skip
_KEPT_ENVIRONMENT = ("LANG", "LC_ALL", "LC_CTYPE", "OMP_NUM_THREADS", "MKL_NUM_THREADS")

# Linux constants (sched.h, mount.h, prctl.h, capability.h).
_CLONE_NEWNS, _CLONE_NEWUSER, _CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 32, 4096, 16384, 1 << 18
_MOUNT_FLAGS = {
    "nosuid": _MS_NOSUID, "nodev": _MS_NODEV, "noexec": _MS_NOEXEC, "noatime": 1024,
    "nodiratime": 2048, "relatime": 1 << 21, "strictatime": 1 << 24,
}  # fmt: skip
_PR_SET_NO_NEW_PRIVS = 38


@dataclass
class _SandboxState:
    """What :func:`_enter` achieved: protections in force and the audit hook's refusals."""

    protections: list[str] = field(default_factory=list)
    denials: list[str] = field(default_factory=list)


def _within(path: str, roots: Iterable[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


def _read_roots(workdir: str | None) -> tuple[str, ...]:
    """Folders the worker may read: the interpreter, its libraries and the LEADS packages."""
    roots = {workdir or "", sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        with contextlib.suppress(KeyError):
            roots.add(sysconfig.get_paths()[key])
    for name in ("torch", "torch_geometric", "jinja2", "leads_engine", "leads_catalogs"):
        module = sys.modules.get(name)
        file = getattr(module, "__file__", None)
        if file is None:
            with contextlib.suppress(ImportError, ValueError):
                spec = importlib.util.find_spec(name)
                file = spec.origin if spec is not None else None
        if file:
            roots.add(os.path.dirname(file))
    return tuple(sorted({os.path.realpath(r) for r in roots if r and r != os.sep}))


def _make_audit_hook(workdir: str, state: _SandboxState) -> Callable[[str, tuple], None]:
    """The worker's :pep:`578` hook: raises PermissionError for anything outside the sandbox."""
    read_roots = _read_roots(workdir)
    write_roots = (workdir,)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    denials = state.denials

    def deny(event: str, detail: str = "") -> None:
        message = f"sandbox: {event} is not allowed{': ' + detail if detail else ''}"
        if len(denials) < 20:
            denials.append(message)
        raise PermissionError(errno.EPERM, message)

    def resolve(path: Any) -> str:
        return os.path.realpath(os.fsdecode(path))

    def hook(event: str, args: tuple) -> None:
        if event in _DENIED_EVENTS or event.startswith(_DENIED_EVENT_PREFIXES):
            deny(event)
        elif event == "open":
            path, mode, flags = args
            if path is None or isinstance(path, int):
                return  # an already open descriptor
            writing = (mode is not None and any(c in mode for c in "wax+")) or (
                mode is None and bool(flags & write_flags)
            )
            resolved = resolve(path)
            if not _within(resolved, write_roots if writing else read_roots):
                deny(event, f"{'writing' if writing else 'reading'} {os.fsdecode(path)!r}")
        elif event in _WRITE_PATH_EVENTS:
            for path in args[:2] if event == "os.rename" else args[:1]:
                if isinstance(path, str | bytes | os.PathLike):
                    if not _within(resolve(path), write_roots):
                        deny(event, repr(os.fsdecode(path)))
        elif event in _READ_PATH_EVENTS:
            path = args[0] if args else "."
            if isinstance(path, str | bytes | os.PathLike) and not _within(
                resolve(path), read_roots
            ):
                deny(event, repr(os.fsdecode(path)))
        elif event == "import":
            name = str(args[0])
            root = name.partition(".")[0]
            allowed = (
                root in _LAZY_IMPORT_ROOTS
                or root.startswith("leads_diffusion_")
                or (root.startswith("_") and root not in _DENIED_PRIVATE_IMPORTS)
            )
            if not allowed:
                deny(event, name)

    return hook


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def _unshare_namespaces(state: _SandboxState) -> bool:
    """New network and mount namespaces (Linux; as root, or via a user namespace)."""
    if not sys.platform.startswith("linux"):
        return False
    libc = _libc()
    if libc.unshare(_CLONE_NEWNET | _CLONE_NEWNS) == 0:
        state.protections.append("network namespace (no interfaces)")
        return True
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET | _CLONE_NEWNS) != 0:
        if libc.unshare(_CLONE_NEWNET) == 0:
            state.protections.append("network namespace (no interfaces)")
        return False
    try:  # map our own ids so files we create keep a valid owner
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
        Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
    except OSError:
        pass
    state.protections.append("network namespace (no interfaces, user namespace)")
    return True


def _libc_mount() -> Any:
    mount = _libc().mount
    mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_void_p]
    return mount


def _remount_read_only(mount: Any, point: str, flags: int = 0) -> bool:
    """Remount a (bind) mount read-only, keeping flags a user namespace may have locked."""
    for extra in (
        flags,
        flags | _MS_NOSUID | _MS_NODEV,
        flags | _MS_NOSUID | _MS_NODEV | _MS_NOEXEC,
    ):
        if (
            mount(None, os.fsencode(point), None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | extra, None)
            == 0
        ):
            return True
    return False


def _private_root(mount: Any, workdir: str, state: _SandboxState) -> bool:
    """chroot into a tmpfs holding read-only binds of the interpreter and library folders,
    ``/dev/null``/``zero``/``urandom`` and a writable bind of ``workdir``, at their own paths.
    Native code (torch's C++ file I/O included) then sees nothing else of the filesystem."""
    new_root = os.path.join(workdir, ".root")  # outside the new root, so invisible inside it
    os.mkdir(new_root, 0o755)
    options = b"size=1m,mode=755"
    if mount(b"tmpfs", os.fsencode(new_root), b"tmpfs", _MS_NOSUID | _MS_NODEV, options) != 0:
        return False
    roots = sorted(_read_roots(None))
    minimal = [r for r in roots if not any(r != o and _within(r, (o,)) for o in roots)]
    for source in minimal:
        target = new_root + source
        os.makedirs(target, exist_ok=True)
        if mount(os.fsencode(source), os.fsencode(target), None, _MS_BIND | _MS_REC, None) != 0:
            return False
        if not _remount_read_only(mount, target):
            return False
    for device in ("/dev/null", "/dev/zero", "/dev/urandom"):
        target = new_root + device
        os.makedirs(os.path.dirname(target), exist_ok=True)
        Path(target).touch()
        mount(os.fsencode(device), os.fsencode(target), None, _MS_BIND, None)
    target = new_root + workdir
    os.makedirs(target, exist_ok=True)
    if mount(os.fsencode(workdir), os.fsencode(target), None, _MS_BIND, None) != 0:
        return False
    flags = _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV
    if mount(None, os.fsencode(new_root), None, flags, None) != 0:
        return False
    os.chroot(new_root)
    os.chdir(workdir)
    state.protections.append(
        "private root: only the interpreter/library folders (read-only) and the workdir exist"
    )
    return True


def _isolate_filesystem(workdir: str, state: _SandboxState) -> None:
    """In the private mount namespace: a private root, else every mount read-only but workdir."""
    mount = _libc_mount()
    if mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        return
    try:
        if _private_root(mount, workdir, state):
            return
    except OSError:
        pass
    work = os.fsencode(workdir)
    if mount(work, work, None, _MS_BIND, None) != 0:
        return
    mounts = []
    with open("/proc/self/mountinfo", encoding="utf-8") as lines:
        for line in lines:
            fields = line.split()
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            flags = sum(_MOUNT_FLAGS.get(opt, 0) for opt in fields[5].split(","))
            mounts.append((point, flags))
    failures, root_ok = 0, False
    for point, flags in sorted(set(mounts), key=lambda m: m[0].count("/")):
        if point == workdir:
            continue
        ok = _remount_read_only(mount, point, flags)
        if point == "/":
            root_ok = ok
        failures += not ok
    if root_ok:
        state.protections.append(
            "read-only filesystem except the workdir"
            + (f" ({failures} mounts could not be remounted)" if failures else "")
        )


def _drop_capabilities(state: _SandboxState) -> None:
    """No new privileges, and clear every capability (root keeps its uid, loses its powers)."""
    if not sys.platform.startswith("linux"):
        return
    libc = _libc()
    libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [(n, ctypes.c_uint32) for n in ("effective", "permitted", "inheritable")]

    header, data = Header(0x20080522, 0), (Data * 2)()
    if libc.capset(ctypes.byref(header), data) == 0:
        state.protections.append("no capabilities, no_new_privs")


def _set_limits(limits: SandboxLimits, state: _SandboxState) -> None:
    import resource  # POSIX only; imported here so that the module imports everywhere

    wanted = [
        ("RLIMIT_AS", limits.memory_bytes, limits.memory_bytes),
        ("RLIMIT_CPU", limits.cpu_seconds, limits.cpu_seconds + 1),
        ("RLIMIT_NOFILE", limits.open_files, limits.open_files),
        ("RLIMIT_NPROC", limits.processes, limits.processes),
        ("RLIMIT_FSIZE", limits.file_size_bytes, limits.file_size_bytes),
        ("RLIMIT_CORE", 0, 0),
    ]
    for name, soft, hard in wanted:
        number = getattr(resource, name, None)
        if number is None:
            continue
        try:
            _, current_hard = resource.getrlimit(number)
            if current_hard != resource.RLIM_INFINITY:
                soft, hard = min(soft, current_hard), min(hard, current_hard)
            resource.setrlimit(number, (soft, hard))
            state.protections.append(f"{name}={soft}")
        except (OSError, ValueError):
            pass


def _enter(limits: SandboxLimits, workdir: Path) -> _SandboxState:
    """:func:`enter_sandbox`, returning what it achieved."""
    state = _SandboxState()
    work = os.path.realpath(workdir)
    if not os.path.isdir(work):
        raise SandboxError(f"sandbox workdir {work!r} must be an existing (empty) folder")
    if _unshare_namespaces(state):
        _isolate_filesystem(work, state)
    threads = torch.get_num_threads()
    if threads > 1:  # start the OpenMP pool now: RLIMIT_NPROC may forbid new threads later
        torch.ones(1 << 18).mul_(2.0)
    _set_limits(limits, state)
    _drop_capabilities(state)
    os.chdir(work)
    for key in list(os.environ):
        if key not in _KEPT_ENVIRONMENT:
            del os.environ[key]
    os.environ.update(HOME=work, TMPDIR=work)
    tempfile.tempdir = work  # PyG writes its generated message-passing modules here
    sys.dont_write_bytecode = True
    sys.addaudithook(_make_audit_hook(work, state))
    state.protections.append("audit hook")
    return state


def enter_sandbox(limits: SandboxLimits, workdir: Path) -> None:
    """Lock the current process down before it touches untrusted code. Irreversible.

    Call it first thing in a fresh worker process, after importing what the untrusted code
    needs (torch, torch_geometric, leads_engine) and after ``torch.set_num_threads``.
    ``workdir`` must be an existing, empty, private folder (``tempfile.mkdtemp``); on Linux a
    hidden ``.root`` folder appears in it (the private root's mount point). Anything the
    trusted code still needs from outside (data sets, catalog descriptions) must be read
    before; ``torch.compile`` cannot run inside (no compiler, no subprocess). In order:

    * Linux: new network and mount namespaces (as root directly, otherwise through an
      unprivileged user namespace where the kernel allows it); in the mount namespace every
      mount is remounted read-only except a bind mount of ``workdir``;
    * torch's thread pool is started (later thread creation may be refused by RLIMIT_NPROC);
    * rlimits: RLIMIT_AS, RLIMIT_CPU, RLIMIT_NOFILE, RLIMIT_NPROC, RLIMIT_FSIZE, RLIMIT_CORE=0;
    * Linux: ``PR_SET_NO_NEW_PRIVS`` and every capability dropped (as root: no more mounts,
      namespace changes, DAC override or raising limits);
    * ``chdir(workdir)``, environment scrubbed to locale/thread variables plus
      ``HOME=TMPDIR=workdir``, ``tempfile.tempdir = workdir``, no bytecode writing;
    * an audit hook (:pep:`578`) raising ``PermissionError`` on process creation
      (``subprocess``, ``os.system``/``exec*``/``spawn*``/``posix_spawn``/``fork``), signals
      (``os.kill``), ``socket.*``, ``ctypes.*``, ``shutil.*``, ``mmap``, unpickling, code object
      construction, ``resource.setrlimit``, file opens for writing outside ``workdir``, for
      reading outside ``workdir`` and the interpreter/library folders, path operations
      (remove, rename, mkdir, rmdir, chdir, listdir, ...) outside them, ``chmod``/``chown``/
      ``link``/``symlink``, environment changes, and imports of modules outside an allow list.
      (Compiling and executing code objects stays allowed: PyG generates code at runtime.)
    """
    _enter(limits, workdir)


def _untrusted_frames(tb: Any, filenames: tuple[str, ...]) -> list[traceback.FrameSummary]:
    summary = traceback.StackSummary.extract(traceback.walk_tb(tb), lookup_lines=False)
    return [f for f in summary if f.filename in filenames or f.filename.startswith("<edited")]


def _format_exception(exc: BaseException, filenames: tuple[str, ...]) -> tuple[str, int | None]:
    """Traceback of ``exc`` keeping only frames of the untrusted source; its innermost line."""
    frames = _untrusted_frames(exc.__traceback__, filenames)
    lines = ["Traceback (edited source only):"]
    for frame in frames:
        lines.append(f"  line {frame.lineno}, in {frame.name}")
        code = linecache.getline(frame.filename, frame.lineno or 0).strip()
        if code:
            lines.append(f"    {code}")
    message = str(exc)
    if len(message) > 1000:
        message = message[:1000] + " ..."
    lines.append(f"{type(exc).__name__}: {message}")
    line = frames[-1].lineno if frames else None
    if isinstance(exc, SyntaxError) and exc.filename in filenames:
        line = exc.lineno
    return "\n".join(lines), line


class _SoftTimeout(BaseException):
    """Raised in the worker shortly before the parent's hard kill, to locate the slow line."""


def _classify(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, _SoftTimeout):
        return "timeout"
    if isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError) and ("alloc" in text.lower() or "out of memory" in text)
    ):
        return "memory"
    if isinstance(exc, OSError) and exc.errno == errno.EFBIG:
        return "output-too-large"
    if isinstance(exc, PermissionError) and "sandbox:" in text:
        return "sandbox-denied"
    return "runtime-error"


def _reply(connection: Any, payload: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    try:
        torch.save(payload, buffer)
    except Exception as exc:  # an unserialisable result
        buffer = io.BytesIO()
        message = f"the result cannot be serialised: {type(exc).__name__}: {exc}"[:2000]
        torch.save({"ok": False, "reason": "result-type", "message": message}, buffer)
    connection.send_bytes(buffer.getvalue())


def _worker_main(
    connection: Any,
    target: Callable[..., Any],
    args: tuple,
    kwargs: dict[str, Any],
    limits: SandboxLimits,
    workdir: str,
    deadline: float,
    timeout: float,
    threads: int,
) -> None:
    """Body of a worker process: lock down, run ``target``, send the outcome, exit."""
    code = 0
    try:
        os.setsid()  # own process group: the parent kills the whole group
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        with contextlib.suppress(AttributeError, ValueError):
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # oversized output: EFBIG instead
        torch.set_num_threads(max(1, threads))
        torch.save({"warm-up": torch.zeros(1)}, io.BytesIO())  # its lazy imports, before the hook
        state = _enter(limits, Path(workdir))
        output = os.open("output.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(output, 1)
        os.dup2(output, 2)

        def soft_timeout(signum: int, frame: Any) -> None:
            raise _SoftTimeout(f"wall-clock limit of {timeout:g} s reached")

        margin = max(0.3, min(1.0, 0.2 * (deadline - time.time())))
        signal.signal(signal.SIGALRM, soft_timeout)
        signal.setitimer(signal.ITIMER_REAL, max(0.05, deadline - time.time() - margin))
        try:
            value = target(*args, **kwargs)
            signal.setitimer(signal.ITIMER_REAL, 0)
            if state.denials:
                payload = {
                    "ok": False,
                    "reason": "sandbox-denied",
                    "message": "; ".join(state.denials[:3]),
                }
            else:
                payload = {"ok": True, "value": value, "protections": state.protections}
        except BaseException as exc:  # noqa: BLE001 - everything is reported to the parent
            signal.setitimer(signal.ITIMER_REAL, 0)
            trace, line = _format_exception(exc, (EDITED_FILENAME,))
            reason = _classify(exc)
            if state.denials and reason == "runtime-error":
                reason = "sandbox-denied"
            message = f"{type(exc).__name__}: {exc}"[:2000]
            if reason == "sandbox-denied" and state.denials:
                message = "; ".join(state.denials[:3])
            payload = {
                "ok": False,
                "reason": reason,
                "message": message,
                "traceback": trace,
                "line": line,
            }
        sys.stdout.flush()
        _reply(connection, payload)
    except BaseException as exc:  # noqa: BLE001 - the sandbox itself failed
        code = 3
        with contextlib.suppress(BaseException):
            traceback.print_exc()
        with contextlib.suppress(BaseException):
            _reply(
                connection,
                {"ok": False, "reason": "crashed", "message": f"worker setup failed: {exc!r}"},
            )
    finally:
        os._exit(code)


def _read_tail(path: str, limit: int = OUTPUT_TAIL_CHARS) -> str:
    """Last ``limit`` bytes of a regular file written by the worker (no symlinks followed)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | os.O_NONBLOCK)
    except OSError:
        return ""
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            return ""
        handle.seek(max(0, info.st_size - limit))
        return handle.read(limit).decode("utf-8", errors="replace")


_PRELOAD = [
    "__main__",
    "torch",
    "torch_geometric",
    "torch_geometric.nn",
    "leads_engine.mesh",
    "leads_engine.graph",
    "leads_engine.diffusion",
    "leads_engine.sandbox",
]
_SIGNAL_REASONS = {
    signal.SIGXCPU: ("cpu-time", "CPU time limit exceeded"),
    signal.SIGKILL: ("killed", "killed (SIGKILL; likely out of memory)"),
    signal.SIGSEGV: ("crashed", "crashed (segmentation fault)"),
    signal.SIGABRT: ("crashed", "aborted (SIGABRT; e.g. a refused thread or process)"),
    signal.SIGBUS: ("crashed", "crashed (bus error)"),
}


def _kill_group(process: Any) -> None:
    if process.exitcode is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        process.kill()


def run_sandboxed(
    target: Callable[..., T],
    *args: Any,
    limits: SandboxLimits,
    timeout_s: float,
    **kwargs: Any,
) -> T:
    """Run picklable top-level ``target(*args, **kwargs)`` in a sandboxed worker; return its result.

    The worker is forked from a forkserver with torch, PyG and the LEADS engine preloaded,
    calls :func:`enter_sandbox` on a fresh private folder, runs ``target`` and sends its
    result back. The wall-clock limit is ``min(timeout_s, limits.wall_seconds)``, enforced
    by the parent (SIGKILL to the worker's process group); shortly before it the worker
    raises a timeout inside the running code so that the report names the slow line.

    The result travels through ``torch.save``/``torch.load(weights_only=True)``: it may
    contain tensors, dicts, lists, tuples, strings, numbers, booleans and None (no custom
    classes), at most :data:`MAX_RESULT_BYTES`. Files written by ``target`` stay in the
    private folder, which is deleted afterwards: return what you need.

    Raises :class:`SandboxError` (``reason``: timeout, cpu-time, memory, killed, crashed,
    sandbox-denied, runtime-error, output-too-large, result-too-large, result-type) with the
    exception message and the traceback trimmed to frames compiled from
    :data:`EDITED_FILENAME` (or any ``<edited ...>`` filename). A run in which the audit hook
    refused anything fails with ``sandbox-denied`` even if the code caught the error.
    """
    return _run(target, args, kwargs, limits, timeout_s)[0]


def _run(
    target: Callable[..., T],
    args: tuple,
    kwargs: dict[str, Any],
    limits: SandboxLimits,
    timeout_s: float,
) -> tuple[T, list[str]]:
    """:func:`run_sandboxed`, also returning the protections that were in force."""
    if os.name != "posix" or "forkserver" not in multiprocessing.get_all_start_methods():
        raise SandboxError("the sandbox needs a POSIX system (Linux or macOS)", "unsupported")
    timeout = float(min(timeout_s, limits.wall_seconds))
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    workdir = tempfile.mkdtemp(prefix="leads-sandbox-")
    receiver, sender = context.Pipe(duplex=False)
    deadline = time.time() + timeout
    process = context.Process(
        target=_worker_main,
        args=(
            sender,
            target,
            args,
            kwargs,
            limits,
            workdir,
            deadline,
            timeout,
            torch.get_num_threads(),
        ),
        name="leads-sandbox",
        daemon=True,
    )
    watchdog = threading.Timer(timeout + 2.0, _kill_group, args=(process,))
    raw: bytes | None = None
    failure: SandboxError | None = None
    try:
        process.start()
        sender.close()
        watchdog.start()
        remaining = deadline - time.time()
        try:
            if receiver.poll(max(0.0, remaining)):
                raw = receiver.recv_bytes(MAX_RESULT_BYTES)
            else:
                failure = SandboxError(
                    f"timed out: no result within {timeout:g} s (wall clock)", "timeout"
                )
        except EOFError:
            pass  # died without a reply: see the exit code below
        except OSError as exc:
            failure = SandboxError(
                f"the result is larger than {MAX_RESULT_BYTES} bytes ({exc})", "result-too-large"
            )
        if raw is not None:
            process.join(min(2.0, max(0.1, deadline - time.time())))
        _kill_group(process)
        process.join(5.0)
        output = _read_tail(os.path.join(workdir, "output.log"))
        if failure is None and raw is None:
            code = process.exitcode
            reason, message = "crashed", f"the worker exited with code {code} and no result"
            if code is not None and code < 0:
                reason, message = _SIGNAL_REASONS.get(
                    -code, ("crashed", f"killed by signal {signal.Signals(-code).name}")
                )
            failure = SandboxError(message, reason)
        if failure is not None:
            failure.output = output
            raise failure
        try:
            payload = torch.load(io.BytesIO(raw), weights_only=True)
        except Exception as exc:
            raise SandboxError(
                f"the worker's reply is not plain data: {type(exc).__name__}: {exc}"[:2000],
                "result-type",
                output=output,
            ) from None
        if not isinstance(payload, dict) or "ok" not in payload:
            raise SandboxError("malformed reply from the worker", "crashed", output=output)
        if not payload["ok"]:
            raise SandboxError(
                str(payload.get("message", "failed")),
                str(payload.get("reason", "runtime-error")),
                traceback=payload.get("traceback"),
                line=payload.get("line") if isinstance(payload.get("line"), int) else None,
                output=output,
            )
        return payload["value"], [str(p) for p in payload.get("protections", [])]
    finally:
        watchdog.cancel()
        _kill_group(process)
        with contextlib.suppress(Exception):
            process.join(1.0)
        receiver.close()
        with contextlib.suppress(Exception):
            process.close()
        _remove_tree(workdir)


def _remove_tree(path: str) -> None:
    import shutil

    def make_writable_and_retry(function: Callable, name: str, _exc: Any) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(name), 0o700)
            function(name)

    shutil.rmtree(path, onerror=make_writable_and_retry)


# ----------------------------------------------------------------------------- validation


@dataclass
class ValidationReport:
    """Outcome of :func:`validate_diffusion_source`, written for the agent that made the edit.

    ``violations`` holds the static violations, or the one dynamic failure (its rule and
    line); ``traceback`` is trimmed to frames of the edited source; ``output`` is the tail of
    what the code printed; ``protections`` lists the sandbox protections that were in force.
    """

    accepted: bool
    message: str
    violations: list[Violation]
    traceback: str | None
    seconds: float
    parameter_count: int | None
    output: str = ""
    protections: list[str] = field(default_factory=list)


def _tensor_problem(value: Any, shape: tuple[int, ...], what: str) -> tuple[str, str] | None:
    """(rule suffix, message) if ``value`` is not a finite float32 tensor of ``shape``."""
    if not isinstance(value, torch.Tensor):
        return "shape", f"{what} must return a torch.Tensor, got {type(value).__name__}"
    if tuple(value.shape) != shape:
        return "shape", f"{what} returned shape {list(value.shape)}, expected {list(shape)}"
    if value.dtype != torch.float32:
        return "dtype", f"{what} returned dtype {value.dtype}, expected torch.float32"
    if not bool(torch.isfinite(value.detach()).all()):
        bad = int((~torch.isfinite(value.detach())).sum())
        return "nonfinite", f"{what} returned {bad} NaN/Inf values"
    return None


def _dynamic_check(
    source: str,
    hyperparameters: dict[str, Any] | None = None,
    num_nodes: int = 60,
    batch_size: int = 2,
) -> dict[str, Any]:
    """Run inside the sandbox: build, forward, check outputs and gradients. Returns plain data.

    ``{"accepted": bool, "rule": str | None, "message": str, "line": int | None,
    "traceback": str | None, "parameter_count": int | None}``. Exceptions of the edited code
    propagate to the worker, which trims their traceback.
    """
    from leads_engine.diffusion import DiffusionSpecError, load_diffusion_class
    from leads_engine.graph import MeshGraph
    from leads_engine.mesh import make_lv_mesh

    graph = MeshGraph.from_mesh(make_lv_mesh(num_nodes), batch_size)
    rows, edges = batch_size * num_nodes, int(graph.edge_index.shape[1])
    torch.manual_seed(0)
    try:
        cls = load_diffusion_class(source, EDITED_FILENAME)
    except DiffusionSpecError as exc:
        if exc.__cause__ is not None:
            raise exc.__cause__ from None
        raise
    module = cls(num_nodes, **(hyperparameters or {}))
    parameters = [p for p in module.parameters() if p.requires_grad]
    count = sum(int(p.numel()) for p in module.parameters())

    def refuse(rule: str, message: str, method: str = "forward") -> dict[str, Any]:
        code = getattr(getattr(cls, method, None), "__code__", None)
        line = code.co_firstlineno if code and code.co_filename == EDITED_FILENAME else None
        return {
            "accepted": False,
            "rule": rule,
            "message": message,
            "line": line,
            "traceback": None,
            "parameter_count": count,
        }

    u = torch.rand(rows, 1)
    started = time.perf_counter()
    out = module(u, graph)
    problem = _tensor_problem(out, (rows, 1), "forward(u, graph)")
    if problem:
        return refuse(f"output-{problem[0]}", problem[1] + f" (u is [{rows}, 1])")
    if hasattr(module, "edge_conductance"):
        conductance = module.edge_conductance(u, graph)
        problem = _tensor_problem(conductance, (edges,), "edge_conductance(u, graph)")
        if problem:
            return refuse(f"conductance-{problem[0]}", problem[1], "edge_conductance")
        if bool((conductance.detach() < 0).any()):
            return refuse(
                "conductance-negative",
                "edge_conductance returned negative conductances (use softplus/exp)",
                "edge_conductance",
            )
    if parameters:
        if not out.requires_grad:
            return refuse("no-gradient", "forward output does not depend on any parameter")
        weights = torch.randn(rows, 1, generator=torch.Generator().manual_seed(1))
        (out * weights).sum().backward()
        grads = [p.grad for p in parameters]
        if any(g is not None and not bool(torch.isfinite(g).all()) for g in grads):
            return refuse("gradient-nonfinite", "a parameter received a NaN/Inf gradient")
        if not any(g is not None and bool((g != 0).any()) for g in grads):
            return refuse(
                "no-gradient",
                f"none of the {len(parameters)} parameters receives a non-zero gradient",
            )
    elapsed = time.perf_counter() - started
    reached = sum(1 for p in parameters if p.grad is not None and bool((p.grad != 0).any()))
    return {
        "accepted": True,
        "rule": None,
        "message": (
            f"accepted: forward -> [{rows}, 1] float32 finite"
            + (
                ", edge_conductance -> [B*2E] finite >= 0"
                if hasattr(module, "edge_conductance")
                else ""
            )
            + f"; {count} parameters, {reached} of {len(parameters)} tensors get gradients;"
            f" forward+backward {elapsed * 1000:.0f} ms on {num_nodes} nodes x {batch_size}"
        ),
        "line": None,
        "traceback": None,
        "parameter_count": count,
    }


_REASON_HINTS = {
    "timeout": "the code ran past the wall-clock limit (an endless or very slow loop?)",
    "cpu-time": "the code used more CPU time than allowed",
    "memory": "the code exceeded the memory limit",
    "killed": "the worker was killed (memory?)",
    "output-too-large": "the code printed more output than allowed",
    "sandbox-denied": "the code tried an operation the sandbox forbids",
}


def validate_diffusion_source(
    source: str,
    timeout_s: float = 20.0,
    limits: SandboxLimits | None = None,
    *,
    hyperparameters: dict[str, Any] | None = None,
) -> ValidationReport:
    """Check edited diffusion ``source``: static rules, then a sandboxed trial run.

    ``hyperparameters`` (optional, JSON-like) are passed to ``Diffusion(num_nodes, ...)``;
    by default the class's own defaults are used. Never raises for a bad source: the report
    says why it was refused, with the line, the rule and a traceback trimmed to the edited
    code. Only :class:`SandboxError` with reason ``unsupported`` (no POSIX) propagates.
    """
    started = time.perf_counter()
    limits = limits or SandboxLimits()

    def elapsed() -> float:
        return time.perf_counter() - started

    violations = check_source(source)
    if violations:
        listing = "\n".join(f"  {v}" for v in violations[:50])
        return ValidationReport(
            accepted=False,
            message=f"refused by the static checks ({len(violations)} problem(s)):\n{listing}",
            violations=violations,
            traceback=None,
            seconds=elapsed(),
            parameter_count=None,
        )
    hyperparameters = json.loads(json.dumps(hyperparameters or {}))
    try:
        result, protections = _run(_dynamic_check, (source, hyperparameters), {}, limits, timeout_s)
    except SandboxError as exc:
        if exc.reason == "unsupported":
            raise
        hint = _REASON_HINTS.get(exc.reason, "the code raised an exception")
        where = f" at line {exc.line}" if exc.line else ""
        violation = Violation(exc.line or 0, exc.reason, str(exc))
        return ValidationReport(
            accepted=False,
            message=f"refused [{exc.reason}]{where}: {hint}: {exc}",
            violations=[violation],
            traceback=exc.traceback,
            seconds=elapsed(),
            parameter_count=None,
            output=exc.output,
        )
    if not result["accepted"]:
        line = result.get("line")
        where = f" at line {line}" if line else ""
        return ValidationReport(
            accepted=False,
            message=f"refused [{result['rule']}]{where}: {result['message']}",
            violations=[Violation(line or 0, result["rule"], result["message"])],
            traceback=None,
            seconds=elapsed(),
            parameter_count=result.get("parameter_count"),
            protections=protections,
        )
    return ValidationReport(
        accepted=True,
        message=result["message"],
        violations=[],
        traceback=None,
        seconds=elapsed(),
        parameter_count=result["parameter_count"],
        protections=protections,
    )
