"""Configuration as a document: components, each of a registered kind, turned on together.

NeMo Flow 0.2's ``nemo_flow.plugin``. A configuration is a dict, a ``PluginConfig`` or a
``plugins.toml`` file::

    version = 1

    [[components]]
    kind = "observability"

    [components.config.atof]
    enabled = true
    [[components.config.atof.sinks]]
    type = "file"
    output_directory = "traces"

The built-in ``observability`` kind turns on the ATOF, ATIF and OpenTelemetry exporters;
``register(kind, plugin)`` adds kinds of your own. ``initialize`` checks the whole document
before it changes anything: an invalid one raises ``PluginConfigError`` naming every bad field
and leaves the active configuration as it was. A component that fails to start rolls back
what the new configuration had registered and restores the previous one.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Literal, Protocol, TypedDict, cast

from . import guardrails, intercepts, subscribers
from ._types import AlreadyExistsError, InvalidArgumentError, NemoFlowError
from .exporters.atif import AtifFileExporter, _agent, _check_template
from .exporters.atof import AtofExporter, AtofExporterConfig, AtofExporterMode
from .exporters.otlp import OpenTelemetryConfig, OpenTelemetrySubscriber
from .types import Json, JsonObject, UnsupportedBehavior

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "OBSERVABILITY_PLUGIN_KIND",
    "Activation",
    "ComponentSpec",
    "ConfigDiagnostic",
    "ConfigPolicy",
    "ConfigReport",
    "Plugin",
    "PluginActivationError",
    "PluginConfig",
    "PluginConfigError",
    "PluginContext",
    "activate",
    "clear",
    "deregister",
    "initialize",
    "list_kinds",
    "load_toml",
    "plugin",
    "register",
    "report",
    "validate",
]

OBSERVABILITY_PLUGIN_KIND = "observability"
_BEHAVIORS = ("ignore", "warn", "error")


class _ConfigDiagnosticRequired(TypedDict):
    level: Literal["warning", "error"]
    code: str
    message: str


class ConfigDiagnostic(_ConfigDiagnosticRequired, total=False):
    """One finding of the validation: ``level``, ``code``, ``message``, ``component``, ``field``."""

    component: str
    field: str


class ConfigReport(TypedDict):
    """What validation found: ``{"diagnostics": [...]}``."""

    diagnostics: list[ConfigDiagnostic]


class PluginConfigError(NemoFlowError, ValueError):
    """The configuration is invalid; ``diagnostics`` holds every error and warning found."""

    def __init__(self, message: str, diagnostics: list[ConfigDiagnostic]):
        super().__init__(message)
        self.diagnostics = diagnostics


class PluginActivationError(NemoFlowError):
    """A valid component could not be started; the previous configuration was restored."""


# --- the document -------------------------------------------------------------------------


def _normalize(value: object, keep_none: bool = False) -> Json:
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict) and not isinstance(value, type):
        return cast(Json, to_dict())
    if is_dataclass(value) and not isinstance(value, type):
        pairs = ((f.name, getattr(value, f.name)) for f in fields(value))
        return {name: _normalize(item, keep_none) for name, item in pairs
                if keep_none or item is not None}
    if isinstance(value, list | tuple):
        return [_normalize(item, keep_none) for item in value]
    if isinstance(value, dict):
        return {key: _normalize(item, keep_none or key == "config")
                for key, item in value.items() if keep_none or item is not None}
    return cast(Json, value)


@dataclass(slots=True)
class ConfigPolicy:
    """What unknown component kinds, unknown fields and unsupported values are:
    ``"ignore"``, ``"warn"`` (a warning diagnostic) or ``"error"`` (blocks ``initialize``)."""

    unknown_component: UnsupportedBehavior = "warn"
    unknown_field: UnsupportedBehavior = "warn"
    unsupported_value: UnsupportedBehavior = "error"

    def to_dict(self) -> JsonObject:
        """The policy as a JSON object."""
        return {"unknown_component": self.unknown_component,
                "unknown_field": self.unknown_field,
                "unsupported_value": self.unsupported_value}


@dataclass(slots=True)
class ComponentSpec:
    """One component: its ``kind``, whether it is ``enabled`` and its own ``config``.

    A disabled component is validated but not started.
    """

    kind: str
    enabled: bool = True
    config: JsonObject = field(default_factory=dict)

    def to_dict(self) -> JsonObject:
        """The component as a JSON object."""
        return {"kind": self.kind, "enabled": self.enabled,
                "config": cast(JsonObject, _normalize(self.config, True))}


@dataclass(slots=True)
class PluginConfig:
    """A configuration document: ``version`` (1), the ordered ``components`` and ``policy``."""

    version: int = 1
    components: list[object] = field(default_factory=list)
    policy: ConfigPolicy = field(default_factory=ConfigPolicy)

    def to_dict(self) -> JsonObject:
        """The document as a JSON object."""
        return {"version": self.version,
                "components": [_normalize(c) for c in self.components],
                "policy": self.policy.to_dict()}


def load_toml(path: str | os.PathLike[str]) -> JsonObject:
    """The document in a ``plugins.toml`` file; ``PluginConfigError`` if it is not TOML."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            return cast(JsonObject, tomllib.load(f))
    except tomllib.TOMLDecodeError as exc:
        message = f"invalid plugin TOML in {path}: {exc}"
        raise PluginConfigError(message, [{"level": "error", "code": "plugin.invalid_toml",
                                           "message": message, "field": path}]) from None


