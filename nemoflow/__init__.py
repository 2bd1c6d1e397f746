"""nemoflow: tracing for Python agents, cheap enough to leave on in production."""

from __future__ import annotations

from . import (
    _middleware,
    codecs,
    event_metadata,
    exporters,
    guardrails,
    intercepts,
    llm,
    plugin,
    propagation,
    redaction,
    scope,
    scope_local,
    subscribers,
    tools,
    typed,
    utils,
)
from ._backend import BACKEND
from ._backend import core as _core
from ._managed import ToolExecutionResult
from ._metrics import MetricKind, MetricMeasurement, MetricValueType
from ._types import (
    AlreadyExistsError,
    GuardrailRejectedError,
    InternalError,
    InvalidArgumentError,
    LLMAttributes,
    LogSeverity,
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
from .exporters import AtifExporter, AtofExporter, AtofExporterConfig, AtofExporterMode
from .exporters.otlp import (
    OpenInferenceConfig,
    OpenInferenceSubscriber,
    OpenTelemetryConfig,
    OpenTelemetrySubscriber,
)
from .integrations import instrument, uninstrument
from .llm import LLMRequest, LlmStream
from .profiling import _enable_from_env, profile, stats
from .propagation import (
    PropagationContext,
    capture_propagation_context,
    capture_propagation_context_with_root,
    capture_rootless_propagation_context,
    capture_traceparent,
    continue_trace,
    create_scope_stack_from_propagation,
    inject_traceparent,
)
from .trace import mark, trace
from .types import (
    Json,
    JsonObject,
    JsonPrimitive,
    JsonValue,
    LlmConditionalExecutionGuardrail,
    LlmExecutionIntercept,
    LlmRequestIntercept,
    LlmSanitizeRequestGuardrail,
    LlmSanitizeResponseGuardrail,
    LlmStreamExecutionIntercept,
    ToolConditionalExecutionGuardrail,
    ToolExecutionIntercept,
    ToolRequestIntercept,
    ToolSanitizeGuardrail,
    UnsupportedBehavior,
)

ScopeHandle = _core.ScopeHandle
ToolHandle = _core.ToolHandle
LLMHandle = _core.LLMHandle
ScopeEvent = _core.ScopeEvent
MarkEvent = _core.MarkEvent
Event = ScopeEvent | MarkEvent


def diagnostics() -> dict:
    """Counters of what was delivered and what failed: subscribers, exporters, the pipeline,
    redaction, and event sanitizers and metadata injectors (``event_middleware``)."""
    out = _core.diagnostics()
    out["event_middleware"] = _middleware.event_failures()
    return out


configure = _core.configure

__version__ = "0.1.0"

_enable_from_env()  # NEMOFLOW_STATS=1: count scope latencies from the start (nf.stats())

__all__ = [
    "BACKEND",
    "AlreadyExistsError",
    "AnnotatedLLMRequest",
    "AnnotatedLLMResponse",
    "AnthropicMessagesCodec",
    "AtifExporter",
    "AtofExporter",
    "AtofExporterConfig",
    "AtofExporterMode",
    "Binding",
    "Event",
    "GuardrailRejectedError",
    "InternalError",
    "InvalidArgumentError",
    "Json",
    "JsonObject",
    "JsonPrimitive",
    "JsonValue",
    "LLMAttributes",
    "LLMHandle",
    "LLMRequest",
    "LlmConditionalExecutionGuardrail",
    "LlmExecutionIntercept",
    "LlmRequestIntercept",
    "LlmSanitizeRequestGuardrail",
    "LlmSanitizeResponseGuardrail",
    "LlmStream",
    "LlmStreamExecutionIntercept",
    "LogSeverity",
    "MarkEvent",
    "MetricKind",
    "MetricMeasurement",
    "MetricValueType",
    "NemoFlowError",
    "NotFoundError",
    "OpenAIChatCodec",
    "OpenAIResponsesCodec",
    "OpenInferenceConfig",
    "OpenInferenceSubscriber",
    "OpenTelemetryConfig",
    "OpenTelemetrySubscriber",
    "PropagationContext",
    "ScopeAttributes",
    "ScopeEvent",
    "ScopeHandle",
    "ScopeStack",
    "ScopeType",
    "ToolAttributes",
    "ToolConditionalExecutionGuardrail",
    "ToolExecutionIntercept",
    "ToolExecutionResult",
    "ToolHandle",
    "ToolRequestIntercept",
    "ToolSanitizeGuardrail",
    "UnsupportedBehavior",
    "bind",
    "capture",
    "capture_propagation_context",
    "capture_propagation_context_with_root",
    "capture_rootless_propagation_context",
    "capture_traceparent",
    "codecs",
    "configure",
    "continue_trace",
    "create_scope_stack",
    "create_scope_stack_from_propagation",
    "diagnostics",
    "event_metadata",
    "exporters",
    "fork_asyncio_context",
    "get_scope_stack",
    "guardrails",
    "inject_traceparent",
    "instrument",
    "intercepts",
    "llm",
    "mark",
    "plugin",
    "profile",
    "propagate_scope_to_thread",
    "propagation",
    "redaction",
    "scope",
    "scope_local",
    "scope_stack_active",
    "set_thread_scope_stack",
    "stats",
    "subscribers",
    "tools",
    "trace",
    "typed",
    "uninstrument",
    "use_scope_stack",
    "utils",
    "wrap",
]
