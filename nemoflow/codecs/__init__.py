"""LLM codecs: OpenAI Chat Completions, OpenAI Responses and Anthropic Messages.

Each codec turns a provider request into an ``AnnotatedLLMRequest`` (``decode``) and back
(``encode``), and a provider response into an ``AnnotatedLLMResponse`` (``decode_response``).
``StreamAccumulator`` folds streamed chunks into the same response. ``normalize`` holds the
rules exporters share (model name, usage merging, cost, finish-reason vocabularies, message
JSON).
"""

from __future__ import annotations

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
    "OpenAIChatCodec",
    "OpenAIResponsesCodec",
    "StreamAccumulator",
    "accumulate_stream",
    "codec_for",
    "normalize",
]