def _merge(base: dict, over: dict) -> dict:
    # The programmatic document over the file's: tables merge key by key, a component merges
    # into the file's component of the same kind, any other value replaces the file's.
    out = dict(base)
    for key, value in over.items():
        old = out.get(key)
        if key == "components" and isinstance(value, list) and isinstance(old, list):
            merged = list(old)
            for comp in value:
                at = next((i for i, c in enumerate(merged) if isinstance(c, dict)
                           and isinstance(comp, dict) and c.get("kind") == comp.get("kind")),
                          None)
                if at is None:
                    merged.append(comp)
                else:
                    merged[at] = _merge(merged[at], comp)
            out[key] = merged
        elif isinstance(value, dict) and isinstance(old, dict):
            out[key] = _merge(old, value)
        else:
            out[key] = value
    return out


def _document(config: object, plugins_toml: object) -> tuple[dict, list]:
    found: list = []
    named = isinstance(config, str | os.PathLike)
    if named:
        config, plugins_toml = plugins_toml, config
    doc = {} if config is None else _normalize(config)
    if not isinstance(doc, dict):
        raise TypeError(f"config must be a PluginConfig, a dict or the path of a plugins.toml, "
                        f"not {type(config).__name__}")
    if plugins_toml is not None:
        path = os.fspath(cast(Any, plugins_toml))
        if os.path.exists(path):
            doc = _merge(load_toml(path), doc)
        elif named:  # the configuration itself: without it there is nothing to apply
            message = f"plugin configuration file does not exist: {path}"
            raise PluginConfigError(message, [{"level": "error", "field": path, "message": message,
                                               "code": "plugin.configuration_file_missing"}])
        else:
            found.append(({"level": "warning", "code": "plugin.configuration_file_missing",
                           "message": f"plugin configuration file does not exist: {path}",
                           "field": "plugins_toml"}, "plugins_toml"))
    return doc, found


# --- validation ---------------------------------------------------------------------------


def _tname(value: object) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "an array", dict: "a table", type(None): "null"}.get(type(value),
                                                                  type(value).__name__)


class _Findings:
    """Diagnostics, each with the full path it is about (for the error message)."""

    def __init__(self) -> None:
        self.items: list = []

    def add(self, level, code, message, where, component=None, field=None) -> None:
        diag: dict = {"level": level, "code": code, "message": message}
        if component is not None:
            diag["component"] = component
        if field is not None:
            diag["field"] = field
        self.items.append((diag, where))

    def errors(self) -> list:
        return [(d, w) for d, w in self.items if d["level"] == "error"]


