"""LLM codecs: OpenAI Chat Completions, OpenAI Responses and Anthropic Messages.

Each codec turns a provider request into an ``AnnotatedLLMRequest`` (``decode``) and back
(``encode``), and a provider response into an ``AnnotatedLLMResponse`` (``decode_response``).
``StreamAccumulator`` folds streamed chunks into the same response. ``normalize`` holds the
rules exporters share (model name, usage merging, cost, finish-reason vocabularies, message
JSON).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from . import normalize
from ._types import AnnotatedLLMRequest, AnnotatedLLMResponse
from .anthropic import AnthropicMessagesCodec
from .normalize import codec_for
from .openai_chat import OpenAIChatCodec
from .openai_responses import OpenAIResponsesCodec
from .streaming import StreamAccumulator, accumulate_stream

__all__ = [
    "AnnotatedLLMRequest",
    "AnnotatedLLMResponse",
    "AnthropicMessagesCodec",
    "LlmCodec",
    "LlmResponseCodec",
    "OpenAIChatCodec",
    "OpenAIResponsesCodec",
    "StreamAccumulator",
    "accumulate_stream",
    "codec_for",
    "normalize",
]


@runtime_checkable
class LlmCodec(Protocol):
    """What a request codec provides: ``decode`` a provider request, ``encode`` it back."""

    def decode(self, request) -> AnnotatedLLMRequest: ...

    def encode(self, annotated: AnnotatedLLMRequest, original): ...


@runtime_checkable
class LlmResponseCodec(Protocol):
    """What a response codec provides: ``decode_response`` a provider response."""

    def decode_response(self, response) -> AnnotatedLLMResponse: ...
