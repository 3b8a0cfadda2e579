"""Entering the OS sandbox: the irreversible lock-down of a worker process.

:func:`enter_sandbox` is called in a fresh worker process (see :mod:`.runner`) before it touches
untrusted code: private empty working directory, scrubbed environment, rlimits
(:class:`SandboxLimits`), network/mount namespaces and a private root where the OS permits
them, dropped capabilities, and an audit hook (:pep:`578`) refusing process creation, sockets,
ctypes, file access outside the sandbox and more. :func:`lock_down` does the same and returns
what it achieved (:class:`LockdownState`: the protections in force and the audit hook's
refusals), which the runner reports.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import importlib.util
import os
import re
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["LockdownState", "SandboxError", "SandboxLimits", "enter_sandbox", "lock_down"]


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
    """A sandboxed run failed: ``reason`` is one of the exit causes of :mod:`.runner`
    (``timeout``, ``cpu-time``, ``memory``, ``sandbox-denied``, ``runtime-error``,
    ``killed``, ``crashed``, ``output-too-large``, ``result-too-large``, ``result-type``,
    ``unsupported``), ``traceback`` the traceback trimmed to untrusted frames, ``line`` the
    line of the innermost untrusted frame, ``output`` the tail of the worker's stdout/stderr,
    ``details`` the full traceback (trimmed), for trusted callers such as the server's jobs.
    """

    def __init__(
        self,
        message: str,
        reason: str = "runtime-error",
        traceback: str | None = None,
        line: int | None = None,
        output: str = "",
        details: str = "",
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.traceback = traceback
        self.line = line
        self.output = output
        self.details = details


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
class LockdownState:
    """What :func:`lock_down` achieved: protections in force and the audit hook's refusals."""

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


def _make_audit_hook(workdir: str, state: LockdownState) -> Callable[[str, tuple], None]:
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
                or root.startswith(("leads_diffusion_", "leads_reaction_"))
                or (root.startswith("_") and root not in _DENIED_PRIVATE_IMPORTS)
            )
            if not allowed:
                deny(event, name)

    return hook


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def _unshare_namespaces(state: LockdownState) -> bool:
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


def _private_root(mount: Any, workdir: str, state: LockdownState) -> bool:
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


def _isolate_filesystem(workdir: str, state: LockdownState) -> None:
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


def _drop_capabilities(state: LockdownState) -> None:
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


def _set_limits(limits: SandboxLimits, state: LockdownState) -> None:
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


def lock_down(limits: SandboxLimits, workdir: Path) -> LockdownState:
    """:func:`enter_sandbox`, returning what it achieved."""
    state = LockdownState()
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
    lock_down(limits, workdir)
