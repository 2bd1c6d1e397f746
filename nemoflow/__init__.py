"""nemoflow: tracing for Python agents, cheap enough to leave on in production."""

from __future__ import annotations

from . import (
    codecs,
    exporters,
    guardrails,
    intercepts,
    llm,
    redaction,
    scope,
    scope_local,
    subscribers,
    tools,
)
from ._backend import BACKEND
from ._backend import core as _core
from ._types import (
    AlreadyExistsError,
    GuardrailRejectedError,
    InternalError,
    InvalidArgumentError,
    LLMAttributes,
    NemoFlowError,
    NotFoundError,
    ScopeAttributes,
    ScopeType,
    ToolAttributes,
)
from .codecs import (
    AnnotatedLLMRequest,
    AnnotatedLLMResponse,
    AnthropicMessagesCodec,
    OpenAIChatCodec,
    OpenAIResponsesCodec,
)
from .context import (
    Binding,
    ScopeStack,
    bind,
    capture,
    create_scope_stack,
    fork_asyncio_context,
    get_scope_stack,
    propagate_scope_to_thread,
    scope_stack_active,
    set_thread_scope_stack,
    use_scope_stack,
    wrap,
)
from .exporters import AtofExporter, AtofExporterConfig, AtofExporterMode
from .exporters.otlp import (
    OpenInferenceConfig,
    OpenInferenceSubscriber,
    OpenTelemetryConfig,
    OpenTelemetrySubscriber,
)
from .integrations import instrument, uninstrument
from .llm import LLMRequest
from .trace import mark, trace

ScopeHandle = _core.ScopeHandle
ToolHandle = _core.ToolHandle
LLMHandle = _core.LLMHandle
ScopeEvent = _core.ScopeEvent
MarkEvent = _core.MarkEvent
Event = ScopeEvent | MarkEvent
diagnostics = _core.diagnostics
configure = _core.configure

__version__ = "0.1.0"

__all__ = [
    "BACKEND",
    "AlreadyExistsError",
    "AnnotatedLLMRequest",
    "AnnotatedLLMResponse",
    "AnthropicMessagesCodec",
    "AtofExporter",
    "AtofExporterConfig",
    "AtofExporterMode",
    "Binding",
    "Event",
    "GuardrailRejectedError",
    "InternalError",
    "InvalidArgumentError",
    "LLMAttributes",
    "LLMHandle",
    "LLMRequest",
    "MarkEvent",
    "NemoFlowError",
    "NotFoundError",
    "OpenAIChatCodec",
    "OpenAIResponsesCodec",
    "OpenInferenceConfig",
    "OpenInferenceSubscriber",
    "OpenTelemetryConfig",
    "OpenTelemetrySubscriber",
    "ScopeAttributes",
    "ScopeEvent",
    "ScopeHandle",
    "ScopeStack",
    "ScopeType",
    "ToolAttributes",
    "ToolHandle",
    "bind",
    "capture",
    "codecs",
    "configure",
    "create_scope_stack",
    "diagnostics",
    "exporters",
    "fork_asyncio_context",
    "get_scope_stack",
    "guardrails",
    "instrument",
    "intercepts",
    "llm",
    "mark",
    "propagate_scope_to_thread",
    "redaction",
    "scope",
    "scope_local",
    "scope_stack_active",
    "set_thread_scope_stack",
    "subscribers",
    "tools",
    "trace",
    "uninstrument",
    "use_scope_stack",
    "wrap",
]