class _Checker:
    """Typed access to one component's configuration, reporting what is wrong by field."""

    def __init__(self, findings: _Findings, component: str, base: str, policy: dict):
        self.findings = findings
        self.component = component
        self.base = base
        self.policy = policy

    def _where(self, path: str) -> str:
        return f"{self.base}.{path}" if path else self.base

    def error(self, path: str, message: str, code: str = "invalid_value") -> None:
        self.findings.add("error", f"{self.component}.{code}", f"{path or 'config'}: {message}",
                          self._where(path), self.component, path or None)

    def by_policy(self, which: str, path: str, message: str, code: str,
                  component: str | None = None) -> None:
        behavior = self.policy[which]
        if behavior != "ignore":
            self.findings.add("error" if behavior == "error" else "warning",
                              f"{self.component}.{code}", f"{path}: {message}",
                              self._where(path), component or self.component, path)

    def table(self, value: object, path: str, known: tuple) -> dict | None:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(path, f"must be a table, got {_tname(value)}")
            return None
        for key in value:
            if key not in known:
                where = f"{path}.{key}" if path else key
                self.by_policy("unknown_field", where,
                               f"field '{key}' is not recognized for '{path or self.component}'",
                               "unknown_field")
        return value

    def get(self, table: dict, key: str, path: str, kind: type | tuple, default: Any,
            required: bool = False) -> Any:
        where = f"{path}.{key}" if path else key
        if key not in table or table[key] is None:
            if required:
                self.error(where, "is required")
            return default
        value = table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if not ok:
            want = " or ".join(_tname(k()) if k is not type(None) else "null" for k in kinds)
            self.error(where, f"must be {want}, got {_tname(value)}")
            return default
        return value

    def choice(self, table: dict, key: str, path: str, choices: tuple, default: Any,
               required: bool = False) -> Any:
        value = self.get(table, key, path, str, default, required)
        if value is None and default is None:
            return None
        if value not in choices:
            where = f"{path}.{key}" if path else key
            names = ", ".join(repr(c) for c in choices[:-1]) + f" or {choices[-1]!r}"
            self.error(where, f"must be {names}, got {value!r}")
            return default
        return value

    def int_(self, table: dict, key: str, path: str, minimum: int, default: Any) -> Any:
        value = self.get(table, key, path, int, default)
        if value is not None and value < minimum:
            self.error(f"{path}.{key}", f"must be >= {minimum}, got {value}")
            return default
        return value

    def str_map(self, table: dict, key: str, path: str) -> dict:
        value = self.get(table, key, path, dict, {})
        bad = [k for k, v in value.items() if not isinstance(v, str)]
        if bad:
            self.error(f"{path}.{key}.{bad[0]}", f"must be a string, got {_tname(value[bad[0]])}")
            return {}
        return dict(value)

    def str_list(self, table: dict, key: str, path: str, default: list) -> list:
        value = self.get(table, key, path, list, default)
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.error(f"{path}.{key}[{i}]", f"must be a string, got {_tname(item)}")
                return default
        return list(value)

    def items(self, table: dict, key: str, path: str) -> list:
        return self.get(table, key, path, list, [])


# --- the observability component ----------------------------------------------------------

_OBS_FIELDS = ("version", "atof", "atif", "opentelemetry", "policy", "enable_full_payloads")
_ATOF_FIELDS = ("enabled", "sinks", "output_directory", "filename", "mode")
_FILE_SINK_FIELDS = ("type", "output_directory", "filename", "mode")
_STREAM_SINK_FIELDS = ("type", "name", "url", "transport", "headers", "header_env",
                       "header_file", "timeout_millis", "field_name_policy")
_ATIF_FIELDS = ("enabled", "agent_name", "agent_version", "model_name", "tool_definitions",
                "extra", "output_directory", "filename_template", "storage")
_OTEL_FIELDS = ("enabled", "endpoints", "logs", "metrics")
_ENDPOINT_FIELDS = ("type", "endpoint", "mark_projection", "mark_exclude_names",
                    "attribute_mappings", "transport", "service_name", "service_namespace",
                    "service_version", "instrumentation_scope", "timeout_millis", "headers",
                    "header_env", "resource_attributes", "max_queue_size",
                    "max_export_batch_size", "scheduled_delay_millis",
                    "completed_span_context_ttl_millis", "promote_metadata_prefixes",
                    "promote_resource_metadata_prefixes", "header_file")
_OBS_VERSION = 4


def _component_policy(c: _Checker, config: dict) -> None:
    policy = c.table(config.get("policy"), "policy", ("unknown_component", "unknown_field",
                                                      "unsupported_value"))
    if policy:
        c.policy = {k: c.choice(policy, k, "policy", _BEHAVIORS, c.policy[k])
                    for k in ("unknown_component", "unknown_field", "unsupported_value")}


def _validate_observability(c: _Checker, config: dict) -> list:
    """The exporters to build, as ``(registration name, factory)``; findings go to ``c``."""
    plan: list = []
    _component_policy(c, config)
    c.table(config, "", _OBS_FIELDS)
    version = c.get(config, "version", "", int, _OBS_VERSION)
    if version != _OBS_VERSION:
        c.error("version", f"observability config version {version} is unsupported; use "
                f"version {_OBS_VERSION}", "unsupported_config_version")
    c.get(config, "enable_full_payloads", "", bool, False)  # nemoflow keeps them always
    plan += _validate_atof(c, config.get("atof"))
    plan += _validate_atif(c, config.get("atif"))
    plan += _validate_otel(c, config.get("opentelemetry"))
    return plan


