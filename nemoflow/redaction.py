"""Redaction: credential headers never written, and the ``pii_redaction`` component.

Credential headers of an ``LLMRequest`` are dropped by name (``is_credential_header``). The
``pii_redaction`` component, switched on with ``enable(PiiRedactionConfig(...))``, rewrites every
payload (inputs, outputs, data, metadata, tool and LLM arguments and results, marks' data, and
the text of an ERROR end) once, on the emitting thread, before it is encoded: every subscriber
and exporter sees the same redacted event and nothing unredacted is stored.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, NamedTuple

import orjson

from ._backend import core as _core

__all__ = [
    "ACTIONS",
    "DEFAULT_FIELDS",
    "DETECTORS",
    "PII_REDACTION_KIND",
    "Detector",
    "PiiRedactionConfig",
    "RedactionConfigError",
    "active",
    "disable",
    "enable",
    "is_credential_header",
    "public_headers",
    "redact",
]

PII_REDACTION_KIND = "pii_redaction"

# --------------------------------------------------------------------------------------------
# Credential headers.

# Matched anywhere in the lower-cased name: every spelling of API keys (x-api-key, api_key,
# x-goog-api-key, anthropic-api-key), tokens (x-amz-security-token, x-csrf-token), secrets,
# passwords, sessions, signatures, authorization and authentication (proxy-authorization,
# x-auth-…), cookies (set-cookie), and names ending in "key" (ocp-apim-subscription-key,
# x-functions-key).
_CREDENTIAL_HEADER = re.compile(
    r"api[-_]?key|token|secret|passw|auth|cookie|session|credential|signature"
    r"|(?:^|[-_])key$")


# Session identifiers that managed LLM calls add themselves (agent names or ids, never secrets):
# recorded in start events as the reference records them.
_SESSION_ID_HEADERS = frozenset(("x-dynamo-session-id", "x-dynamo-parent-session-id"))


def is_credential_header(name) -> bool:
    """Whether a header of this name carries a credential (case-insensitive)."""
    if not isinstance(name, str):
        return False
    lowered = name.lower()
    return lowered not in _SESSION_ID_HEADERS and _CREDENTIAL_HEADER.search(lowered) is not None


def public_headers(headers: dict) -> dict:
    """``headers`` without the credential headers."""
    return {k: v for k, v in headers.items() if not is_credential_header(k)}


# --------------------------------------------------------------------------------------------
# Detectors.

class RedactionConfigError(ValueError):
    """A redaction configuration that cannot be used (unknown name, bad regex, bad option)."""


ACTIONS = ("remove", "redact", "mask", "hash")

# Python's re has no multi-pattern automaton: one alternation of every detector costs each
# position of a string every alternative (about 60 ns per character for these). So a detector
# runs only when its gates (substrings, tested with `in` at C speed) are in the string, its
# regex starts with a literal where it can (re then searches for that literal at C speed too),
# and boundaries are checked on the character before a match rather than with a lookbehind
# (which re would evaluate at every position).
#
# A detector's regex runs when one of its gates passes: (first, then any of the others) in s;
# a one-character first test is a memchr. A group named ``v`` narrows the replacement to that
# part of the match (the label in front of a secret stays readable). Where matches overlap,
# the one that starts first (then the longer) is replaced. Emails and IPv6 addresses are found
# from their "@" and ":" instead (_ANCHORED); cards, phones and IPv4 addresses by one scan
# that runs only on strings with digits (_DIGIT_SCAN).
_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_KEY_CHARS = _ALNUM + "_-"
_PEM = r"(?:RSA |EC |DSA |OPENSSH |ENCRYPTED )?PRIVATE KEY-----"
_H = r"[0-9A-Fa-f]{1,4}"

class _Spec(NamedTuple):
    gates: tuple[tuple[str, ...], ...] | None  # run when (first and any of the rest) is in s
    # the regex, or (prefixes, regex) pairs each run only where one of its prefixes is in s;
    # None: found by _ANCHORED / _DIGIT_SCAN only
    pattern: str | tuple[tuple[tuple[str, ...], str], ...] | None
    before: str                                # characters that must not precede a match
    check: str | None                          # a name in _CHECKS


_BUILTIN = {
    # PEM private keys, as in GCP service-account files; a key cut short is redacted to the
    # end of the text rather than left half-written.
    "private_key": _Spec(
        (("-", "PRIVATE KEY"),),
        rf"-----BEGIN {_PEM}(?:[\s\S]*?-----END {_PEM}|[\s\S]*)", "", None),
    "jwt": _Spec(
        ((".", "eyJ"),),
        r"eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*", _KEY_CHARS, None),
    "bearer_token": _Spec(
        (("earer", "earer"), ("EARER", "EARER")),
        r"(?:[Bb]earer|BEARER)[ \t]+(?P<v>[A-Za-z0-9._~+/-]{8,}=*)", _ALNUM + "_", None),
    # One regex per provider, each run only when its prefix is in the string (a regex that
    # starts with a literal is searched for at C speed; an alternation is not).
    "api_key": _Spec(
        (("-", "-"), ("_", "_"), ("AIza", "AIza")),
        ((("sk-",), r"sk-[A-Za-z0-9_-]{20,}"),                # OpenAI sk-/sk-proj-, Anthropic
         (("k_live_", "k_test_"), r"[rs]k_(?:live|test)_[A-Za-z0-9]{10,}"),  # Stripe
         (("gh", "github_pat_"),                            # GitHub
          r"g(?:h[pousr]_[A-Za-z0-9]{30,}|ithub_pat_[A-Za-z0-9_]{30,})"),
         (("xox",), r"xox[abposre]-[A-Za-z0-9-]{10,}"),      # Slack
         (("xapp-",), r"xapp-[A-Za-z0-9-]{10,}"),
         (("AIza",), r"AIza[0-9A-Za-z_-]{35}"),              # Google
         (("hf_",), r"hf_[A-Za-z0-9]{30,}"),                 # Hugging Face
         (("glpat-",), r"glpat-[A-Za-z0-9_-]{20,}"),         # GitLab
         (("npm_",), r"npm_[A-Za-z0-9]{36}")),
        _KEY_CHARS, None),
    "aws_access_key": _Spec(
        None, r"A(?:KIA|SIA|BIA|CCA|GPA|IDA|IPA|NPA|NVA|PKA|ROA|SCA)[A-Z0-9]{16}(?![A-Za-z0-9])",
        _ALNUM, None),
    # 40 characters of base64 are everywhere: an AWS secret key only after a label naming it.
    "aws_secret_key": _Spec(
        (("ecret", "ecret"), ("ECRET", "ECRET")),
        (r"[Ss](?i:ecret[ _-]?(?:access[ _-]?)?key)[\"']?[ \t]*[:=][ \t]*[\"']?"
         r"(?P<v>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])"), "", None),
    # Storage and Service Bus connection strings, SAS signatures.
    "azure_key": _Spec(
        (("=", "Key=", "sig=", "Signature="),),
        (r"(?:AccountKey|SharedAccessKey|SharedAccessSignature|sig)="
         r"(?P<v>[A-Za-z0-9%/+]{20,}={0,2})"), _ALNUM, None),
    "email": _Spec(None, None, "", None),
    "credit_card": _Spec(None, None, "", None),
    "ip_address": _Spec(None, None, "", None),
    "phone": _Spec(None, None, "", None),
}

# From an anchor character: (anchor, characters the match extends over to its left and how
# many, regex matched from there, characters that must not come before it).
_ANCHORED = {
    "email": (
        "@", _ALNUM + "._%+-", 64,
        r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}(?![A-Za-z0-9-])",
        ""),
    # IPv6, from its first colon (at most 4 hex digits before it, the next colon at most 5
    # characters after it).
    "ip_address": (
        ":", "0123456789ABCDEFabcdef", 4,
        (rf"(?:(?:{_H}:){{7}}{_H}|(?:{_H}:){{1,7}}:|(?:{_H}:){{1,6}}:{_H}"
         rf"|(?:{_H}:){{1,5}}(?::{_H}){{1,2}}|(?:{_H}:){{1,4}}(?::{_H}){{1,3}}"
         rf"|(?:{_H}:){{1,3}}(?::{_H}){{1,4}}|(?:{_H}:){{1,2}}(?::{_H}){{1,5}}"
         rf"|{_H}:(?::{_H}){{1,6}}|:(?::{_H}){{1,7}})(?![0-9A-Za-z_:.])"),
        _ALNUM + "_:."),
}

# Digits: (detector, regex whose first element is one character or class, characters that
# must not come before it, check).
_DIGIT_SCAN = (
    ("credit_card", r"[2-6][0-9](?:[ -]?[0-9]){11,17}(?![0-9])", _ALNUM + "_.", "luhn"),
    ("phone", (r"\+(?=(?:[-. ()]*[0-9]){8})[1-9][0-9]{0,2}(?:[-. ]?\(?[0-9]{1,4}\)?){1,5}"
               r"[0-9]{2,4}(?![A-Za-z0-9_])"), _ALNUM + "_+", None),
    ("phone", r"\([2-9][0-9]{2}\)[-. ]?[2-9][0-9]{2}[-. ][0-9]{4}(?![A-Za-z0-9_])",
     _ALNUM + "_+", None),
    ("phone", r"[2-9][0-9]{2}[-. ][2-9][0-9]{2}[-. ][0-9]{4}(?![A-Za-z0-9_])", _ALNUM + "_+",
     None),
    ("ip_address", r"[0-9][0-9]{0,2}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}(?![0-9]|\.[0-9])",
     _ALNUM + "_.", "ipv4"),
)
# Every card, phone and IPv4 match holds three digits in a row, "+" and two digits, or a digit,
# a dot and a digit; the scan begins a little before the first of these ("+1 (415) …").
_DIGIT_GATE = re.compile(r"[0-9+][0-9.][0-9]").search

# The shortest text each detector can match ("Bearer " + 8, "a@b.cc", "1.2.3.4", "::1" ...):
# shorter strings skip it without looking.
_MIN_LENGTH = {"private_key": 27, "jwt": 16, "bearer_token": 15, "api_key": 15,
               "aws_access_key": 20, "aws_secret_key": 50, "azure_key": 24, "email": 6,
               "ip_address": 3, "digits": 7}

# Every built-in match holds one of these characters, or is 20 characters of letters and digits
# (AWS key ids, Google keys): shorter words without them are let through untouched.
_SIGNALS = frozenset("-._:=@ \t\n0123456789")

DETECTORS = tuple(_BUILTIN)
"""The built-in detectors, all on by default."""

DEFAULT_FIELDS = (
    "password", "passwd", "secret", "api_key", "apikey", "authorization", "cookie",
    "credential", "private_key", "access_token", "refresh_token", "id_token", "auth_token",
    "session_token", "security_token", "bearer",
)
"""Key names whose whole value is redacted wherever they occur (case-insensitive, as part of
a longer name too; ``-`` counts as ``_``). ``token`` alone is not among them: it would take
``max_tokens`` and token counts with it."""


def _span_order(span):
    return span[0], -span[1]


def _luhn(digits: list[int]) -> bool:
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i & 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card(text: str) -> int | bool:
    """The length of the longest start of ``text`` that is a card number: 13 to 19 digits up
    to a group's end, passing the Luhn check (digits that follow, a CVV say, are not part of
    it); False if there is none."""
    digits, ends = [], []
    for i, c in enumerate(text):
        if "0" <= c <= "9":
            digits.append(ord(c) - 48)
            ends.append(i + 1)
    for k in range(min(19, len(digits)), 12, -1):
        end = ends[k - 1]
        if (end == len(text) or not "0" <= text[end] <= "9") and _luhn(digits[:k]):
            return end
    return False


def _ipv4(text: str) -> bool:
    return all(int(octet) <= 255 for octet in text.split("."))


# A check returns False to refuse a match, True to take it, or the length of the part of it
# to take.
_CHECKS: dict[str, Callable[[str], int | bool]] = {"luhn": _card, "ipv4": _ipv4}


@dataclass(frozen=True)
class Detector:
    """A custom detector: a regex, and optionally ``check(match_text) -> bool`` to confirm it."""

    name: str
    pattern: str | re.Pattern
    check: Callable[[str], bool] | None = None


def _frozen(value, what):
    if isinstance(value, str):
        raise RedactionConfigError(f"{what} must be a sequence of names, not a str")
    try:
        return tuple(value)
    except TypeError:
        raise RedactionConfigError(f"{what} must be a sequence, not {type(value).__name__}") \
            from None


@dataclass(frozen=True)
class PiiRedactionConfig:
    """What the ``pii_redaction`` component detects and what it does with each match.

    ``detectors``: built-in detector names (``DETECTORS``, all by default). ``action``: what
    every detector does unless ``actions`` (detector name -> action) says otherwise; actions
    are ``remove``, ``redact`` (``[REDACTED:<detector>]``), ``mask`` (``mask_char`` for all
    but the first ``unmasked_prefix`` and last ``unmasked_suffix`` characters) and ``hash``
    (``[SHA256:<detector>:<16 hex>]``, an HMAC-SHA256 keyed with ``hash_salt`` when one is
    given). ``custom``: extra detectors, ``Detector`` objects or a mapping of name -> regex.
    ``fields``: key names whose value is replaced whole (the ``field`` detector;
    ``DEFAULT_FIELDS``).
    """

    detectors: Iterable[str] = DETECTORS
    action: str = "redact"
    actions: Mapping[str, str] = field(default_factory=dict)
    custom: Iterable[Detector] | Mapping[str, str | re.Pattern] = ()
    fields: Iterable[str] = DEFAULT_FIELDS
    mask_char: str = "*"
    unmasked_prefix: int = 0
    unmasked_suffix: int = 4
    hash_salt: str | bytes | None = None

    def __post_init__(self):
        set_ = object.__setattr__  # normalized once, so a config is checked where it is made
        detectors = _frozen(self.detectors, "detectors")
        unknown = [d for d in detectors if d not in _BUILTIN]
        if unknown:
            raise RedactionConfigError(f"unknown detector(s) {unknown}; built-in: "
                                       f"{', '.join(DETECTORS)}")
        set_(self, "detectors", detectors)
        custom = self.custom
        if isinstance(custom, Mapping):
            custom = [Detector(k, v) for k, v in custom.items()]
        custom = _frozen(custom, "custom")
        names = set(detectors) | {"field"}
        for d in custom:
            if not isinstance(d, Detector):
                raise RedactionConfigError(f"custom detectors are Detector objects, not "
                                           f"{type(d).__name__}")
            if not isinstance(d.name, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", d.name):
                raise RedactionConfigError(
                    f"a detector name is letters, digits and _, not {d.name!r}")
            if d.name in names or d.name in _BUILTIN:
                raise RedactionConfigError(f"detector name {d.name!r} is used twice")
            names.add(d.name)
            _compile_custom(d)
            if d.check is not None and not callable(d.check):
                raise RedactionConfigError(f"detector {d.name!r}: check must be callable")
        set_(self, "custom", custom)
        for name, value in (("action", self.action), *dict(self.actions).items()):
            if value not in ACTIONS:
                raise RedactionConfigError(f"unknown action {value!r} for {name}; actions: "
                                           f"{', '.join(ACTIONS)}")
        actions = dict(self.actions)
        extra = [k for k in actions if k not in names]
        if extra:
            raise RedactionConfigError(f"actions given for unknown detector(s) or ones not in "
                                       f"use: {extra}")
        set_(self, "actions", actions)
        fields = _frozen(self.fields, "fields")
        if not all(isinstance(f, str) and f for f in fields):
            raise RedactionConfigError("fields are non-empty key names")
        set_(self, "fields", fields)
        if not isinstance(self.mask_char, str) or len(self.mask_char) != 1:
            raise RedactionConfigError("mask_char must be one character")
        for name in ("unmasked_prefix", "unmasked_suffix"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise RedactionConfigError(f"{name} must be an int >= 0")
        if self.hash_salt is not None and not isinstance(self.hash_salt, (str, bytes)):
            raise RedactionConfigError("hash_salt must be str, bytes or None")


def _compile_custom(d: Detector) -> re.Pattern:
    if isinstance(d.pattern, re.Pattern):
        return d.pattern
    if not isinstance(d.pattern, str) or not d.pattern:
        raise RedactionConfigError(f"detector {d.name!r}: pattern must be a non-empty str or "
                                   "a compiled re.Pattern")
    try:
        compiled = re.compile(d.pattern)
    except re.error as exc:
        raise RedactionConfigError(f"detector {d.name!r}: bad regex {d.pattern!r}: {exc}") \
            from None
    if compiled.match(""):
        raise RedactionConfigError(f"detector {d.name!r}: the pattern matches the empty string")
    return compiled


# --------------------------------------------------------------------------------------------
# The redactor: one combined regex per configuration, applied to every string of a payload.

_DEPTH = 255  # orjson refuses payloads nested this deep; so does the walk
_FAILED = "[REDACTED:error]"


class _TooDeep(Exception):
    pass


class _Rule:
    """What one detector of a configuration writes in place of a match."""

    __slots__ = ("before", "check", "name", "replace")

    def __init__(self, name, before, check, replace):
        self.name = name
        self.before = before
        self.check = check
        self.replace = replace


class _Redactor:
    """A compiled ``PiiRedactionConfig``: ``apply(payload, lenient)`` and ``text(str)``."""

    def __init__(self, config: PiiRedactionConfig):
        self.config = config
        self._salt = (config.hash_salt.encode() if isinstance(config.hash_salt, str)
                      else config.hash_salt)
        # (min length, gates or None, ((prefix or None, finditer, has group v), ...), rule)
        self._gated: list[tuple[int, Any, tuple, _Rule]] = []
        # (min length, anchor, back chars, back max, next anchor within, match, rule)
        self._anchored: list[tuple[int, str, str, int, int, Callable, _Rule]] = []
        self._digit_rules: dict[str, _Rule] = {}
        digits: list[str] = []
        for name in config.detectors:
            gates, pattern, before, check = _BUILTIN[name]
            replace = self._action(name)
            if pattern is not None:
                split = None if gates is None else tuple((g[0], g[1:]) for g in gates)
                compiled: list[tuple[str | None, re.Pattern]] = (
                    [(None, re.compile(pattern))] if isinstance(pattern, str)
                    else [(prefix, re.compile(p)) for prefixes, p in pattern
                          for prefix in prefixes])
                finders = tuple((prefix, c.finditer, "v" in c.groupindex)
                                for prefix, c in compiled)
                self._gated.append((_MIN_LENGTH[name], split, finders,
                                    _Rule(name, before, _CHECKS.get(check or ""), replace)))
            if name in _ANCHORED:
                anchor, back_chars, back_max, pattern, before = _ANCHORED[name]
                self._anchored.append((_MIN_LENGTH[name], anchor, back_chars, back_max,
                                       6 if anchor == ":" else 0, re.compile(pattern).match,
                                       _Rule(name, before, None, replace)))
            for scan_name, pattern, before, scan_check in _DIGIT_SCAN:
                if scan_name == name:
                    # A group after the first element names the detector without hiding that
                    # element from re's first-character test of each alternative.
                    group = f"d{len(digits)}"
                    cut = pattern.index("]") + 1 if pattern[0] == "[" else 2
                    digits.append(f"{pattern[:cut]}(?P<{group}>){pattern[cut:]}")
                    self._digit_rules[group] = _Rule(name, before,
                                                     _CHECKS.get(scan_check or ""), replace)
        self._digits = re.compile("|".join(digits)).finditer if digits else None
        self._words_safe = not config.custom  # custom regexes may match anything
        custom: tuple[Detector, ...] = config.custom  # type: ignore[assignment]  # normalized
        for d in custom:
            confirm = None if d.check is None else (lambda text, c=d.check: bool(c(text)))
            regex = _compile_custom(d)
            self._gated.append((0, None, ((None, regex.finditer, "v" in regex.groupindex),),
                                _Rule(d.name, "", confirm, self._action(d.name))))
        self._field_action = config.actions.get("field", config.action)
        self._field_marker = "[REDACTED:field]"
        normalized = sorted({f.lower().replace("-", "_") for f in config.fields})
        self._field_re = (re.compile("|".join(re.escape(f) for f in normalized)).search
                          if normalized else None)
        self._keys: dict[str, tuple[bool, str]] = {}  # key -> (is a field, key as written)

    # -- actions -------------------------------------------------------------------------

    def _action(self, name):
        action = self.config.actions.get(name, self.config.action)
        if action == "redact":
            marker = f"[REDACTED:{name}]"
            return lambda text: marker
        if action == "remove":
            return lambda text: ""
        if action == "mask":
            return self._mask
        return lambda text: self._hash(name, text)

    def _mask(self, text):
        head, tail = self.config.unmasked_prefix, self.config.unmasked_suffix
        if head + tail >= len(text):  # nothing would be hidden: hide it all
            return self.config.mask_char * len(text)
        return (text[:head] + self.config.mask_char * (len(text) - head - tail)
                + text[len(text) - tail:])

    def _hash(self, name, text):
        data = text.encode("utf-8", "surrogatepass")
        digest = (hmac.new(self._salt, data, hashlib.sha256) if self._salt
                  else hashlib.sha256(data)).hexdigest()
        return f"[SHA256:{name}:{digest[:16]}]"

    # -- strings -------------------------------------------------------------------------

    def _found(self, s):
        """Every match in ``s``: (start, end, replace from, replace to, rule), unsorted."""
        found = []
        n = len(s)
        for min_length, gates, finders, rule in self._gated:
            if n < min_length:
                continue
            if gates is not None:
                hit = False
                for first, others in gates:
                    if first in s:
                        for gate in others:
                            if gate in s:
                                hit = True
                                break
                        if hit:
                            break
                if not hit:
                    continue
            before = rule.before
            for prefix, finditer, has_value in finders:
                if prefix is not None and prefix not in s:
                    continue
                for m in finditer(s):
                    start, end = m.span()
                    if end > start and (start == 0 or s[start - 1] not in before):
                        if has_value and m.start("v") >= 0:
                            found.append((start, end, m.start("v"), m.end("v"), rule))
                        else:
                            found.append((start, end, start, end, rule))
        for min_length, anchor, back_chars, back_max, near, match, rule in self._anchored:
            i = s.find(anchor) if n >= min_length else -1
            while i >= 0:
                if near and s.find(anchor, i + 1, i + near) < 0:
                    i = s.find(anchor, i + 1)
                    continue
                # the match begins before its anchor: an email's name, an IPv6 first group
                start = i - back_max if i > back_max else 0
                start += len(s[start:i].rstrip(back_chars))
                m = match(s, start)
                if m is not None and (start == 0 or s[start - 1] not in rule.before):
                    end = m.end()
                    found.append((start, end, start, end, rule))
                    i = s.find(anchor, end if end > i else i + 1)
                else:
                    i = s.find(anchor, i + 1)
        if self._digits is not None and n >= _MIN_LENGTH["digits"]:
            first = _DIGIT_GATE(s)
            if first is not None:
                rules = self._digit_rules
                for m in self._digits(s, max(0, first.start() - 4)):
                    rule = rules[m.lastgroup]
                    start = m.start()
                    if start == 0 or s[start - 1] not in rule.before:
                        found.append((start, m.end(), start, m.end(), rule))
        return found

    def text(self, s: str) -> str:
        """``s`` with every detector's matches replaced."""
        if self._words_safe and len(s) < 20 and _SIGNALS.isdisjoint(s):
            return s
        found = self._found(s)
        if not found:
            return s
        if len(found) == 1:
            start, end, rstart, rend, rule = found[0]
            if rule.check is not None:
                ok = rule.check(s[start:end])
                if not ok:
                    return s
                if ok is not True:
                    end = rend = start + ok
            return s[:rstart] + rule.replace(s[rstart:rend]) + s[rend:]
        found.sort(key=_span_order)
        out = []
        pos = 0
        for start, end, rstart, rend, rule in found:
            if start < pos:  # overlaps a match already taken (earlier, or earlier detector)
                continue
            if rule.check is not None:
                ok = rule.check(s[start:end])
                if not ok:
                    continue
                if ok is not True:
                    end = rend = start + ok
            out.append(s[pos:rstart])
            out.append(rule.replace(s[rstart:rend]))
            out.append(s[rend:end])
            pos = end
        if not out:
            return s
        out.append(s[pos:])
        return "".join(out)

    # -- payloads ------------------------------------------------------------------------

    def _key(self, key):
        # (is a field, the key as written), memoized: key names repeat
        field_re = self._field_re
        known = (field_re is not None
                 and field_re(key.lower().replace("-", "_")) is not None, self.text(key))
        if len(self._keys) < 4096:  # bounded: payloads may carry arbitrary keys
            self._keys[key] = known
        return known

    def _field_value(self, value, lenient):
        action = self._field_action
        if action == "mask" and isinstance(value, str):
            return self._mask(value)
        if action == "hash":
            if not isinstance(value, str):
                try:
                    value = orjson.dumps(value, option=orjson.OPT_SORT_KEYS,
                                         default=_stringify).decode()
                except (TypeError, ValueError):
                    value = _stringify(value)
            return self._hash("field", value)
        return self._field_marker

    def _walk(self, v, depth, lenient):
        t = type(v)
        if t is str:
            return self.text(v)
        if t is dict:
            return self._dict(v, depth, lenient)
        if t is list or t is tuple:
            return self._list(v, depth, lenient)
        if v is None or t is int or t is float or t is bool:
            return v
        if isinstance(v, str):
            return self.text(str(v))
        if isinstance(v, dict):
            return self._dict(v, depth, lenient)
        if isinstance(v, (list, tuple)):
            return self._list(v, depth, lenient)
        if isinstance(v, Enum):  # written as its value
            return self._walk(v.value, depth, lenient)
        if isinstance(v, (int, float)):
            return v
        if lenient:  # written as its str(): redact that text
            return self.text(_stringify(v))
        return v  # not JSON: encoding refuses it as it would without redaction

    def _dict(self, d, depth, lenient):
        if depth >= _DEPTH:
            raise _TooDeep
        depth += 1
        out = None
        keys, text = self._keys, self.text
        i = -1
        for k, v in d.items():
            i += 1
            if type(k) is str:
                known = keys.get(k)
                is_field, nk = self._key(k) if known is None else known
            elif isinstance(k, str):
                is_field, nk = self._key(k)
            else:
                is_field, nk = False, k
            drop = False
            if is_field and v is not None:
                if self._field_action == "remove":
                    drop = True
                    nv = None
                else:
                    nv = self._field_value(v, lenient)
            else:
                t = type(v)
                if t is str:
                    nv = text(v)
                elif t is int or t is bool or t is float or v is None:
                    nv = v
                else:
                    nv = self._walk(v, depth, lenient)
            if out is None:
                if not drop and nk is k and nv is v:
                    continue
                out = dict(list(d.items())[:i]) if i else {}
            if not drop:
                out[nk] = nv
        return d if out is None else out

    def _list(self, seq, depth, lenient):
        if depth >= _DEPTH:
            raise _TooDeep
        depth += 1
        out = None
        text = self.text
        for i, v in enumerate(seq):
            nv = text(v) if type(v) is str else self._walk(v, depth, lenient)
            if out is None:
                if nv is v:
                    continue
                out = list(seq[:i])
            out.append(nv)
        return seq if out is None else out

    def apply(self, payload, lenient=False):
        """``payload`` with every detector and field rule applied (the original if nothing
        matched; never modified in place)."""
        try:
            return self._walk(payload, 0, lenient)
        except _TooDeep:
            # Too deep to be JSON: strict encoding refuses the original as before; lenient
            # encoding would write its str(), which was not searched: write the marker.
            return _FAILED if lenient else payload


def _stringify(obj):
    try:
        return str(obj)
    except Exception:
        return f"<unprintable {type(obj).__name__}>"


# --------------------------------------------------------------------------------------------
# Switching it on and off.

_active: _Redactor | None = None


def enable(config: PiiRedactionConfig | None = None) -> None:
    """Redact every payload from now on with ``config`` (default: every built-in detector)."""
    global _active
    if config is None:
        config = PiiRedactionConfig()
    if not isinstance(config, PiiRedactionConfig):
        raise TypeError(f"config must be a PiiRedactionConfig, not {type(config).__name__}")
    redactor = _Redactor(config)
    _core.set_redactor(redactor)
    _active = redactor


def disable() -> None:
    """Stop redacting payloads (credential headers are still never written)."""
    global _active
    _core.set_redactor(None)
    _active = None


def active() -> PiiRedactionConfig | None:
    """The configuration in force, or None when redaction is off."""
    return None if _active is None else _active.config


def redact(value, config: PiiRedactionConfig | None = None):
    """``value`` as the component would write it, with ``config`` or the one in force."""
    redactor = _active if config is None else _Redactor(config)
    return value if redactor is None else redactor.apply(value, True)
