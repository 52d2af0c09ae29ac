"""The project a turn belongs to: the label of its metrics and the owner of its webhooks."""

from __future__ import annotations

from shared.models import TurnRequest

DEFAULT_PROJECT = "default"


def project_of(req: TurnRequest) -> str:
    # API keys give each turn a project; a turn accepted without one belongs to the default project.
    project = getattr(req, "project", None)
    return project if isinstance(project, str) and project else DEFAULT_PROJECT
