"""LangChain: a callback handler that turns runs into nemoflow scopes.

``config={"callbacks": [NemoFlowCallbackHandler()]}`` on any runnable (or
``with_nemo_flow_callbacks(config)``) records every run of it: a top-level chain or graph is an
``Agent`` scope, nested chains and graph nodes are ``Function`` scopes, chat models and LLMs are
LLM calls (with ``llm.chunk`` marks when they stream), tools are tool calls and retrievers are
``Retriever`` scopes. Each scope's parent is the scope of its parent run; a run without one
hangs from the scope current where it started. Chain scopes are made current while the chain
runs, so traced code and instrumented SDK calls inside a node land under it.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from typing import Any

from langchain_core.callbacks.base import BaseCallbackHandler

from .. import _llm_pipeline, _managed
from .._backend import core as _core
from .._types import ScopeType

__all__ = ["NemoFlowCallbackHandler", "NemoFlowMiddleware", "with_nemo_flow_callbacks"]  # noqa: F822

_OK, _ERROR = _core.STATUS_OK, _core.STATUS_ERROR

#: "llm" / "tool" while ``NemoFlowMiddleware`` runs that call as a managed call: the callback
#: handler then leaves the run to it, so the call is recorded once.
_MANAGED: contextvars.ContextVar = contextvars.ContextVar("nemoflow.langchain.managed",
                                                          default=None)


def __getattr__(name):
    if name == "NemoFlowMiddleware":  # needs the ``langchain`` package, imported on use
        from ._langchain_agents import NemoFlowMiddleware
        return NemoFlowMiddleware
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _take_managed(kind) -> bool:
    """True when the run starting now is a call the middleware records itself."""
    if _MANAGED.get() != kind:
        return False
    _MANAGED.set(None)  # only the call itself: runs nested in it are the handler's again
    return True


def _lenient(value):
    """``value`` encoded for an event; what is not JSON is recorded as its str()."""
    if value is None:
        return None
    try:
        return _core.Encoded(_core.encode(_plain(value), True))
    except Exception:  # observability never breaks the traced run
        return None


def _plain(value, depth=0):
    """LangChain objects (messages, documents, pydantic models) as JSON-like values."""
    if value is None or isinstance(value, (str, int, float, bool)) or depth > 20:
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, depth + 1) for v in value]
    if _is_message(value):
        return _message(value)
    page = getattr(value, "page_content", None)
    if isinstance(page, str):
        return {"page_content": page, "metadata": _plain(getattr(value, "metadata", {}),
                                                         depth + 1)}
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        try:
            return _plain(dump(mode="json"), depth + 1)
        except Exception:
            pass
    return value


def _is_message(value) -> bool:
    return hasattr(value, "content") and isinstance(getattr(value, "type", None), str) and (
        hasattr(value, "additional_kwargs"))


_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool",
          "function": "function", "AIMessageChunk": "assistant"}


def _message(message) -> dict:
    """An OpenAI Chat style message dict for a LangChain message."""
    try:
        from langchain_core.messages import convert_to_openai_messages
        out = convert_to_openai_messages(message)
        if isinstance(out, dict):
            return out
    except Exception:
        pass
    out = {"role": _ROLES.get(message.type, message.type), "content": _plain(message.content)}
    return out


def _name(serialized, kwargs, default):
    name = kwargs.get("name")
    if isinstance(name, str) and name:
        return name
    if isinstance(serialized, dict):
        name = serialized.get("name")
        if isinstance(name, str) and name:
            return name
        ids = serialized.get("id")
        if isinstance(ids, list) and ids and isinstance(ids[-1], str):
            return ids[-1]
    return default


def _model_of(model):
    """The model name of a LangChain chat model object."""
    for key in ("model_name", "model", "model_id"):
        value = getattr(model, key, None)
        if isinstance(value, str) and value:
            return value
    return None


def _llm_message_response(response) -> dict:
    """An agent ``ModelResponse`` (or an AIMessage) as an OpenAI Chat completion dict."""
    messages = getattr(response, "result", None)
    if messages is None:
        messages = [response]
    ai = next((m for m in messages if getattr(m, "type", None) == "ai"), None)
    out: dict = {"object": "chat.completion", "choices": []}
    if ai is None:
        return out
    meta = getattr(ai, "response_metadata", None) or {}
    out["choices"].append({"index": 0, "message": _message(ai),
                           "finish_reason": meta.get("finish_reason")})
    usage = getattr(ai, "usage_metadata", None)
    if usage:
        out["usage"] = {k: v for k, v in (("prompt_tokens", usage.get("input_tokens")),
                                          ("completion_tokens", usage.get("output_tokens")),
                                          ("total_tokens", usage.get("total_tokens")))
                        if v is not None}
    return out


def _model_name(serialized, kwargs, metadata):
    params = kwargs.get("invocation_params") or {}
    for source, key in ((params, "model"), (params, "model_name"), (metadata or {},
                                                                    "ls_model_name")):
        value = source.get(key) if isinstance(source, dict) else None
        if isinstance(value, str) and value:
            return value
    return None


class _Run:
    __slots__ = ("frame", "prev", "bound", "started", "first", "chunks", "profile")

    def __init__(self, frame, prev=None, bound=False, profile=None):
        self.frame, self.prev, self.bound, self.profile = frame, prev, bound, profile
        self.started = time.perf_counter()
        self.first = None
        self.chunks = 0


class NemoFlowCallbackHandler(BaseCallbackHandler):
    """Records LangChain runs (chains, graph nodes, chat models, LLMs, tools, retrievers) as
    nemoflow scopes, parented by their run tree."""

    run_inline = True  # called in the run's own context and in order, never on an executor

    def __init__(self) -> None:
        super().__init__()
        self._runs: dict = {}

    # -- helpers -------------------------------------------------------------------------
    def _parent(self, parent_run_id):
        run = self._runs.get(parent_run_id) if parent_run_id is not None else None
        return run.frame if run is not None else _core.current()

    def _end(self, run_id, output, metadata=None, error=None):
        run = self._runs.pop(run_id, None)
        if run is None:
            return
        profile = None
        if run.first is not None and run.profile is not None:
            profile = _core.encode({**run.profile, "time_to_first_chunk": run.first})
        try:
            if error is None:
                meta = _lenient(metadata) if metadata else None
                _core.end(run.frame, _lenient(output), meta, None, _OK, None, None, profile)
            else:
                _core.end(run.frame, None, _managed.error_metadata(error), None, _ERROR,
                          _core.describe(error), None, profile)
        except Exception:  # ended already (e.g. the same handler attached twice)
            pass
        if run.bound and _core.current() is run.frame:
            _core.bind(run.prev)

    def _start_scope(self, name, scope_type, parent_run_id, run_id, inputs, metadata,
                     bind=False):
        prev = _core.current()
        parent = self._parent(parent_run_id)
        frame = _core.start(name, scope_type, parent, None, None, _lenient(metadata),
                            _lenient(inputs), None)
        self._runs[run_id] = _Run(frame, prev, bind)
        if bind:
            _core.bind(frame)

    # -- chains and graph nodes ----------------------------------------------------------
    def on_chain_start(self, serialized, inputs, *, run_id, parent_run_id=None, tags=None,
                       metadata=None, **kwargs: Any) -> None:
        """A chain or graph node starts: an Agent scope at the top, else a Function scope."""
        try:
            top = parent_run_id is None or parent_run_id not in self._runs
            meta = {"langchain.run_id": str(run_id)}
            node = (metadata or {}).get("langgraph_node")
            if node is not None and not top:
                meta["langgraph.node"] = node
            self._start_scope(_name(serialized, kwargs, "chain"),
                              ScopeType.Agent if top else ScopeType.Function, parent_run_id,
                              run_id, inputs, meta, bind=True)
        except Exception:
            pass

    def on_chain_end(self, outputs, *, run_id, **kwargs: Any) -> None:
        """A chain ends: its scope ends with the outputs."""
        self._end(run_id, outputs)

    def on_chain_error(self, error, *, run_id, **kwargs: Any) -> None:
        """A chain raised: its scope ends with status ERROR."""
        self._end(run_id, None, error=error)

    # -- chat models and LLMs ------------------------------------------------------------
    def _start_llm(self, serialized, content, run_id, parent_run_id, metadata, kwargs):
        model = _model_name(serialized, kwargs, metadata)
        profile = {"model_name": model} if model else {}
        request = {"headers": {}, "content": content}
        frame = _core.start(_name(serialized, kwargs, "llm"), ScopeType.Llm,
                            self._parent(parent_run_id), None, None, None, _lenient(request),
                            None, _core.KIND_LLM, _core.encode(profile), _core.LLMHandle)
        self._runs[run_id] = _Run(frame, profile=profile)

    def on_chat_model_start(self, serialized, messages, *, run_id, parent_run_id=None,
                            tags=None, metadata=None, **kwargs: Any) -> None:
        """A chat model call starts: an LLM call whose request holds the messages."""
        if _take_managed("llm"):
            return
        try:
            content = {"messages": [_message(m) for m in (messages[0] if messages else [])]}
            model = _model_name(serialized, kwargs, metadata)
            if model:
                content = {"model": model, **content}
            self._start_llm(serialized, content, run_id, parent_run_id, metadata, kwargs)
        except Exception:
            pass

    def on_llm_start(self, serialized, prompts, *, run_id, parent_run_id=None, tags=None,
                     metadata=None, **kwargs: Any) -> None:
        """A completion LLM call starts: an LLM call whose request holds the prompts."""
        with contextlib.suppress(Exception):
            self._start_llm(serialized, {"prompt": list(prompts)}, run_id, parent_run_id,
                            metadata, kwargs)

    def on_llm_new_token(self, token, *, run_id, chunk=None, **kwargs: Any) -> None:
        """A streamed token: an ``llm.chunk`` mark under the LLM call."""
        run = self._runs.get(run_id)
        if run is None:
            return
        try:
            if run.first is None:
                run.first = time.perf_counter() - run.started
            _core.event("llm.chunk", handle=run.frame,
                        data={"chunk_index": run.chunks, "provider": "langchain"})
            run.chunks += 1
        except Exception:
            pass

    def on_llm_end(self, response, *, run_id, **kwargs: Any) -> None:
        """An LLM call ends: its response in OpenAI Chat shape, with usage and finish
        reason in the end metadata."""
        try:
            data = _llm_response(response)
        except Exception:
            data = None
        self._end(run_id, data, _llm_pipeline.response_metadata(data))

    def on_llm_error(self, error, *, run_id, **kwargs: Any) -> None:
        """An LLM call raised: it ends with status ERROR."""
        self._end(run_id, None, error=error)

    # -- tools ---------------------------------------------------------------------------
    def on_tool_start(self, serialized, input_str, *, run_id, parent_run_id=None, tags=None,
                      metadata=None, inputs=None, **kwargs: Any) -> None:
        """A tool starts: a tool call with its arguments."""
        if _take_managed("tool"):
            return
        try:
            args = inputs if isinstance(inputs, dict) else {"input": input_str}
            call_id = kwargs.get("tool_call_id")
            profile = {"tool_call_id": call_id} if isinstance(call_id, str) else {}
            frame = _core.start(_name(serialized, kwargs, "tool"), ScopeType.Tool,
                                self._parent(parent_run_id), None, None, None, _lenient(args),
                                None, _core.KIND_TOOL, _core.encode(profile), _core.ToolHandle)
            self._runs[run_id] = _Run(frame)
        except Exception:
            pass

    def on_tool_end(self, output, *, run_id, **kwargs: Any) -> None:
        """A tool ends: its result (a tool message's content)."""
        content = getattr(output, "content", output) if _is_message(output) else output
        self._end(run_id, content)

    def on_tool_error(self, error, *, run_id, **kwargs: Any) -> None:
        """A tool raised: it ends with status ERROR."""
        self._end(run_id, None, error=error)

    # -- retrievers ----------------------------------------------------------------------
    def on_retriever_start(self, serialized, query, *, run_id, parent_run_id=None, tags=None,
                           metadata=None, **kwargs: Any) -> None:
        """A retriever starts: a Retriever scope with the query."""
        with contextlib.suppress(Exception):
            self._start_scope(_name(serialized, kwargs, "retriever"), ScopeType.Retriever,
                              parent_run_id, run_id, {"query": query},
                              {"langchain.run_id": str(run_id)})

    def on_retriever_end(self, documents, *, run_id, **kwargs: Any) -> None:
        """A retriever ends: the documents it found."""
        self._end(run_id, documents)

    def on_retriever_error(self, error, *, run_id, **kwargs: Any) -> None:
        """A retriever raised: it ends with status ERROR."""
        self._end(run_id, None, error=error)


def _llm_response(response) -> dict:
    """An ``LLMResult`` as an OpenAI Chat completion dict (the codecs decode it)."""
    generations = response.generations[0] if response.generations else []
    choices = []
    usage = None
    for index, gen in enumerate(generations):
        info = getattr(gen, "generation_info", None) or {}
        message = getattr(gen, "message", None)
        if message is not None:
            msg = _message(message)
            meta = getattr(message, "usage_metadata", None)
            if meta and usage is None:
                usage = {"prompt_tokens": meta.get("input_tokens"),
                         "completion_tokens": meta.get("output_tokens"),
                         "total_tokens": meta.get("total_tokens")}
            reason = info.get("finish_reason") or (
                getattr(message, "response_metadata", None) or {}).get("finish_reason")
        else:
            msg = {"role": "assistant", "content": gen.text}
            reason = info.get("finish_reason")
        choices.append({"index": index, "message": msg, "finish_reason": reason})
    out: dict = {"object": "chat.completion", "choices": choices}
    llm_output = response.llm_output or {}
    model = llm_output.get("model_name") or llm_output.get("model")
    if isinstance(model, str):
        out["model"] = model
    if usage is None and isinstance(llm_output.get("token_usage"), dict):
        usage = llm_output["token_usage"]
    if usage is not None:
        out["usage"] = {k: v for k, v in usage.items() if v is not None}
    return out


def with_nemo_flow_callbacks(config=None, *, callback_handler=None) -> dict:
    """A copy of the runnable ``config`` with a ``NemoFlowCallbackHandler`` added (once)."""
    from langchain_core.callbacks import BaseCallbackManager

    out = dict(config or {})
    handler = callback_handler or NemoFlowCallbackHandler()
    callbacks = out.get("callbacks")
    if callbacks is None:
        out["callbacks"] = [handler]
    elif isinstance(callbacks, BaseCallbackManager):
        handlers = [*callbacks.handlers, *callbacks.inheritable_handlers]
        if not any(isinstance(h, NemoFlowCallbackHandler) for h in handlers):
            manager = callbacks.copy()
            manager.add_handler(handler, inherit=True)
            out["callbacks"] = manager
    elif isinstance(callbacks, BaseCallbackHandler):
        if not isinstance(callbacks, NemoFlowCallbackHandler):
            out["callbacks"] = [callbacks, handler]
    else:
        callbacks = list(callbacks)
        if not any(isinstance(h, NemoFlowCallbackHandler) for h in callbacks):
            callbacks.append(handler)
        out["callbacks"] = callbacks
    return out