def _validate_atof(c: _Checker, section: object) -> list:
    atof = c.table(section, "atof", _ATOF_FIELDS)
    if not atof:
        return []
    enabled = c.get(atof, "enabled", "atof", bool, False)
    for legacy in ("output_directory", "filename", "mode"):
        if legacy in atof:
            c.error(f"atof.{legacy}", f"ATOF {legacy} was removed in observability config "
                    "version 2; configure typed ATOF sinks instead", "legacy_atof_field")
    sinks = c.items(atof, "sinks", "atof")
    plan = []
    for i, raw in enumerate(sinks):
        path = f"atof.sinks[{i}]"
        if not isinstance(raw, dict):
            c.error(path, f"must be a table, got {_tname(raw)}")
            continue
        kind = c.choice(raw, "type", path, ("file", "stream"), None, True)
        if kind == "stream":
            c.table(raw, path, _STREAM_SINK_FIELDS)
            c.by_policy("unsupported_value", f"{path}.type", "ATOF stream sinks are not "
                        "supported by nemoflow; use a file sink", "unsupported_value")
            continue
        if kind != "file":
            continue
        c.table(raw, path, _FILE_SINK_FIELDS)
        directory = c.get(raw, "output_directory", path, str, ".")
        filename = c.get(raw, "filename", path, str, "")
        mode = c.choice(raw, "mode", path, ("append", "overwrite"), "append")
        conf = AtofExporterConfig(directory, filename, AtofExporterMode(mode))
        plan.append((f"observability.{path}", lambda conf=conf: AtofExporter(conf)))
    if enabled and not sinks:
        c.error("atof.sinks", "ATOF requires at least one configured sink when enabled",
                "unsupported_value")
    return plan if enabled else []


def _validate_atif(c: _Checker, section: object) -> list:
    atif = c.table(section, "atif", _ATIF_FIELDS)
    if not atif:
        return []
    enabled = c.get(atif, "enabled", "atif", bool, False)
    from . import __version__
    kwargs = {
        "agent_name": c.get(atif, "agent_name", "atif", str, "nemoflow"),
        "agent_version": c.get(atif, "agent_version", "atif", str, __version__),
        "model_name": c.get(atif, "model_name", "atif", str, None),
        "extra": c.get(atif, "extra", "atif", dict, None),
    }
    tools = c.get(atif, "tool_definitions", "atif", list, None)
    if tools is not None:
        bad = next((i for i, t in enumerate(tools) if not isinstance(t, dict)), None)
        if bad is not None:
            c.error(f"atif.tool_definitions[{bad}]", f"must be a table, got "
                    f"{_tname(tools[bad])}")
            tools = None
    kwargs["tool_definitions"] = tools
    try:  # what the exporter would refuse (extra that is not JSON, say) is refused here
        _agent(**kwargs)
    except (TypeError, ValueError) as exc:
        c.error("atif", str(exc))
    directory = c.get(atif, "output_directory", "atif", str, ".")
    template = c.get(atif, "filename_template", "atif", str,
                     "nemo-relay-atif-{session_id}.json")
    try:
        _check_template(template)
    except (TypeError, ValueError) as exc:
        c.error("atif.filename_template", str(exc).removeprefix("nemoflow: "),
                "unsupported_value")
    if c.items(atif, "storage", "atif"):
        c.by_policy("unsupported_value", "atif.storage", "remote ATIF storage (S3, HTTP) is "
                    "not supported by nemoflow; ATIF files are written to output_directory",
                    "unsupported_value")
    if not enabled:
        return []
    kwargs["filename"] = template
    return [("observability.atif", lambda: AtifFileExporter(directory, **kwargs))]


def _validate_otel(c: _Checker, section: object) -> list:
    otel = c.table(section, "opentelemetry", _OTEL_FIELDS)
    if not otel:
        return []
    enabled = c.get(otel, "enabled", "opentelemetry", bool, False)
    for signal in ("logs", "metrics"):
        part = c.get(otel, signal, "opentelemetry", dict, None)
        if part and part.get("enabled"):
            c.by_policy("unsupported_value", f"opentelemetry.{signal}", f"OTLP {signal} are "
                        "not exported by nemoflow (spans are)", "unsupported_value")
    endpoints = c.items(otel, "endpoints", "opentelemetry")
    plan = []
    for i, raw in enumerate(endpoints):
        path = f"opentelemetry.endpoints[{i}]"
        if not isinstance(raw, dict):
            c.error(path, f"must be a table, got {_tname(raw)}")
            continue
        config = _validate_endpoint(c, raw, path)
        if config is not None:
            plan.append((f"observability.{path}",
                         lambda config=config: OpenTelemetrySubscriber(config)))
    if enabled and not endpoints:
        c.error("opentelemetry.endpoints", "enabled OpenTelemetry section requires at least "
                "one endpoint", "unsupported_value")
    return plan if enabled else []


