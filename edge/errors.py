"""Errors of the agent, each with a message an operator can act on.

EdgewatchError (devices.errors)
└── AgentError
    ├── ConfigError      the TOML file is missing, unparsable, or a key is wrong
    └── OutboxError      the outbox database cannot be opened or written
"""

from __future__ import annotations

from devices.errors import EdgewatchError


class AgentError(EdgewatchError):
    pass


class ConfigError(AgentError):
    """Names the file, the key and what is wrong with it."""


class OutboxError(AgentError):
    """The outbox cannot be opened or written (path, permissions, corruption)."""
