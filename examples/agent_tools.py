"""An agent loop with a managed tool, a streamed reply from a local fake model, and guardrails.

    python examples/agent_tools.py [OUTPUT.jsonl]

The agent asks a (fake, local) model what to do, runs the tool the model picks, and streams the
final answer. Two guardrails sit on the tool calls: one redacts e-mail addresses from what is
written into the trace (the program still sees the real values), one rejects deleting anything.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys

import nemoflow as nf
from nemoflow.cli import read_events, summary

DIRECTORY = {"ada": "ada@example.com", "grace": "grace@example.com"}
EMAIL = re.compile(r"[\w.]+@[\w.]+")


@nf.trace.tool("lookup_contact")
def lookup_contact(name: str) -> dict:
    return {"name": name, "email": DIRECTORY.get(name, "unknown")}


@nf.trace.tool("delete_contact")
def delete_contact(name: str) -> dict:
    DIRECTORY.pop(name, None)
    return {"deleted": name}


@nf.trace.llm(model="fake-local-1")
async def plan(messages: list) -> dict:
    """A fake chat model: picks a tool from the last user message (OpenAI-style response)."""
    text = messages[-1]["content"]
    tool = "delete_contact" if "delete" in text else "lookup_contact"
    name = next((n for n in DIRECTORY if n in text), "ada")
    return {"choices": [{"finish_reason": "tool_calls",
                         "message": {"tool_calls": [{"name": tool, "arguments": {"name": name}}]}}],
            "usage": {"prompt_tokens": len(text.split()), "completion_tokens": 7,
                      "total_tokens": len(text.split()) + 7}}


@nf.trace.llm(model="fake-local-1")
async def reply(messages: list):
    """The same fake model, streaming its answer word by word."""
    for word in f"Done: {messages[-1]['content']}".split():
        await asyncio.sleep(0.001)
        yield word + " "


def redact_emails(tool_name, value):
    return EMAIL.sub("<email>", str(value))


def redact_request(request):
    # The tool result travels on to the model in the next request: redact it there too.
    return nf.LLMRequest(request.headers, {"messages": [
        {**m, "content": EMAIL.sub("<email>", m["content"])} for m in request.content["messages"]]})


def no_deletes(tool_name, args):
    return "deleting contacts is not allowed" if tool_name.startswith("delete") else None


@nf.trace.agent("assistant")
async def handle(request: str) -> str:
    messages = [{"role": "user", "content": request}]
    decision = await plan(messages)
    call = decision["choices"][0]["message"]["tool_calls"][0]
    tool = {"lookup_contact": lookup_contact, "delete_contact": delete_contact}[call["name"]]
    try:
        result = tool(**call["arguments"])
    except nf.GuardrailRejectedError as exc:
        result = {"error": str(exc)}
    messages.append({"role": "tool", "content": str(result)})
    return "".join([chunk async for chunk in reply(messages)])


async def main_async() -> list:
    return [await handle("find grace's address"), await handle("delete ada please")]


def main() -> None:
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join("traces", "agent_tools.jsonl")
    config = nf.AtofExporterConfig(output_directory=os.path.dirname(out) or ".",
                                   filename=os.path.basename(out),
                                   mode=nf.AtofExporterMode.Overwrite)
    exporter = nf.AtofExporter(config)
    exporter.register("jsonl")
    nf.guardrails.register_tool_sanitize_response("redact-emails", 0, redact_emails)
    nf.guardrails.register_llm_sanitize_request("redact-emails", 0, redact_request)
    nf.guardrails.register_llm_sanitize_response("redact-emails", 0,
                                                 lambda response: redact_emails(None, response))
    nf.guardrails.register_tool_conditional_execution("no-deletes", 0, no_deletes)
    try:
        answers = asyncio.run(main_async())
    finally:
        exporter.shutdown()
    for answer in answers:
        print(f"answer: {answer}")
    events = read_events(exporter.path)
    leaked = [e for e in events if "@example.com" in str(e.get("data"))]
    print(f"\ntrace written to {exporter.path}; e-mail addresses in it: {len(leaked)}")
    print(summary(events))


if __name__ == "__main__":
    main()
