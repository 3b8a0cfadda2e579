"""Data sets through the tools, so that a host user never needs the shell: list them, generate
a benchmark set, import a recording.

Listings and results show a data set's shape and sampling only (the fields an anonymised session
shows, :data:`~leads_server.anonymise.PUBLIC_SUMMARY_FIELDS`): never the reaction it was
simulated with. The data sets of anonymised sessions are left out of the listing (their names
are what those sessions hide); ``leads-server reveal`` tells the user.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio.to_thread

from leads_engine.dataset import DatasetError, EPDataset, datasets_dir

from .anonymise import public_summary
from .archive import ArchiveError
from .completions import BENCHMARKS
from .errors import DiscoveryError
from .inputs import GenerateDataset, ImportRecording, ListDatasets
from .models import DatasetEntry, DatasetList
from .service import DiscoveryService
from .state import ProgressCallback


def _kind(data: EPDataset) -> str:
    return "recording" if data.is_recording else "simulated"


def _entry(name: str, data: EPDataset | None, benchmark: bool) -> DatasetEntry:
    summary = {} if data is None else public_summary(data.summary(), name)
    summary.pop("name", None)
    kind = "benchmark" if benchmark else ("simulated" if data is None else _kind(data))
    return DatasetEntry(name=name, kind=kind, saved=data is not None, summary=summary)


class DatasetTools:
    """Listing, generating and importing data sets for one service."""

    def __init__(self, service: DiscoveryService) -> None:
        self.service = service

    def hidden_paths(self) -> set[Path]:
        """The data set files of the archive's anonymised sessions."""
        sessions = self.service.sessions
        hidden = set()
        for row in self.service.archive.list_sessions():
            if row.anonymise:
                try:
                    hidden.add(Path(sessions.truth.read(row.session_id).dataset_path).resolve())
                except ArchiveError:
                    continue
        return hidden

    async def list_datasets(self, request: ListDatasets) -> DatasetList:
        """Benchmarks and saved sets, without the anonymised sessions' ones."""
        hidden = self.hidden_paths()
        folder = datasets_dir()
        saved = sorted(folder.glob("*.npz")) if folder.is_dir() else []
        entries: list[DatasetEntry] = []
        left_out = 0
        for name in BENCHMARKS:
            path = folder / f"{name}.npz"
            if path.resolve() in hidden:
                left_out += 1
                continue
            data = await self._load(path) if path.exists() else None
            entries.append(_entry(name, data, benchmark=True))
        for path in saved:
            if path.stem in BENCHMARKS:
                continue
            if path.resolve() in hidden:
                left_out += 1
                continue
            data = await self._load(path)
            if data is not None:
                entries.append(_entry(path.stem, data, benchmark=False))
        notice = (
            f"{left_out} data set(s) used by anonymised sessions are not listed "
            "(leads-server reveal SESSION_ID shows a session's data set)"
            if left_out
            else None
        )
        return DatasetList(datasets=entries, notice=notice)

    async def _load(self, path: Path) -> EPDataset | None:
        try:
            return await anyio.to_thread.run_sync(self.service.store.dataset, path)
        except (DatasetError, OSError):
            return None

    async def generate_dataset(
        self, request: GenerateDataset, progress: ProgressCallback | None = None
    ) -> DatasetEntry:
        """Generate a benchmark set (with progress) unless it is saved already."""
        path, _ = await self.service.sessions._resolve_dataset(request.benchmark, progress)
        data = await self._load(path)
        if data is None:
            raise DiscoveryError(f"the benchmark {request.benchmark!r} could not be read back")
        return _entry(request.benchmark, data, benchmark=True)

    async def import_recording(
        self, request: ImportRecording, progress: ProgressCallback | None = None
    ) -> DatasetEntry:
        """Validate and assemble a recording, and save it as ``{name}.npz``."""
        path = datasets_dir() / f"{request.name}.npz"
        if path.exists() or request.name in BENCHMARKS:
            raise DiscoveryError(
                f"a data set named {request.name!r} exists already; choose another name"
            )
        if progress is not None:
            await progress(0.0, 1.0, f"importing recording {request.name}")

        def build() -> EPDataset:
            from leads_engine.recordings import import_recording

            options: dict[str, Any] = {
                key: getattr(request, key)
                for key in ("lead_field", "electrodes", "contact_nodes", "pacing_sites")
                if getattr(request, key) is not None
            }
            data = import_recording(
                request.mesh, request.signals, request.times, name=request.name, **options
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            data.save(path)
            return data

        try:
            data = await anyio.to_thread.run_sync(build)
        except (DatasetError, OSError, ValueError) as exc:
            raise DiscoveryError(f"the recording cannot be imported: {exc}") from exc
        if progress is not None:
            await progress(1.0, 1.0, f"imported recording {request.name}")
        return _entry(request.name, data, benchmark=False)
