"""Provider payloads for the codec tests, and the span attributes NeMo Relay 0.10.4 writes for them.

``codec_fixtures.json`` holds, per API, a realistic request and response and the ``gen_ai`` /
``openinference`` LLM-span attributes the reference release exports for that call (managed call
with its codec attached), as ``(key, value)`` pairs in export order.
"""

import json
from pathlib import Path

_DATA = json.loads((Path(__file__).with_name("codec_fixtures.json")).read_text())


def _expected(api):
    return {projection: [tuple(pair) for pair in pairs]
            for projection, pairs in _DATA[api]["expected"].items()}


CHAT_NAME = _DATA["chat"]["name"]
CHAT_REQUEST = _DATA["chat"]["request"]
CHAT_RESPONSE = _DATA["chat"]["response"]
CHAT_EXPECTED = _expected("chat")
RESPONSES_NAME = _DATA["responses"]["name"]
RESPONSES_REQUEST = _DATA["responses"]["request"]
RESPONSES_RESPONSE = _DATA["responses"]["response"]
RESPONSES_EXPECTED = _expected("responses")
ANTHROPIC_NAME = _DATA["anthropic"]["name"]
ANTHROPIC_REQUEST = _DATA["anthropic"]["request"]
ANTHROPIC_RESPONSE = _DATA["anthropic"]["response"]
ANTHROPIC_EXPECTED = _expected("anthropic")
