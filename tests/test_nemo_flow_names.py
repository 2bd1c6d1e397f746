"""Every public name of NeMo Flow 0.2's Python package exists in nemoflow.

The lists below are NeMo Flow 0.2's public API as its ``nemo_flow`` package last released it
(the package's ``__all__`` and those of its submodules, with the names its stubs declare in
them), written out here so that the test does not depend on NeMo Flow being installed. A name
nemoflow lacks fails the test unless it is in ``OMITTED`` (left out on purpose, with the reason,
also given in the README's "Coming from NeMo Flow") or ``NOT_BUILT_YET`` (planned, not there yet).
"""

from __future__ import annotations

import inspect

import pytest

TOP_LEVEL = (
    # submodules
    "scope", "tools", "llm", "guardrails", "intercepts", "subscribers", "scope_local", "codecs",
    "typed", "plugin", "adaptive", "utils",
    # scope stacks
    "ScopeStack", "create_scope_stack", "get_scope_stack", "scope_stack_active",
    "propagate_scope_to_thread", "set_thread_scope_stack",
    # types
    "ScopeAttributes", "ToolAttributes", "LLMAttributes", "ScopeType", "ScopeEvent", "MarkEvent",
    "ScopeHandle", "ToolHandle", "LLMHandle", "LLMRequest", "Event", "AnnotatedLLMRequest",
    "AnnotatedLLMResponse", "AtifExporter", "OpenInferenceConfig", "OpenInferenceSubscriber",
    "OpenTelemetryConfig", "OpenTelemetrySubscriber",
    # JSON and callback type aliases
    "JsonPrimitive", "JsonValue", "JsonObject", "Json", "UnsupportedBehavior",
    "ToolSanitizeGuardrail", "ToolConditionalExecutionGuardrail", "LlmSanitizeRequestGuardrail",
    "LlmSanitizeResponseGuardrail", "LlmConditionalExecutionGuardrail", "ToolRequestIntercept",
    "ToolExecutionIntercept", "LlmRequestIntercept", "LlmExecutionIntercept",
    "LlmStreamExecutionIntercept",
)

_MIDDLEWARE = ("tool_sanitize_request", "tool_sanitize_response", "tool_conditional_execution",
               "tool_request", "tool_execution", "llm_sanitize_request", "llm_sanitize_response",
               "llm_conditional_execution", "llm_request", "llm_execution",
               "llm_stream_execution")
_GUARDRAILS = tuple(f for f in _MIDDLEWARE if "sanitize" in f or "conditional" in f)
_INTERCEPTS = tuple(f for f in _MIDDLEWARE if f not in _GUARDRAILS)


def _register_pairs(families):
    return tuple(f"{verb}_{f}" for f in families for verb in ("register", "deregister"))


SUBMODULES = {
    "scope": ("event", "get_handle", "pop", "push", "scope"),
    "tools": ("call", "call_end", "execute", "request_intercepts", "conditional_execution"),
    "llm": ("call", "call_end", "execute", "stream_execute", "request_intercepts",
            "conditional_execution", "LLMRequest", "LlmStream"),
    "guardrails": (
        *_register_pairs(_GUARDRAILS), "ToolSanitizeGuardrail",
        "ToolConditionalExecutionGuardrail", "LlmSanitizeRequestGuardrail",
        "LlmSanitizeResponseGuardrail", "LlmConditionalExecutionGuardrail"),
    "intercepts": (
        *_register_pairs(_INTERCEPTS), "ToolRequestIntercept", "ToolExecutionIntercept",
        "LlmRequestIntercept", "LlmExecutionIntercept", "LlmStreamExecutionIntercept"),
    "subscribers": ("register", "deregister"),
    "scope_local": (*_register_pairs(_MIDDLEWARE), "register_subscriber",
                    "deregister_subscriber"),
    "codecs": ("AnnotatedLLMRequest", "AnthropicMessagesCodec", "LlmCodec", "LlmResponseCodec",
               "OpenAIChatCodec", "OpenAIResponsesCodec"),
    "utils": ("run_sync",),
    "typed": ("Codec", "BestEffortAnyCodec", "DataclassCodec", "JsonPassthrough",
              "PydanticCodec", "tool_execute", "llm_execute", "llm_stream_execute"),
    "plugin": ("ComponentSpec", "ConfigDiagnostic", "ConfigPolicy", "ConfigReport",
               "PluginConfig", "PluginContext", "Plugin", "clear", "initialize", "deregister",
               "list_kinds", "register", "report", "validate"),
}

