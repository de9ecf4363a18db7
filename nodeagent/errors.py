"""The agent's own error hierarchy.

Each boundary raises its own type, chained ``from`` the cause, so the rest of the code never
sees a transport or OS exception. No message ever carries a secret value: messages name
registry keys, paths and reasons only.
"""

from __future__ import annotations

__all__ = [
    "HostFSError",
    "InputError",
    "LockTimeout",
    "NodeagentError",
    "NotARegularFile",
    "SettingsError",
    "SymlinkRefused",
    "TargetError",
]


class NodeagentError(Exception):
    """Base of every error the agent raises on purpose."""


class SettingsError(NodeagentError):
    """A flag, environment variable or settings file is invalid."""


class InputError(NodeagentError):
    """A credential source as a whole cannot be used (nothing from it is applied)."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class TargetError(NodeagentError):
    """A target refuses to render, because the result would break or clobber the node."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class HostFSError(NodeagentError):
    """A host filesystem operation failed; the file on the node is unchanged."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class SymlinkRefused(HostFSError):
    """The final component of a path the agent writes is a symlink: never followed."""


class NotARegularFile(HostFSError):
    """A directory or special file stands where the agent expects a regular file."""


class LockTimeout(HostFSError):
    """Another agent process on this node holds the state lock."""