def _validate_endpoint(c: _Checker, raw: dict, path: str) -> OpenTelemetryConfig | None:
    c.table(raw, path, _ENDPOINT_FIELDS)
    before = len(c.findings.errors())
    kind = c.choice(raw, "type", path, ("full", "gen_ai", "openinference"), None, True)
    endpoint = c.get(raw, "endpoint", path, str, None, required=True)
    transport = c.get(raw, "transport", path, str, "http_binary")
    if transport != "http_binary":
        c.by_policy("unsupported_value", f"{path}.transport", f"transport {transport!r} is not "
                    "supported by nemoflow; use 'http_binary'", "unsupported_value")
    options = {
        "mark_projection": c.choice(raw, "mark_projection", path, ("inherit", "event", "tool"),
                                    "inherit"),
        "mark_exclude_names": c.str_list(raw, "mark_exclude_names", path, ["llm.chunk"]),
        "service_name": c.get(raw, "service_name", path, str, "unknown_service"),
        "service_namespace": c.get(raw, "service_namespace", path, str, None),
        "service_version": c.get(raw, "service_version", path, str, None),
        "instrumentation_scope": c.get(raw, "instrumentation_scope", path, str,
                                       "opentelemetry"),
        "timeout_millis": c.int_(raw, "timeout_millis", path, 1, 3000),
        "headers": c.str_map(raw, "headers", path),
        "header_env": c.str_map(raw, "header_env", path),
        "resource_attributes": c.str_map(raw, "resource_attributes", path),
        "max_queue_size": c.int_(raw, "max_queue_size", path, 1, None),
        "max_export_batch_size": c.int_(raw, "max_export_batch_size", path, 1, None),
        "scheduled_delay_millis": c.int_(raw, "scheduled_delay_millis", path, 0, None),
        "promote_metadata_prefixes": c.str_list(raw, "promote_metadata_prefixes", path, []),
    }
    mappings = c.items(raw, "attribute_mappings", path)
    for j, m in enumerate(mappings):
        if not isinstance(m, dict) or not all(isinstance(v, str) for v in m.values()):
            c.error(f"{path}.attribute_mappings[{j}]", "must be a table of strings")
            mappings = []
            break
    options["attribute_mappings"] = mappings
    c.int_(raw, "completed_span_context_ttl_millis", path, 0, None)  # no such cache here
    for unsupported in ("promote_resource_metadata_prefixes", "header_file"):
        if raw.get(unsupported):
            c.by_policy("unsupported_value", f"{path}.{unsupported}", f"{unsupported} is not "
                        "supported by nemoflow", "unsupported_value")
    if len(c.findings.errors()) != before or kind is None or endpoint is None:
        return None
    try:  # the checks only a built configuration makes: the endpoint, header_env variables …
        return OpenTelemetryConfig(kind, endpoint, **options)
    except (TypeError, ValueError) as exc:
        c.error(path, str(exc))
        return None


# --- plugins and their registrations ------------------------------------------------------


class Plugin(Protocol):
    """A component kind: ``validate(config)`` returns diagnostics (or None), ``register(config,
    context)`` installs its middleware and subscribers through ``context``."""

    def validate(self, plugin_config: JsonObject) -> list[ConfigDiagnostic] | None:
        """Diagnostics for one component's ``config``; errors block ``initialize``."""
        ...

    def register(self, plugin_config: JsonObject, context: PluginContext) -> None:
        """Install the component; an exception rolls the whole configuration back."""
        ...


class _Registration:
    __slots__ = ("attach", "detach", "close", "attached")

    def __init__(self, attach: Callable[[], object], detach: Callable[[], object],
                 close: Callable[[], object] | None = None):
        self.attach = attach
        self.detach = detach
        self.close = close
        self.attached = False


def _exporter_registration(exporter: Any, name: str) -> _Registration:
    return _Registration(lambda: exporter.register(name), lambda: exporter.deregister(name),
                         exporter.shutdown)