# Keyword arguments of NeMo Flow 0.2 calls, checked like names.
KEYWORDS = {
    "scope.push": ("handle", "attributes", "data", "metadata"),
    "scope.scope": ("handle", "attributes", "data", "metadata"),
    "scope.event": ("handle", "data", "metadata"),
    "tools.call": ("handle", "attributes", "data", "metadata", "tool_call_id"),
    "tools.call_end": ("data", "metadata"),
    "tools.execute": ("handle", "attributes", "data", "metadata"),
    "llm.call": ("handle", "attributes", "data", "metadata", "model_name"),
    "llm.call_end": ("data", "metadata"),
    "llm.execute": ("handle", "attributes", "data", "metadata", "model_name", "codec",
                    "response_codec"),
    "llm.stream_execute": ("handle", "attributes", "data", "metadata", "model_name", "codec",
                           "response_codec"),
    "AtifExporter": ("model_name", "tool_definitions", "extra"),
    "typed.tool_execute": ("handle", "attributes", "data", "metadata"),
    "typed.llm_execute": ("handle", "attributes", "data", "metadata", "model_name", "codec",
                          "response_codec"),
    "typed.llm_stream_execute": ("handle", "attributes", "data", "metadata", "model_name",
                                 "codec", "response_codec"),
    "plugin.ComponentSpec": ("kind", "enabled", "config"),
    "plugin.PluginConfig": ("version", "components", "policy"),
    "plugin.ConfigPolicy": ("unknown_component", "unknown_field", "unsupported_value"),
}

# Left out on purpose; each reason is also in the README ("Coming from NeMo Flow").
OMITTED = {
    "adaptive": "the adaptive runtime (learned hints, adaptive cache governor) is an "
                "optimisation layer, not tracing; nemoflow records and exports, it does not "
                "tune calls",
}

# Planned, not built yet: still missing, listed so that the gap is visible here.
NOT_BUILT_YET: set[str] = set()


def _resolve(nf, dotted):
    obj = nf
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _missing(nf):
    missing = [name for name in TOP_LEVEL if not hasattr(nf, name)]
    for module, names in SUBMODULES.items():
        mod = getattr(nf, module, None)
        missing += [f"{module}.{n}" for n in names if mod is None or not hasattr(mod, n)]
    for dotted, keywords in KEYWORDS.items():
        params = inspect.signature(_resolve(nf, dotted)).parameters
        missing += [f"{dotted}({k}=)" for k in keywords if k not in params]
    return missing


def test_every_nemo_flow_name_exists_or_is_listed(nf):
    unexpected = [n for n in _missing(nf) if n not in OMITTED and n not in NOT_BUILT_YET]
    assert unexpected == []


def test_the_exception_lists_hold_only_missing_names(nf):
    missing = set(_missing(nf))
    assert set(OMITTED) <= missing, "an omitted name exists now: drop it from OMITTED"
    assert missing >= NOT_BUILT_YET, "a name was built: drop it from NOT_BUILT_YET"


def test_top_level_names_are_exported(nf):
    present = [n for n in TOP_LEVEL if hasattr(nf, n)]
    assert set(present) <= set(nf.__all__)


@pytest.mark.parametrize("module", sorted(SUBMODULES))
def test_nemo_flow_style_import_of_each_module(nf, module):
    names = [n for n in SUBMODULES[module] if f"{module}.{n}" not in NOT_BUILT_YET]
    namespace = {}
    exec(f"from nemoflow.{module} import {', '.join(names)}", namespace)
    assert all(namespace[n] is not None for n in names)
