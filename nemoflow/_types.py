"""Enums, attribute flags and errors shared by both cores.

This module has no dependencies inside the package: the compiled core and the pure-Python twin
both import it, so a handle made by either carries the very same ``ScopeType`` and flag classes.
"""

from __future__ import annotations

import enum

__all__ = [
    "ATOF_VERSION",
    "CATEGORIES",
    "SEVERITY_KEY",
    "AlreadyExistsError",
    "GuardrailRejectedError",
    "InternalError",
    "InvalidArgumentError",
    "LLMAttributes",
    "LogSeverity",
    "NemoFlowError",
    "NotFoundError",
    "ScopeAttributes",
    "ScopeType",
    "ToolAttributes",
]

ATOF_VERSION = "0.1"


class ScopeType(enum.IntEnum):
    """What a scope is; its lowercase name is the ATOF ``category``."""

    Agent = 0
    Function = 1
    Tool = 2
    Llm = 3
    Retriever = 4
    Embedder = 5
    Reranker = 6
    Guardrail = 7
    Evaluator = 8
    Custom = 9
    Unknown = 10


#: ATOF ``category`` strings indexed by ``ScopeType`` value.
CATEGORIES = tuple(member.name.lower() for member in ScopeType)


class ScopeAttributes(enum.IntFlag):
    """Flags of a scope (``parallel``, ``relocatable`` on the wire)."""

    PARALLEL = 1
    RELOCATABLE = 2

    @property
    def is_parallel(self) -> bool:
        return bool(self & ScopeAttributes.PARALLEL)

    @property
    def is_relocatable(self) -> bool:
        return bool(self & ScopeAttributes.RELOCATABLE)


class ToolAttributes(enum.IntFlag):
    """Flags of a tool call (``remote`` on the wire)."""

    REMOTE = 1

    @property
    def is_remote(self) -> bool:
        return bool(self & ToolAttributes.REMOTE)


class LLMAttributes(enum.IntFlag):
    """Flags of an LLM call (``stateful``, ``streaming`` on the wire)."""

    STATEFUL = 1
    STREAMING = 2

    @property
    def is_stateful(self) -> bool:
        return bool(self & LLMAttributes.STATEFUL)

    @property
    def is_streaming(self) -> bool:
        return bool(self & LLMAttributes.STREAMING)


# Wire names per attribute class, by bit, already in sorted order for each class.
ATTRIBUTE_NAMES = {
    ScopeAttributes: ((1, "parallel"), (2, "relocatable")),
    ToolAttributes: ((1, "remote"),),
    LLMAttributes: ((1, "stateful"), (2, "streaming")),
}


class LogSeverity(enum.Enum):
    """The severity of a mark (``event(..., severity=)``), for readers that export marks as logs."""

    Trace = "trace"
    Debug = "debug"
    Info = "info"
    Warn = "warn"
    Error = "error"

    def __repr__(self):
        return f"LogSeverity.{self.name}"


#: The metadata key a mark's severity is written under (the reference's, so readers agree).
SEVERITY_KEY = "nemo_relay.log.severity"


def attribute_names(cls, value: int) -> list:
    """The sorted wire names of the bits set in ``value`` for attribute class ``cls``."""
    return [name for bit, name in ATTRIBUTE_NAMES[cls] if value & bit]


class NemoFlowError(RuntimeError):
    """Base class of every error nemoflow raises on purpose."""


class AlreadyExistsError(NemoFlowError):
    """A registration with that name already exists."""


class NotFoundError(NemoFlowError):
    """A handle or registration is not (or no longer) known."""


class InvalidArgumentError(NemoFlowError):
    """An argument is well-typed but not acceptable in the current state."""


class GuardrailRejectedError(NemoFlowError):
    """A conditional guardrail rejected a managed call."""


class InternalError(NemoFlowError):
    """A middleware callback failed or returned the wrong type."""
