"""Static rules for agent-edited source (a diffusion template or a reaction model): pure
``ast`` analysis, nothing runs.

:func:`check_source` returns the :class:`Violation` list of a source; each names the line and
one of these rules (``kind="reaction"`` differs only where said):

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
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "EDITED_FILENAME",
    "EDITED_REACTION_FILENAME",
    "MAX_SOURCE_CHARS",
    "REACTION_BASE_MODULE",
    "SourceKind",
    "Violation",
    "check_source",
]

#: The filename given to ``compile()`` for edited source: tracebacks keep only its frames.
EDITED_FILENAME = "<edited diffusion>"
#: The same for edited reaction code (any ``<edited ...>`` frame is kept in tracebacks).
EDITED_REACTION_FILENAME = "<edited reaction>"
#: What edited code is: a diffusion template or a reaction model.
SourceKind = Literal["diffusion", "reaction"]
#: The one engine module reaction code may import from, and the names it may take from it.
REACTION_BASE_MODULE = "leads_engine.reactions.base"
REACTION_BASE_NAMES = frozenset({"ParameterRange", "ReactionModel", "smooth_step"})
#: Calls allowed in a class-body constant of reaction code (with constant arguments).
REACTION_CONSTANT_CALLS = frozenset({"ParameterRange"})
MAX_SOURCE_CHARS = 100_000

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


def _is_constant_expression(node: ast.AST, calls: frozenset[str] = frozenset()) -> bool:
    """Literals, names, attribute chains and arithmetic on them: no comprehensions, and no
    calls except to the plain names in ``calls`` with constant arguments."""

    def constant(item: ast.AST) -> bool:
        return _is_constant_expression(item, calls)

    if isinstance(node, ast.Constant | ast.Name):
        return True
    if isinstance(node, ast.Attribute):
        return _dotted(node) is not None
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return all(constant(e) for e in node.elts)
    if isinstance(node, ast.Dict):
        return all(
            k is not None and constant(k) and constant(v)
            for k, v in zip(node.keys, node.values, strict=True)
        )
    if isinstance(node, ast.UnaryOp):
        return constant(node.operand)
    if isinstance(node, ast.BinOp):
        return constant(node.left) and constant(node.right)
    if isinstance(node, ast.Call):
        return (
            isinstance(node.func, ast.Name)
            and node.func.id in calls
            and all(constant(a) and not isinstance(a, ast.Starred) for a in node.args)
            and all(k.arg is not None and constant(k.value) for k in node.keywords)
        )
    return False


class _Checker:
    """Collects violations of one parsed source (see the module docstring for the rules)."""

    def __init__(self, kind: SourceKind = "diffusion") -> None:
        self.violations: list[Violation] = []
        self.kind = kind
        #: calls a class-body constant may make (reaction code: its parameter ranges)
        self.constant_calls = REACTION_CONSTANT_CALLS if kind == "reaction" else frozenset()

    def add(self, node: ast.AST | None, rule: str, message: str) -> None:
        self.violations.append(Violation(getattr(node, "lineno", 0) or 0, rule, message))

    # -- whole tree ------------------------------------------------------------------------
    def check_tree(self, tree: ast.Module) -> None:
        docstrings = self._docstring_nodes(tree)
        self._check_top_level(tree)
        for node in ast.walk(tree):
            self._check_node(node, docstrings)
        if self.kind == "reaction":
            self._check_reaction_interface(tree)
        else:
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
    def _is_constant_assignment(stmt: ast.stmt, calls: frozenset[str] = frozenset()) -> bool:
        if isinstance(stmt, ast.Assign):
            return all(isinstance(t, ast.Name) for t in stmt.targets) and _is_constant_expression(
                stmt.value, calls
            )
        if isinstance(stmt, ast.AnnAssign):
            return isinstance(stmt.target, ast.Name) and (
                stmt.value is None or _is_constant_expression(stmt.value, calls)
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
            elif isinstance(stmt, ast.Pass) or self._is_constant_assignment(
                stmt, self.constant_calls
            ):
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
        if self.kind == "reaction" and module == REACTION_BASE_MODULE:
            for alias in node.names:
                if alias.name not in REACTION_BASE_NAMES or alias.asname is not None:
                    self.add(
                        node,
                        "import-not-allowed",
                        f"from {module} only {', '.join(sorted(REACTION_BASE_NAMES))} may be "
                        "imported (without 'as')",
                    )
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
                inner = _Checker(self.kind)
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

    def _check_reaction_interface(self, tree: ast.Module) -> None:
        """Exactly one top-level class deriving from ``ReactionModel``, with a plain
        ``rates(self, u, w, p)``; nothing rebinds the name ``ReactionModel``."""
        for node in ast.walk(tree):
            rebinds = (
                isinstance(node, ast.Name)
                and node.id == "ReactionModel"
                and isinstance(node.ctx, ast.Store)
            ) or (isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name == "ReactionModel")
            if rebinds:
                self.add(node, "interface", "the name 'ReactionModel' must not be rebound")
        models = [
            s
            for s in tree.body
            if isinstance(s, ast.ClassDef) and any(_dotted(b) == "ReactionModel" for b in s.bases)
        ]
        if len(models) != 1:
            found = ", ".join(c.name for c in models) or "none"
            self.add(
                models[1] if len(models) > 1 else None,
                "interface",
                "the source must define exactly one top-level class deriving from "
                f"ReactionModel (found: {found}); import it with 'from {REACTION_BASE_MODULE} "
                "import ParameterRange, ReactionModel'",
            )
            return
        cls = models[0]
        methods = {s.name: s for s in cls.body if isinstance(s, ast.FunctionDef)}
        rates = methods.get("rates")
        if rates is None:
            self.add(cls, "interface", f"{cls.name} needs rates(self, u, w, p)")
            return
        args = [a.arg for a in rates.args.posonlyargs + rates.args.args]
        if args[:4] != ["self", "u", "w", "p"] or len(args) - 4 > len(rates.args.defaults):
            self.add(
                rates,
                "interface",
                f"signature must be rates(self, u, w, p), got ({', '.join(args)})",
            )
        if rates.decorator_list:
            self.add(rates, "interface", "rates must be a plain method (no decorators)")

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


def check_source(source: str, kind: SourceKind = "diffusion") -> list[Violation]:
    """Static checks of an edited diffusion (or, ``kind="reaction"``, reaction) source; never
    executes anything.

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
    checker = _Checker(kind)
    try:
        checker.check_tree(tree)
    except RecursionError:
        return [Violation(0, "syntax", "the source nests too deeply")]
    unique = {(v.line, v.rule, v.message): v for v in checker.violations}
    return sorted(unique.values(), key=lambda v: (v.line, v.rule, v.message))