class PluginContext:
    """What a component's ``register`` installs through; names are scoped to the component
    (``<kind>.<name>``) and everything is removed when the configuration is cleared."""

    def __init__(self, kind: str, activation: Activation):
        self._kind = kind
        self._activation = activation

    def _name(self, name: str) -> str:
        if not isinstance(name, str) or not name:
            raise TypeError(f"a registration name must be a nonempty str, not {name!r}")
        return f"{self._kind}.{name}"

    def _add(self, register: Callable[..., object], deregister: Callable[[str], object],
             name: str, *args: Any) -> None:
        scoped = self._name(name)
        self._activation._add(_Registration(lambda: register(scoped, *args),
                                            lambda: deregister(scoped)))

    def register_subscriber(self, name: str, callback: Callable[[Any], None]) -> None:
        """A global subscriber for this component."""
        self._add(subscribers.register, subscribers.deregister, name, callback)

    def register_tool_sanitize_request_guardrail(self, name, priority, callback) -> None:
        """A tool request sanitizer for this component."""
        self._add(guardrails.register_tool_sanitize_request,
                  guardrails.deregister_tool_sanitize_request, name, priority, callback)

    def register_tool_sanitize_response_guardrail(self, name, priority, callback) -> None:
        """A tool response sanitizer for this component."""
        self._add(guardrails.register_tool_sanitize_response,
                  guardrails.deregister_tool_sanitize_response, name, priority, callback)

    def register_tool_conditional_execution_guardrail(self, name, priority, callback) -> None:
        """A tool conditional-execution guardrail for this component."""
        self._add(guardrails.register_tool_conditional_execution,
                  guardrails.deregister_tool_conditional_execution, name, priority, callback)

    def register_llm_sanitize_request_guardrail(self, name, priority, callback) -> None:
        """An LLM request sanitizer for this component."""
        self._add(guardrails.register_llm_sanitize_request,
                  guardrails.deregister_llm_sanitize_request, name, priority, callback)

    def register_llm_sanitize_response_guardrail(self, name, priority, callback) -> None:
        """An LLM response sanitizer for this component."""
        self._add(guardrails.register_llm_sanitize_response,
                  guardrails.deregister_llm_sanitize_response, name, priority, callback)

    def register_llm_conditional_execution_guardrail(self, name, priority, callback) -> None:
        """An LLM conditional-execution guardrail for this component."""
        self._add(guardrails.register_llm_conditional_execution,
                  guardrails.deregister_llm_conditional_execution, name, priority, callback)

    def register_llm_request_intercept(self, name, priority, break_chain, callback) -> None:
        """An LLM request intercept for this component."""
        self._add(intercepts.register_llm_request, intercepts.deregister_llm_request, name,
                  priority, break_chain, callback)

    def register_llm_execution_intercept(self, name, priority, callback) -> None:
        """An LLM execution intercept for this component."""
        self._add(intercepts.register_llm_execution, intercepts.deregister_llm_execution,
                  name, priority, callback)

    def register_llm_stream_execution_intercept(self, name, priority, callback) -> None:
        """An LLM stream execution intercept for this component."""
        self._add(intercepts.register_llm_stream_execution,
                  intercepts.deregister_llm_stream_execution, name, priority, callback)

    def register_tool_request_intercept(self, name, priority, break_chain, callback) -> None:
        """A tool request intercept for this component."""
        self._add(intercepts.register_tool_request, intercepts.deregister_tool_request, name,
                  priority, break_chain, callback)

    def register_tool_execution_intercept(self, name, priority, callback) -> None:
        """A tool execution intercept for this component."""
        self._add(intercepts.register_tool_execution, intercepts.deregister_tool_execution,
                  name, priority, callback)


class Activation:
    """The active configuration: its ``report``, the ``exporters`` it started (by
    registration name) and ``close()``, which is ``clear()`` while it is the active one."""

    def __init__(self, report: ConfigReport):
        self.report = report
        self.exporters: dict[str, Any] = {}
        self._registrations: list[_Registration] = []
        self._closed = False

    @property
    def is_active(self) -> bool:
        """Whether this is the configuration in force."""
        return _active is self

    def _add(self, reg: _Registration) -> None:
        self._registrations.append(reg)
        reg.attach()
        reg.attached = True

    def _detach(self) -> None:
        for reg in reversed(self._registrations):
            if reg.attached:
                reg.attached = False
                reg.detach()

    def _reattach(self) -> None:
        for reg in self._registrations:
            if not reg.attached:
                reg.attach()
                reg.attached = True

    def _shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        errors = []
        for reg in reversed(self._registrations):
            try:
                if reg.attached:
                    reg.attached = False
                    reg.detach()
                if reg.close is not None:
                    reg.close()
            except Exception as exc:  # the rest are still removed
                errors.append(exc)
        if errors:
            warnings.warn(f"nemoflow: clearing the plugin configuration: {errors[0]}",
                          RuntimeWarning, stacklevel=3)

    def close(self) -> None:
        """Remove this configuration's registrations and stop its exporters."""
        with _lock:
            global _active
            if _active is self:
                _active = None
        self._shutdown()

    async def aclose(self) -> None:
        """``close()`` without blocking the event loop."""
        await asyncio.to_thread(self.close)

    def __repr__(self):
        state = "active" if self.is_active else "closed" if self._closed else "inactive"
        return f"<plugin.Activation {state}: {sorted(self.exporters)}>"


class _Observability:
    """The built-in ``observability`` kind (validated and started by the host itself)."""

    def validate(self, plugin_config: JsonObject) -> list[ConfigDiagnostic] | None:
        findings = _Findings()
        _validate_observability(_Checker(findings, OBSERVABILITY_PLUGIN_KIND, "config",
                                         dict(_DEFAULT_POLICY)), dict(plugin_config))
        return [d for d, _ in findings.items]

    def register(self, plugin_config: JsonObject, context: PluginContext) -> None:
        raise InvalidArgumentError("the observability component is started by "
                                   "plugin.initialize()")


