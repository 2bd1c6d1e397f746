"""``NemoFlowMiddleware``: the model and tool calls of a ``langchain.agents.create_agent`` agent
as managed LLM and tool calls (guardrails, intercepts, sanitizers and events apply).

Needs the ``langchain`` package (``langchain.agents.middleware``). Used with the callback
handler, the handler leaves these calls to the middleware, so each is recorded once.
"""

from __future__ import annotations

from langchain.agents.middleware import AgentMiddleware

from .. import _adapters, _llm_pipeline, _managed
from .langchain import _MANAGED, _llm_message_response, _message, _model_of

__all__ = ["NemoFlowMiddleware"]


def _content(request) -> dict:
    content: dict = {}
    model = _model_of(request.model)
    if model:
        content["model"] = model
    system = getattr(request, "system_message", None)
    if system is not None:
        content["system"] = system.content
    content["messages"] = [_message(m) for m in request.messages]
    return content


def _rewritten(request, original, content):
    """The ModelRequest for ``content`` as request intercepts left it."""
    if content is original or content == original:
        return request
    from langchain_core.messages import SystemMessage, convert_to_messages

    changes: dict = {}
    if content.get("messages") != original.get("messages"):
        changes["messages"] = convert_to_messages(content.get("messages") or [])
    if content.get("system") != original.get("system"):
        system = content.get("system")
        changes["system_message"] = SystemMessage(system) if system is not None else None
    return request.override(**changes) if changes else request


def _response_of(result, box):
    """What the agent gets: the handler's response, or an intercept's OpenAI Chat dict made
    into a ModelResponse."""
    if box and result is box[1]:
        return box[0]
    if isinstance(result, dict):
        from langchain.agents.middleware import ModelResponse
        from langchain_core.messages import convert_to_messages

        choices = result.get("choices") or [{}]
        message = choices[0].get("message") or {"role": "assistant", "content": ""}
        return ModelResponse(result=convert_to_messages([message]))
    return result


def _tool_result(result):
    content = getattr(result, "content", None)
    return content if content is not None else repr(result)


class NemoFlowMiddleware(AgentMiddleware):
    """Runs an agent's model and tool calls through nemoflow's managed LLM and tool calls."""

    def __init__(self, *, name: str = "NemoFlowMiddleware") -> None:
        super().__init__()
        self._name = name

    @property
    def name(self) -> str:
        """The middleware's name in the agent graph."""
        return self._name

    def _llm(self, request, handler, is_async):
        content = _content(request)
        box: list = []

        async def afunc(req):
            token = _MANAGED.set("llm")  # the callback handler leaves this call to us
            try:
                response = await handler(_rewritten(request, content, req.content))
            finally:
                _MANAGED.reset(token)
            box[:] = (response, _llm_message_response(response))
            return box[1]

        def func(req):
            token = _MANAGED.set("llm")
            try:
                response = handler(_rewritten(request, content, req.content))
            finally:
                _MANAGED.reset(token)
            box[:] = (response, _llm_message_response(response))
            return box[1]

        settle = _adapters.settle_async if is_async else _adapters.settle_sync
        run = _llm_pipeline.run_llm(_model_of(request.model) or type(request.model).__name__,
                               _llm_pipeline.LLMRequest({}, content), afunc if is_async else func,
                               None, None, None, None, content.get("model"), settle, is_async,
                               True)
        return run, box

    def wrap_model_call(self, request, handler):
        """A model call as a managed LLM call."""
        run, box = self._llm(request, handler, False)
        return _response_of(_adapters.drive(run), box)

    async def awrap_model_call(self, request, handler):
        """A model call as a managed LLM call."""
        run, box = self._llm(request, handler, True)
        return _response_of(await run, box)

    def _tool(self, request, handler, is_async):
        call = request.tool_call
        box: list = []

        def rewritten(args):
            if args is call.get("args"):
                return request
            return request.override(tool_call={**call, "args": args})

        async def afunc(args):
            token = _MANAGED.set("tool")
            try:
                result = await handler(rewritten(args))
            finally:
                _MANAGED.reset(token)
            box[:] = (result, _tool_result(result))
            return box[1]

        def func(args):
            token = _MANAGED.set("tool")
            try:
                result = handler(rewritten(args))
            finally:
                _MANAGED.reset(token)
            box[:] = (result, _tool_result(result))
            return box[1]

        settle = _adapters.settle_async if is_async else _adapters.settle_sync
        run = _managed.run_tool(call.get("name") or "tool", call.get("args") or {},
                                afunc if is_async else func, None,
                                None, None, None, call.get("id"), settle, is_async, True)
        return run, box

    def wrap_tool_call(self, request, handler):
        """A tool call as a managed tool call."""
        run, box = self._tool(request, handler, False)
        result = _adapters.drive(run)
        return box[0] if box and result is box[1] else result

    async def awrap_tool_call(self, request, handler):
        """A tool call as a managed tool call."""
        run, box = self._tool(request, handler, True)
        result = await run
        return box[0] if box and result is box[1] else result
