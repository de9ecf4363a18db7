"""The long-running agent (``nodeagent run``): the composition root and its parts."""

from nodeagent.config import RunSettings, SourceSpec

from .agent import Agent
from .status import REVISION_ANNOTATION, SYNCED_AT_ANNOTATION
from .taint import STARTUP_TAINT

__all__ = ["REVISION_ANNOTATION", "STARTUP_TAINT", "SYNCED_AT_ANNOTATION", "Agent", "RunSettings", "SourceSpec"]