_DEFAULT_POLICY = ConfigPolicy().to_dict()
_lock = threading.RLock()
_kinds: dict[str, Any] = {OBSERVABILITY_PLUGIN_KIND: _Observability()}
_active: Activation | None = None


def _check(doc: dict, extra: list) -> tuple[_Findings, list]:
    """Every finding for the document and the plan: ``(index, kind, config, exporters)``."""
    findings = _Findings()
    findings.items.extend(extra)
    host = _Checker(findings, "plugin", "", dict(_DEFAULT_POLICY))
    policy = host.table(doc.get("policy"), "policy", ("unknown_component", "unknown_field",
                                                      "unsupported_value")) or {}
    host.policy = {k: host.choice(policy, k, "policy", _BEHAVIORS, _DEFAULT_POLICY[k])
                   for k in _DEFAULT_POLICY}
    host.table(doc, "", ("version", "components", "policy"))
    version = host.get(doc, "version", "", int, 1)
    if version != 1:
        findings.add("error", "plugin.unsupported_config_version",
                     f"version: plugin config version {version} is unsupported (use 1)",
                     "version", field="version")
    plan = []
    seen: set = set()
    for i, comp in enumerate(host.items(doc, "components", "")):
        where = f"components[{i}]"
        if not isinstance(comp, dict):
            host.error(where, f"must be a table, got {_tname(comp)}")
            continue
        host.table(comp, where, ("kind", "enabled", "config"))
        kind = host.get(comp, "kind", where, str, None, required=True)
        enabled = host.get(comp, "enabled", where, bool, True)
        config = host.get(comp, "config", where, dict, {})
        if kind is None:
            continue
        impl = _kinds.get(kind)
        if impl is None:
            host.by_policy("unknown_component", f"{where}.kind",
                           f"plugin component kind '{kind}' is unsupported",
                           "unknown_component", kind)
            continue
        if kind in seen:
            findings.add("error", "plugin.duplicate_component",
                         f"{where}: plugin component kind '{kind}' may only appear once",
                         where, kind)
            continue
        seen.add(kind)
        base = f"{where}.config"
        if kind == OBSERVABILITY_PLUGIN_KIND:
            checker = _Checker(findings, kind, base, dict(host.policy))
            exporters = _validate_observability(checker, config)
        else:
            exporters = []
            _custom_findings(findings, impl, kind, config, base)
        if enabled:
            plan.append((i, kind, config, exporters))
    return findings, plan


def _custom_findings(findings: _Findings, impl: Any, kind: str, config: dict,
                     base: str) -> None:
    try:
        found = impl.validate(config)
    except Exception as exc:
        findings.add("error", "plugin.validate_failed", f"{base}: the {kind} plugin's "
                     f"validate() raised {type(exc).__name__}: {exc}", base, kind)
        return
    for diag in found or ():
        level = diag.get("level") if isinstance(diag, dict) else None
        if level not in ("warning", "error") or not isinstance(diag.get("message"), str):
            findings.add("error", "plugin.invalid_diagnostic", f"{base}: the {kind} plugin's "
                         f"validate() returned a malformed diagnostic: {diag!r}", base, kind)
            continue
        out = {"code": str(diag.get("code", f"{kind}.invalid_config")), **diag}
        out.setdefault("component", kind)
        path = out.get("field")
        findings.items.append((out, f"{base}.{path}" if path else base))


def _report(findings: _Findings) -> ConfigReport:
    return {"diagnostics": [cast(ConfigDiagnostic, d) for d, _ in findings.items]}


def _raise_for_errors(findings: _Findings) -> None:
    errors = findings.errors()
    if errors:
        details = "; ".join(_located(d, w) for d, w in errors)
        raise PluginConfigError(f"invalid plugin configuration: {details}",
                                _report(findings)["diagnostics"])


def _located(diag: dict, where: str) -> str:
    message = diag["message"]
    # messages start with the field's path inside its component; lead with the full path
    field = diag.get("field")
    if field and message.startswith(f"{field}: "):
        message = message[len(field) + 2:]
    elif where and message.startswith(f"{where}: "):
        message = message[len(where) + 2:]
    return f"{where}: {message}" if where else message


def _warn(findings: _Findings) -> None:
    for diag, where in findings.items:
        if diag["level"] == "warning":
            warnings.warn(f"nemoflow: plugin configuration: {_located(diag, where)}",
                          RuntimeWarning, stacklevel=4)


def validate(config: PluginConfig | JsonObject | str | os.PathLike[str] | None = None,
             additional_plugins_toml: str | os.PathLike[str] | None = None) -> ConfigReport:
    """Check a configuration without changing anything: every finding, as a report."""
    try:
        doc, extra = _document(config, additional_plugins_toml)
    except PluginConfigError as exc:
        return {"diagnostics": exc.diagnostics}
    findings, _ = _check(doc, extra)
    return _report(findings)


