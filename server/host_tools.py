"""The tools that serve hosts besides the discovery service's own: training without holding the
request open (``train_candidate(wait=false)``, ``wait_candidate``, ``cancel_candidate``) and the
data set tools (:mod:`leads_server.datasets`).

:class:`HostTools` takes the same input models as :class:`~leads_server.service.DiscoveryService`
and is consulted first by the MCP layer; what it does not define is the service's.
"""

from __future__ import annotations

from .background import BackgroundTrainings
from .datasets import DatasetTools
from .inputs import CancelCandidate, TrainCandidate, WaitCandidate
from .models import CandidateProgress, TrainingResult
from .service import DiscoveryService
from .state import ProgressCallback


class HostTools:
    """Background training over one service."""

    def __init__(self, service: DiscoveryService) -> None:
        self.service = service
        self.background = BackgroundTrainings(service)
        datasets = DatasetTools(service)
        self.list_datasets = datasets.list_datasets
        self.generate_dataset = datasets.generate_dataset
        self.import_recording = datasets.import_recording

    async def train_candidate(
        self, request: TrainCandidate, progress: ProgressCallback | None = None
    ) -> TrainingResult:
        """Train the draft: until it ends (``wait``), or in the background."""
        if request.wait:
            return await self.service.train_candidate(request, progress)
        session = await self.service.sessions.get(request.session_id)
        return await self.background.start(
            session,
            request.epochs or session.epochs,
            request.warm_start,
            request.learning_rate_scale,
        )

    async def wait_candidate(self, request: WaitCandidate) -> CandidateProgress:
        """A background training's result, or its progress after ``timeout_s``."""
        return await self.background.wait(request.candidate_id, request.timeout_s)

    async def cancel_candidate(self, request: CancelCandidate) -> CandidateProgress:
        """Stop a background training; its budget is given back."""
        return await self.background.cancel(request.candidate_id)

    def close(self) -> None:
        self.background.cancel_all()
