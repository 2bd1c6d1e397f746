"""JSON and middleware callback type aliases, under the names NeMo Flow code imports.

They have no runtime behaviour: they document what a payload or a callback looks like.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Literal, TypeAlias, TypedDict

from ._managed import LLMRequest
from .codecs import AnnotatedLLMRequest

__all__ = [
    "EventMetadata",
    "EventMetadataInjectorCallback",
    "EventMetadataScalar",
    "EventMetadataValue",
    "EventSanitizeFields",
    "EventSanitizeGuardrail",
    "Json",
    "JsonObject",
    "JsonPrimitive",
    "JsonValue",
    "LlmConditionalExecutionGuardrail",
    "LlmExecutionIntercept",
    "LlmRequestIntercept",
    "LlmSanitizeRequestGuardrail",
    "LlmSanitizeResponseGuardrail",
    "LlmStreamExecutionIntercept",
    "ToolConditionalExecutionGuardrail",
    "ToolExecutionIntercept",
    "ToolRequestIntercept",
    "ToolSanitizeGuardrail",
    "UnsupportedBehavior",
]

JsonPrimitive: TypeAlias = str | int | float | bool | None
JsonValue: TypeAlias = JsonPrimitive | list["JsonValue"] | dict[str, "JsonValue"]
JsonObject: TypeAlias = dict[str, JsonValue]
Json: TypeAlias = JsonValue
UnsupportedBehavior: TypeAlias = Literal["ignore", "warn", "error"]

ToolSanitizeGuardrail: TypeAlias = Callable[[str, Json], Json]
ToolConditionalExecutionGuardrail: TypeAlias = Callable[[str, Json], str | None]
LlmSanitizeRequestGuardrail: TypeAlias = Callable[[LLMRequest], LLMRequest]
LlmSanitizeResponseGuardrail: TypeAlias = Callable[[JsonObject], JsonObject]
LlmConditionalExecutionGuardrail: TypeAlias = Callable[[LLMRequest], str | None]
ToolRequestIntercept: TypeAlias = Callable[[str, Json], Json]
ToolExecutionIntercept: TypeAlias = Callable[
    [str, Json, Callable[[Json], Awaitable[Json]]], Json | Awaitable[Json]]
LlmRequestIntercept: TypeAlias = Callable[
    [str, LLMRequest, AnnotatedLLMRequest | None],
    tuple[LLMRequest, AnnotatedLLMRequest | None]]
LlmExecutionIntercept: TypeAlias = Callable[
    [str, LLMRequest, Callable[[LLMRequest], Awaitable[Json]]],
    Json | Awaitable[Json]]
LlmStreamExecutionIntercept: TypeAlias = Callable[
    [LLMRequest, Callable[[LLMRequest], Awaitable[AsyncIterator[Json]]]],
    AsyncIterator[Json] | Awaitable[AsyncIterator[Json]]]


class EventSanitizeFields(TypedDict):
    """The fields of an event an event sanitizer may change."""

    data: Json | None
    category_profile: JsonObject | None
    metadata: Json | None


#: ``fn(event, fields) -> fields``: a mark, scope-start or scope-end sanitizer.
EventSanitizeGuardrail: TypeAlias = Callable[
    [object, EventSanitizeFields], EventSanitizeFields | Awaitable[EventSanitizeFields]]
EventMetadataScalar: TypeAlias = str | int | float | bool
EventMetadataValue: TypeAlias = (EventMetadataScalar | list[str] | list[int] | list[float]
                                 | list[bool])
EventMetadata: TypeAlias = dict[str, EventMetadataValue]
#: ``fn(event) -> {key: scalar or list of one scalar type}``: keys added to an event's metadata.
EventMetadataInjectorCallback: TypeAlias = Callable[
    [object], EventMetadata | Awaitable[EventMetadata]]