def _initialize(config: object, plugins_toml: object) -> Activation:
    global _active
    doc, extra = _document(config, plugins_toml)
    findings, plan = _check(doc, extra)
    _raise_for_errors(findings)
    with _lock:
        old = _active
        new = Activation(_report(findings))
        if old is not None:
            old._detach()
        try:
            for index, kind, comp_config, exporters in plan:
                where = f"components[{index}] ({kind})"
                if kind == OBSERVABILITY_PLUGIN_KIND:
                    for name, build in exporters:
                        try:
                            exporter = build()
                        except Exception as exc:
                            raise PluginActivationError(
                                f"{where}: {name.removeprefix('observability.')} could not "
                                f"be started: {exc}") from exc
                        new.exporters[name] = exporter
                        new._add(_exporter_registration(exporter, name))
                    continue
                try:
                    _kinds[kind].register(comp_config, PluginContext(kind, new))
                except Exception as exc:
                    raise PluginActivationError(f"{where}: register() failed: "
                                                f"{type(exc).__name__}: {exc}") from exc
        except BaseException:
            new._shutdown()
            if old is not None:
                old._reattach()
            raise
        _active = new
    if old is not None:
        old._shutdown()
    _warn(findings)
    return new


async def initialize(config: PluginConfig | JsonObject | str | os.PathLike[str] | None = None,
                     additional_plugins_toml: str | os.PathLike[str] | None = None
                     ) -> ConfigReport:
    """Validate and start a configuration (a dict, ``PluginConfig`` or ``plugins.toml`` path)."""
    activation = await asyncio.to_thread(_initialize, config, additional_plugins_toml)
    return activation.report


def clear() -> None:
    """Remove the active configuration's registrations and stop its exporters."""
    global _active
    with _lock:
        old, _active = _active, None
    if old is not None:
        old._shutdown()


def report() -> ConfigReport | None:
    """The active configuration's report, or None when none is active."""
    active = _active
    return None if active is None else active.report


def list_kinds() -> list[str]:
    """The registered component kinds, sorted (``observability`` among them)."""
    with _lock:
        return sorted(_kinds)


def register(plugin_kind: str, plugin: Plugin) -> None:
    """Add a component kind; ``AlreadyExistsError`` if the kind is taken."""
    if not isinstance(plugin_kind, str) or not plugin_kind:
        raise TypeError(f"plugin_kind must be a nonempty str, not {plugin_kind!r}")
    for method in ("validate", "register"):
        if not callable(getattr(plugin, method, None)):
            raise TypeError(f"a plugin needs a {method}() method; {type(plugin).__name__} "
                            "has none")
    with _lock:
        if plugin_kind in _kinds:
            raise AlreadyExistsError(f"already exists: plugin kind '{plugin_kind}' is already "
                                     "registered")
        _kinds[plugin_kind] = plugin


def deregister(plugin_kind: str) -> bool:
    """Remove a component kind (active components keep running until ``clear()``)."""
    if plugin_kind == OBSERVABILITY_PLUGIN_KIND:
        raise InvalidArgumentError("invalid argument: the observability kind is built in")
    with _lock:
        return _kinds.pop(plugin_kind, None) is not None


class _PluginScope:
    """``with plugin(config):`` / ``async with plugin(config):``: a configuration in force
    for the block, cleared at its end."""

    def __init__(self, config: object, plugins_toml: object):
        self._config = config
        self._toml = plugins_toml
        self._activation: Activation | None = None

    def __enter__(self) -> Activation:
        self._activation = _initialize(self._config, self._toml)
        return self._activation

    def __exit__(self, *exc_info: object) -> None:
        if self._activation is not None:
            self._activation.close()

    async def __aenter__(self) -> Activation:
        self._activation = await asyncio.to_thread(_initialize, self._config, self._toml)
        return self._activation

    async def __aexit__(self, *exc_info: object) -> None:
        if self._activation is not None:
            await self._activation.aclose()


def plugin(config: PluginConfig | JsonObject | str | os.PathLike[str] | None = None,
           plugins_toml: str | os.PathLike[str] | None = None) -> _PluginScope:
    """``with`` / ``async with``: ``config`` in force for the block, cleared at its end."""
    return _PluginScope(config, plugins_toml)


def activate(config: PluginConfig | JsonObject | str | os.PathLike[str] | None = None,
             additional_plugins_toml: str | os.PathLike[str] | None = None) -> _PluginScope:
    """``plugin(...)`` under the current reference's name (``async with activate(...)``)."""
    return _PluginScope(config, additional_plugins_toml)
