"""Redaction: the credential-header rule and the ``pii_redaction`` component on every payload."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import warnings

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# Secrets are assembled at run time so that this file holds nothing a scanner would flag.
OPENAI = "sk-" + "proj-" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4"
ANTHROPIC = "sk-" + "ant-api03-" + "Z9y8X7w6V5u4T3s2R1q0P9o8"
GITHUB = "gh" + "p_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
GITHUB_PAT = "github" + "_pat_" + "11ABCDEFG0123456789_abcdefghijklmnopqrstu"
SLACK = "xo" + "xb-" + "123456789012-1234567890123-AbCdEfGhIjKl"
GOOGLE = "AI" + "za" + "SyA1234567890abcdefghijklmnopqrstuv"
STRIPE = "sk" + "_live_" + "4eC39HqLyjWDarjtT1zdp7dc"
AWS_ID = "AKIA" + "IOSFODNN7EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCYEXAMPLEKEY"
JWT = ("eyJhbGciOiJIUzI1NiJ9" + ".eyJzdWIiOiIxMjM0NTY3ODkwIn0"
       + ".dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U")
PEM = ("-----BEGIN " + "PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n"
       "-----END " + "PRIVATE KEY-----")
AZURE = ("DefaultEndpointsProtocol=https;AccountName=acct;AccountKey="
         + "Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4" + "==;EndpointSuffix=core.windows.net")
EMAIL = "alice.smith@example.com"
CARD = "4111 1111 1111 1111"  # passes the Luhn check

SECRETS = (OPENAI, ANTHROPIC, GITHUB, GITHUB_PAT, SLACK, GOOGLE, STRIPE, AWS_ID, AWS_SECRET, JWT,
           "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC", "Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4", EMAIL,
           CARD, "4155550134", "555-0134", "192.168.10.20", "2001:db8::8a2e:370:7334",
           "hunter2")


@pytest.fixture
def redaction(nf):
    """``nf.redaction``, switched off again after the test whatever it did."""
    try:
        yield nf.redaction
    finally:
        nf.redaction.disable()


def mark_data(nf, events, value):
    nf.mark("probe", data={"v": value})
    return events[-1].data["v"]


# --------------------------------------------------------------------------------------------
# Credential headers.

@pytest.mark.parametrize("name", [
    "Authorization", "PROXY-AUTHORIZATION", "Cookie", "set-cookie", "X-Api-Key", "api-key",
    "anthropic-api-key", "x-goog-api-key", "X-Amz-Security-Token", "ocp-apim-subscription-key",
    "x-functions-key", "X-Auth-Token", "x-csrf-token", "X-Client-Secret", "x-password",
    "x-session-id", "API_KEY", "apikey", "x-hub-signature-256", "Private-Token",
])
def test_credential_headers_are_matched_case_insensitively(nf, events, name):
    assert nf.redaction.is_credential_header(name)
    assert nf.redaction.is_credential_header(name.upper())
    h = nf.llm.call("chat", nf.LLMRequest({name: "s3cr3t-value", "Content-Type": "json"},
                                          {"messages": []}))
    nf.llm.call_end(h, None)
    assert events[0].data["headers"] == {"Content-Type": "json"}
    assert "s3cr3t-value" not in events[0].to_json()


@pytest.mark.parametrize("name", ["content-type", "accept", "user-agent", "x-request-id",
                                  "openai-organization", "anthropic-version", "host"])
def test_ordinary_headers_are_kept(nf, name):
    assert not nf.redaction.is_credential_header(name)
    assert nf.redaction.public_headers({name: "v"}) == {name: "v"}


# --------------------------------------------------------------------------------------------
# Detectors.

POSITIVE = [
    ("email", f"write to {EMAIL} today", "write to [REDACTED:email] today"),
    ("email", "a+tag@mail.example.co.uk", "[REDACTED:email]"),
    ("phone", "call +1 (415) 555-0134 now", "call [REDACTED:phone] now"),
    ("phone", "call 415-555-0134", "call [REDACTED:phone]"),
    ("phone", "call (415) 555-0134", "call [REDACTED:phone]"),
    ("phone", "+44 20 7946 0958", "[REDACTED:phone]"),
    ("api_key", f"key {OPENAI}", "key [REDACTED:api_key]"),
    ("api_key", f"key={ANTHROPIC}", "key=[REDACTED:api_key]"),
    ("api_key", GITHUB, "[REDACTED:api_key]"),
    ("api_key", GITHUB_PAT, "[REDACTED:api_key]"),
    ("api_key", f"token: {SLACK}", "token: [REDACTED:api_key]"),
    ("api_key", GOOGLE, "[REDACTED:api_key]"),
    ("api_key", STRIPE, "[REDACTED:api_key]"),
    ("bearer_token", "Authorization: Bearer abc.DEF-123_xyz",
     "Authorization: Bearer [REDACTED:bearer_token]"),
    ("jwt", f"jwt {JWT}", "jwt [REDACTED:jwt]"),
    ("credit_card", f"card {CARD}.", "card [REDACTED:credit_card]."),
    ("credit_card", "5555-5555-5555-4444", "[REDACTED:credit_card]"),
    ("credit_card", f"{CARD} 123", "[REDACTED:credit_card] 123"),  # the CVV is not part of it
    ("credit_card", "378282246310005", "[REDACTED:credit_card]"),  # 15 digits
    ("aws_access_key", f"id {AWS_ID}", "id [REDACTED:aws_access_key]"),
    ("aws_secret_key", f"aws_secret_access_key = {AWS_SECRET}",
     "aws_secret_access_key = [REDACTED:aws_secret_key]"),
    ("private_key", f"{PEM}\n", "[REDACTED:private_key]\n"),
    ("private_key", PEM[:60], "[REDACTED:private_key]"),  # cut short: to the end of the text
    ("azure_key", AZURE, AZURE.replace("Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4==",
                                       "[REDACTED:azure_key]")),
    ("ip_address", "from 192.168.10.20.", "from [REDACTED:ip_address]."),
    ("ip_address", "v6 2001:db8::8a2e:370:7334 and ::1",
     "v6 [REDACTED:ip_address] and [REDACTED:ip_address]"),
    ("ip_address", "fe80:0:0:0:202:b3ff:fe1e:8329", "[REDACTED:ip_address]"),
]

NEGATIVE = [
    ("email", "user at example dot com; @decorator; a@b"),
    ("phone", "version 1.2.3, 2024-01-15, 12:30:45, id 4155550134"),
    ("api_key", "task-force sk-short ghp_short AIza"),
    ("bearer_token", "bearer of news"),
    ("jwt", "eyJ alone and eyJhbGciOiJ.x"),
    ("credit_card", "4111 1111 1111 1112 and 4111111111111112 fail the Luhn check"),
    ("credit_card", "timestamp 1732982400123456789"),
    ("aws_access_key", "AKIA is a prefix, AKIAIOSFODNN7EXAMPLEX is too long"),
    ("aws_secret_key", f"a 40-character base64 string alone: {AWS_SECRET}"),
    ("private_key", "-----BEGIN CERTIFICATE-----"),
    ("azure_key", "sig=short"),
    ("ip_address", "999.1.1.1 and 1.2.3 and std::vector and 12:30:45 and ab:cd"),
]


@pytest.mark.parametrize("detector,text,expected", POSITIVE)
def test_detector_finds_its_values(nf, events, redaction, detector, text, expected):
    redaction.enable(redaction.PiiRedactionConfig(detectors=[detector]))
    assert mark_data(nf, events, text) == expected


@pytest.mark.parametrize("detector,text", NEGATIVE)
def test_detector_leaves_lookalikes_alone(nf, events, redaction, detector, text):
    redaction.enable(redaction.PiiRedactionConfig(detectors=[detector]))
    assert mark_data(nf, events, text) == text


def test_all_detectors_together(nf, events, redaction):
    redaction.enable()
    text = " | ".join(t for _, t, _ in POSITIVE)
    out = mark_data(nf, events, text)
    for secret in SECRETS:
        assert secret not in out


def test_an_unconfigured_detector_does_not_run(nf, events, redaction):
    redaction.enable(redaction.PiiRedactionConfig(detectors=["email"]))
    assert mark_data(nf, events, f"{EMAIL} 192.168.10.20") == "[REDACTED:email] 192.168.10.20"


# --------------------------------------------------------------------------------------------
# Actions.

def test_actions(nf, events, redaction):
    cfg = redaction.PiiRedactionConfig
    text = f"mail {EMAIL} card {CARD}"
    redaction.enable(cfg(action="remove"))
    assert mark_data(nf, events, text) == "mail  card "
    redaction.enable(cfg(action="mask"))
    assert mark_data(nf, events, text) == ("mail " + "*" * (len(EMAIL) - 4) + ".com card "
                                           + "*" * 15 + "1111")
    redaction.enable(cfg(action="mask", mask_char="#", unmasked_suffix=0))
    assert mark_data(nf, events, EMAIL) == "#" * len(EMAIL)
    redaction.enable(cfg(action="mask", unmasked_prefix=2, unmasked_suffix=3))
    assert mark_data(nf, events, EMAIL) == "al" + "*" * (len(EMAIL) - 5) + "com"
    redaction.enable(cfg(action="mask", unmasked_prefix=20, unmasked_suffix=20))
    assert mark_data(nf, events, EMAIL) == "*" * len(EMAIL)
    redaction.enable(cfg(action="hash"))
    digest = hashlib.sha256(EMAIL.encode()).hexdigest()[:16]
    assert mark_data(nf, events, EMAIL) == f"[SHA256:email:{digest}]"
    redaction.enable(cfg(action="hash", hash_salt="pepper"))
    keyed = hmac.new(b"pepper", EMAIL.encode(), hashlib.sha256).hexdigest()[:16]
    assert mark_data(nf, events, EMAIL) == f"[SHA256:email:{keyed}]" != f"[SHA256:email:{digest}]"
    redaction.enable(cfg(action="redact", actions={"credit_card": "mask", "email": "hash"}))
    assert mark_data(nf, events, text) == (f"mail [SHA256:email:{digest}] card "
                                           + "*" * 15 + "1111")


def test_value_group_keeps_the_label(nf, events, redaction):
    redaction.enable(redaction.PiiRedactionConfig(action="mask"))
    out = mark_data(nf, events, "Authorization: Bearer abcdefgh12345678")
    assert out == "Authorization: Bearer " + "*" * 12 + "5678"


# --------------------------------------------------------------------------------------------
# Payload structure.

def test_nested_payloads_keys_and_fields(nf, events, redaction):
    redaction.enable()
    payload = {"users": [{"name": "bob", "contact": [EMAIL, ("tuple", EMAIL)]}],
               "config": {"db": {"Password": "hunter2", "DB-API-KEY": 12345,
                                 "client_secret": {"nested": "anything"}}},
               EMAIL: 1, "max_tokens": 100, "usage": {"total_tokens": 8},
               "n": 3, "ok": True, "none": None, "x": 1.5}
    before = repr(payload)
    nf.mark("m", data=payload)
    assert repr(payload) == before  # the caller's value is never changed
    assert events[-1].data == {
        "users": [{"name": "bob", "contact": ["[REDACTED:email]", ["tuple", "[REDACTED:email]"]]}],
        "config": {"db": {"Password": "[REDACTED:field]", "DB-API-KEY": "[REDACTED:field]",
                          "client_secret": "[REDACTED:field]"}},
        "[REDACTED:email]": 1, "max_tokens": 100, "usage": {"total_tokens": 8},
        "n": 3, "ok": True, "none": None, "x": 1.5}


def test_field_actions_and_custom_fields(nf, events, redaction):
    cfg = redaction.PiiRedactionConfig
    redaction.enable(cfg(fields=("ssn",), actions={"field": "remove"}))
    nf.mark("m", data={"SSN": "078-05-1120", "user_ssn": 1, "password": "kept: not a field"})
    assert events[-1].data == {"password": "kept: not a field"}
    redaction.enable(cfg(actions={"field": "mask"}))
    nf.mark("m", data={"password": "hunter22", "token_secret": 42})
    assert events[-1].data == {"password": "****er22", "token_secret": "[REDACTED:field]"}
    redaction.enable(cfg(actions={"field": "hash"}))
    nf.mark("m", data={"password": "hunter2", "secret": {"a": 1}})
    h = hashlib.sha256(b"hunter2").hexdigest()[:16]
    h2 = hashlib.sha256(b'{"a":1}').hexdigest()[:16]
    assert events[-1].data == {"password": f"[SHA256:field:{h}]",
                               "secret": f"[SHA256:field:{h2}]"}
    redaction.enable(cfg(fields=()))
    nf.mark("m", data={"password": "hunter2"})
    assert events[-1].data == {"password": "hunter2"}


def test_custom_detectors(nf, events, redaction):
    cfg, Detector = redaction.PiiRedactionConfig, redaction.Detector
    redaction.enable(cfg(detectors=(), custom={"ticket": r"JIRA-[0-9]+"}))
    assert mark_data(nf, events, "see JIRA-4892 and JIRA-1") == \
        "see [REDACTED:ticket] and [REDACTED:ticket]"
    redaction.enable(cfg(detectors=(), custom=[
        Detector("order", r"order (?P<v>[0-9]{6})", check=lambda t: not t.endswith("000000")),
        Detector("word", r"(?i)secretword")]))
    assert mark_data(nf, events, "order 123456, order 000000, SecretWord") == \
        "order [REDACTED:order], order 000000, [REDACTED:word]"


def test_lenient_values_are_redacted_as_written(nf, events, redaction):
    class Client:
        def __str__(self):
            return f"Client(key={OPENAI})"

    redaction.enable()

    @nf.trace
    def call(client, who):
        return {"client": client, "who": who}

    call(Client(), EMAIL)
    assert events[0].data == {"client": "Client(key=[REDACTED:api_key])",
                              "who": "[REDACTED:email]"}
    assert events[1].data == events[0].data


def test_strict_payloads_still_refuse_non_json(nf, events, redaction):
    redaction.enable()
    with pytest.raises(ValueError, match="Failed to convert to JSON"):
        nf.scope.push("s", nf.ScopeType.Function, data={"x": object()})
    deep = EMAIL
    for _ in range(300):
        deep = [deep]
    with pytest.raises(ValueError):
        nf.mark("m", data=deep)
    assert events == []


def test_too_deep_lenient_payload_is_replaced(nf, events, redaction):
    redaction.enable()
    deep = EMAIL
    for _ in range(300):
        deep = [deep]

    @nf.trace
    def f():
        return deep

    f()
    assert events[1].data == "[REDACTED:error]"


def test_names_are_not_payloads(nf, events, redaction):
    redaction.enable()
    with nf.scope.scope(EMAIL, nf.ScopeType.Function):
        nf.mark(EMAIL, data=EMAIL)
    assert [e.name for e in events] == [EMAIL, EMAIL, EMAIL]
    assert events[1].data == "[REDACTED:email]"


# --------------------------------------------------------------------------------------------
# Every entry point.

def test_push_pop_scope_and_marks(nf, events, redaction):
    redaction.enable()
    h = nf.scope.push("s", nf.ScopeType.Function, input={"q": EMAIL}, data={"d": EMAIL},
                      metadata={"m": EMAIL})
    nf.scope.event("e", data={"d": EMAIL}, metadata={"m": EMAIL},
                   category_profile={"p": EMAIL})
    nf.scope.pop(h, output={"o": EMAIL}, metadata={"m": EMAIL})
    with nf.scope.scope("t", nf.ScopeType.Tool, input=EMAIL, metadata=EMAIL):
        pass
    with nf.trace("span", input={"q": EMAIL}, metadata={"m": EMAIL}) as span:
        span.output = {"o": EMAIL}
    assert len(events) == 7
    for e in events:
        assert EMAIL not in e.to_json()
        assert "[REDACTED:email]" in e.to_json() or (e.name == "t" and e.scope_category == "end")


def test_trace_decorators_arguments_results_and_errors(nf, events, redaction):
    redaction.enable()

    @nf.trace
    def sync(email):
        return email

    @nf.trace.agent("agent")
    async def coro(email):
        return {"to": email}

    @nf.trace
    def gen(email):
        yield email

    @nf.trace
    def fails(email):
        raise RuntimeError(f"no account for {email} with key {OPENAI}")

    sync(EMAIL)
    asyncio.run(coro(EMAIL))
    list(gen(EMAIL))
    with pytest.raises(RuntimeError, match=EMAIL):  # the program sees the real exception
        fails(EMAIL)
    assert len(events) == 8
    for e in events:
        assert EMAIL not in e.to_json() and OPENAI not in e.to_json()
    assert events[-1].metadata["otel.status_description"] == \
        "no account for [REDACTED:email] with key [REDACTED:api_key]"


def test_managed_tool_and_llm_calls(nf, events, redaction):
    redaction.enable()

    @nf.trace.tool("lookup")
    def lookup(email):
        return {"found": email, "ip": "10.1.2.3"}

    @nf.trace.tool("broken")
    def broken(email):
        raise KeyError(email)

    assert lookup(EMAIL) == {"found": EMAIL, "ip": "10.1.2.3"}  # the caller gets the real value
    with pytest.raises(KeyError):
        broken(EMAIL)
    h = nf.tools.call("t", {"email": EMAIL})
    nf.tools.call_end(h, {"email": EMAIL})
    asyncio.run(nf.tools.execute("x", {"email": EMAIL}, lambda a: {"r": a["email"]}))
    request = nf.LLMRequest({"Authorization": f"Bearer {OPENAI}"},
                            {"messages": [{"role": "user", "content": f"I am {EMAIL}"}]})
    response = {"choices": [{"finish_reason": "stop", "message": {"content": EMAIL}}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}}
    asyncio.run(nf.llm.execute("chat", request, lambda r: response, model_name="m"))
    for e in events:
        assert EMAIL not in e.to_json() and OPENAI not in e.to_json()
    assert events[-1].metadata["llm.usage.total_tokens"] == 8  # token counts are not fields


def test_streamed_llm_call(nf, events, redaction):
    redaction.enable()

    async def chunks(req):
        for part in ("mail me at ", EMAIL):
            await asyncio.sleep(0)
            yield {"choices": [{"delta": {"content": part}}]}

    parts = []

    async def main():
        return [c async for c in nf.llm.stream_execute(
            "chat", nf.LLMRequest({}, {"prompt": EMAIL}), chunks,
            lambda c: parts.append(c["choices"][0]["delta"]["content"]),
            lambda: {"text": "".join(parts)})]

    got = asyncio.run(main())
    assert got[1]["choices"][0]["delta"]["content"] == EMAIL
    assert [e.name for e in events] == ["chat", "llm.chunk", "llm.chunk", "chat"]
    assert events[-1].data == {"text": "mail me at [REDACTED:email]"}
    for e in events:
        assert EMAIL not in e.to_json()


def test_jsonl_file_holds_no_secret(nf, redaction, tmp_path):
    redaction.enable()
    ex = nf.AtofExporter(nf.AtofExporterConfig(output_directory=str(tmp_path),
                                               filename="t.jsonl",
                                               mode=nf.AtofExporterMode.Overwrite))
    ex.register("file")
    nf.subscribers.register("late", lambda e: None, buffered=True)
    text = " | ".join(t for _, t, _ in POSITIVE)
    try:
        with nf.trace("run", input={"all": text, "password": "hunter2"}) as span:
            nf.mark("m", data=[text])
            span.output = text
        try:
            with nf.trace("boom"):
                raise ValueError(text)
        except ValueError:
            pass
        nf.subscribers.flush(5)
    finally:
        ex.shutdown()
    written = (tmp_path / "t.jsonl").read_text()
    assert written.count("\n") == 5 and "[REDACTED:" in written
    for secret in SECRETS:
        assert secret not in written


# --------------------------------------------------------------------------------------------
# Off, configuration errors, failures.

def test_disabled_changes_nothing(nf, events, redaction):
    def emit():
        nf.mark("m", data={"e": EMAIL, "password": "hunter2"})
        return events[-1].data

    plain = emit()
    assert plain == {"e": EMAIL, "password": "hunter2"}
    redaction.enable()
    assert redaction.active() is not None and nf.diagnostics()["redaction"]["enabled"]
    assert emit() == {"e": "[REDACTED:email]", "password": "[REDACTED:field]"}
    redaction.disable()
    assert redaction.active() is None and not nf.diagnostics()["redaction"]["enabled"]
    assert emit() == plain


@pytest.mark.parametrize("kwargs,message", [
    ({"custom": {"bad": "("}}, "bad regex"),
    ({"custom": {"empty": "x*"}}, "empty string"),
    ({"custom": {"email": "x"}}, "used twice"),
    ({"custom": {"has space": "x"}}, "letters, digits"),
    ({"detectors": ["ssn"]}, "unknown detector"),
    ({"detectors": "email"}, "not a str"),
    ({"action": "shred"}, "unknown action"),
    ({"actions": {"email": "shred"}}, "unknown action"),
    ({"actions": {"nope": "mask"}}, "unknown detector"),
    ({"mask_char": "**"}, "one character"),
    ({"unmasked_suffix": -1}, "unmasked_suffix"),
    ({"unmasked_prefix": True}, "unmasked_prefix"),
    ({"hash_salt": 5}, "hash_salt"),
    ({"fields": ("",)}, "non-empty"),
])
def test_bad_configuration_is_refused_when_made(nf, redaction, kwargs, message):
    with pytest.raises(redaction.RedactionConfigError, match=message):
        redaction.PiiRedactionConfig(**kwargs)
    assert issubclass(redaction.RedactionConfigError, ValueError)
    with pytest.raises(TypeError):
        redaction.enable({"action": "redact"})
    assert redaction.active() is None


def test_a_failing_detector_fails_closed(nf, events, redaction):
    def explode(text):
        raise RuntimeError("detector bug")

    redaction.enable(redaction.PiiRedactionConfig(
        custom=[redaction.Detector("bad", "x", check=explode)]))
    before = nf.diagnostics()["redaction"]["failures"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        nf.mark("m", data={"v": f"x {EMAIL}"})
        nf.mark("m", data="x again")
        nf.mark("m", data="clean")

        @nf.trace
        def f(v):
            raise ValueError("x marks the spot")

        with pytest.raises(ValueError, match="x marks the spot"):
            f("y")
    assert [e.data for e in events[:3]] == ["[REDACTED:error]", "[REDACTED:error]", "clean"]
    assert events[-1].metadata["otel.status_description"] == "[REDACTED:error]"
    assert nf.diagnostics()["redaction"]["failures"] - before == 3
    # reported once per process: by the first failure
    assert sum("redaction raised RuntimeError" in str(w.message) for w in caught) == \
        (1 if before == 0 else 0)


def test_failure_warning_escalated_to_error_does_not_break_the_program(nf, events, redaction):
    redaction.enable(redaction.PiiRedactionConfig(
        custom=[redaction.Detector("bad", "x", check=lambda t: 1 / 0)]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        h = nf.scope.push("s", nf.ScopeType.Function, input="x")
        nf.scope.pop(h)
    assert events[0].data == "[REDACTED:error]"


def test_redact_function(nf, redaction):
    cfg = redaction.PiiRedactionConfig(detectors=["email"])
    assert redaction.redact({"a": EMAIL}) == {"a": EMAIL}  # off
    assert redaction.redact({"a": EMAIL}, cfg) == {"a": "[REDACTED:email]"}
    redaction.enable(cfg)
    assert redaction.redact([EMAIL]) == ["[REDACTED:email]"]
    assert redaction.PII_REDACTION_KIND == "pii_redaction"


# --------------------------------------------------------------------------------------------
# Any payload: valid JSON, what redact() computes, and no planted secret left.

PLANTED = (EMAIL, OPENAI, GITHUB, AWS_ID, CARD, JWT, "10.20.30.40", "+1 (415) 555-0134")
TEXT = st.builds(lambda a, secret, b: f"{a} {secret} {b}", st.text(max_size=12),
                 st.sampled_from(PLANTED), st.text(max_size=12))
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.text(max_size=20) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.text(max_size=8) | TEXT, inner, max_size=4),
    max_leaves=12)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(payload=JSON)
def test_any_payload_is_redacted_to_valid_json(nf, redaction, payload):
    redaction.enable()
    got = []
    nf.subscribers.register("prop", got.append)
    try:
        nf.mark("m", data=payload)
    finally:
        nf.subscribers.deregister("prop")
    line = got[0].to_json()
    data = orjson.loads(line)["data"]
    assert data == got[0].data == orjson.loads(orjson.dumps(redaction.redact(payload)))
    for secret in PLANTED:
        assert secret not in line
