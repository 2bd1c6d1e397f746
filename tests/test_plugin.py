"""NeMo Flow programs configuring nemoflow through ``nemo_flow.plugin``, on both cores.

A ``plugins.toml`` (or a dict, or ``PluginConfig``) turns on the ATOF, ATIF and OpenTelemetry
exporters through the built-in ``observability`` component; custom kinds install middleware.
An invalid document raises ``PluginConfigError`` naming each bad field and changes nothing; a
component that fails to start rolls the whole configuration back.
"""

from __future__ import annotations

import asyncio
import json
import warnings

import pytest
from otlp_collector import Collector


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def nemo_flow(nf):
    nf.plugin.clear()
    kinds = set(nf.plugin.list_kinds())
    yield nf
    nf.plugin.clear()
    for kind in set(nf.plugin.list_kinds()) - kinds:
        nf.plugin.deregister(kind)


@pytest.fixture
def collector():
    c = Collector()
    yield c
    c.close()


def agent_run(nemo_flow):
    async def main():
        with nemo_flow.scope.scope("planner", nemo_flow.ScopeType.Agent,
                                   metadata={"session_id": "s-1"}):
            await nemo_flow.tools.execute("search", {"q": "hi"}, lambda a: {"hits": 1})
            await nemo_flow.llm.execute(
                "model", nemo_flow.LLMRequest({}, {"messages": [{"role": "user",
                                                                "content": "hi"}]}),
                lambda r: {"choices": [{"message": {"role": "assistant", "content": "yo"}}]})
    run(main())


PLUGINS_TOML = """
version = 1

[[components]]
kind = "observability"
enabled = true

[components.config]
version = 4

[components.config.atof]
enabled = true
[[components.config.atof.sinks]]
type = "file"
output_directory = "{dir}/atof"
filename = "events.jsonl"
mode = "overwrite"

[components.config.atif]
enabled = true
output_directory = "{dir}/atif"
filename_template = "trajectory-{{session_id}}.json"
agent_name = "Demo Agent"
agent_version = "1.2"

[components.config.opentelemetry]
enabled = true
[[components.config.opentelemetry.endpoints]]
type = "openinference"
endpoint = "{url}/v1/traces"
service_name = "demo-service"
timeout_millis = 2000
"""


def write_toml(tmp_path, collector):
    path = tmp_path / "plugins.toml"
    path.write_text(PLUGINS_TOML.format(dir=tmp_path, url=collector.url))
    return path


def check_all_three(tmp_path, collector):
    lines = (tmp_path / "atof" / "events.jsonl").read_text().splitlines()
    names = [json.loads(line)["name"] for line in lines]
    assert names == ["planner", "search", "search", "model", "model", "planner"]
    trajectory = json.loads((tmp_path / "atif" / "trajectory-s-1.json").read_text())
    assert trajectory["agent"]["name"] == "Demo Agent"
    assert trajectory["agent"]["version"] == "1.2"
    assert trajectory["session_id"] == "s-1"
    spans = collector.spans()
    assert sorted(s.name for s in spans) == ["model", "planner", "search"]
    resource = collector.resource_spans()[0].resource
    attrs = {a.key: a.value.string_value for a in resource.attributes}
    assert attrs["service.name"] == "demo-service"


def test_plugins_toml_turns_on_atof_atif_and_opentelemetry(nemo_flow, tmp_path, collector):
    path = write_toml(tmp_path, collector)
    report = run(nemo_flow.plugin.initialize(str(path)))
    assert report == {"diagnostics": []}
    assert nemo_flow.plugin.report() == report
    assert set(nemo_flow.diagnostics()["exporters"]) >= {
        "observability.atof.sinks[0]", "observability.atif",
        "observability.opentelemetry.endpoints[0]"}
    agent_run(nemo_flow)
    nemo_flow.plugin.clear()  # stops the exporters: everything is written and exported
    assert nemo_flow.plugin.report() is None
    check_all_three(tmp_path, collector)
    assert not any(n.startswith("observability.") for n in nemo_flow.diagnostics()["exporters"])


def test_plugin_context_manager_sync_and_async(nemo_flow, tmp_path, collector):
    path = write_toml(tmp_path, collector)
    with nemo_flow.plugin.plugin(path) as activation:
        assert activation.is_active
        assert sorted(activation.exporters) == [
            "observability.atif", "observability.atof.sinks[0]",
            "observability.opentelemetry.endpoints[0]"]
        agent_run(nemo_flow)
    assert not activation.is_active and nemo_flow.plugin.report() is None
    check_all_three(tmp_path, collector)

    async def main():
        async with nemo_flow.plugin.activate(path) as active:
            assert nemo_flow.plugin.report() is active.report
        return active

    assert not run(main()).is_active


def test_dataclass_config_equals_the_dict(nemo_flow, tmp_path):
    plugin = nemo_flow.plugin
    config = plugin.PluginConfig(components=[plugin.ComponentSpec(
        "observability", config={"atof": {"enabled": True, "sinks": [
            {"type": "file", "output_directory": str(tmp_path), "filename": "a.jsonl"}]}})])
    assert config.to_dict()["components"][0]["kind"] == "observability"
    assert plugin.validate(config) == plugin.validate(config.to_dict()) == {"diagnostics": []}
    run(plugin.initialize(config))
    nemo_flow.mark("hello")
    plugin.clear()
    assert json.loads((tmp_path / "a.jsonl").read_text())["name"] == "hello"


def test_programmatic_config_merges_over_the_file(nemo_flow, tmp_path, collector):
    path = write_toml(tmp_path, collector)
    override = {"components": [{"kind": "observability", "config": {
        "atif": {"enabled": False}, "opentelemetry": {"enabled": False}}}]}
    with nemo_flow.plugin.plugin(override, path) as activation:
        assert list(activation.exporters) == ["observability.atof.sinks[0]"]


def test_unknown_fields_warn_and_a_missing_file_is_reported(nemo_flow, tmp_path):
    config = {"components": [{"kind": "observability", "config": {
        "atof": {"enabled": False, "sinks": [], "colour": "red"}}}]}
    with pytest.warns(RuntimeWarning, match=r"components\[0\]\.config\.atof\.colour: field "
                      "'colour' is not recognized for 'atof'"):
        report = run(nemo_flow.plugin.initialize(config))
    assert report["diagnostics"] == [{
        "level": "warning", "code": "observability.unknown_field", "component": "observability",
        "field": "atof.colour", "message": "atof.colour: field 'colour' is not recognized for "
                                           "'atof'"}]
    missing = tmp_path / "nope.toml"
    diagnostics = nemo_flow.plugin.validate({}, missing)["diagnostics"]
    assert diagnostics[0]["code"] == "plugin.configuration_file_missing"
    assert str(missing) in diagnostics[0]["message"]
    # named as the configuration itself, a missing file is an error: nothing is replaced
    with pytest.raises(nemo_flow.plugin.PluginConfigError,
                       match=rf"plugin configuration file does not exist: {missing}"):
        run(nemo_flow.plugin.initialize(missing))
    assert nemo_flow.plugin.report() is report


# --------------------------------------------------------------------------------------------
# invalid configurations: one clear, typed error naming the field


def obs(config):
    return {"version": 1, "components": [{"kind": "observability", "config": config}]}


INVALID = [
    ({"version": 2}, r"^invalid plugin configuration: version: plugin config version 2 is "
                     r"unsupported \(use 1\)$"),
    ({"components": {}}, r"components: must be an array, got a table"),
    ({"components": [{"config": {}}]}, r"components\[0\]\.kind: is required"),
    ({"components": [{"kind": "observability", "enabled": "yes"}]},
     r"components\[0\]\.enabled: must be a boolean, got a string"),
    ({"components": [{"kind": "mystery"}], "policy": {"unknown_component": "error"}},
     r"components\[0\]\.kind: plugin component kind 'mystery' is unsupported"),
    ({"policy": {"unknown_field": "loud"}},
     r"policy\.unknown_field: must be 'ignore', 'warn' or 'error', got 'loud'"),
    ({"components": [{"kind": "observability"}, {"kind": "observability"}]},
     r"components\[1\]: plugin component kind 'observability' may only appear once"),
    (obs({"version": 1}), r"components\[0\]\.config\.version: observability config version 1 "
                          r"is unsupported; use version 4"),
    (obs({"atof": {"enabled": True, "sinks": [{"type": "file", "mode": "rotate"}]}}),
     r"components\[0\]\.config\.atof\.sinks\[0\]\.mode: must be 'append' or 'overwrite', got "
     r"'rotate'"),
    (obs({"atof": {"enabled": True}}),
     r"components\[0\]\.config\.atof\.sinks: ATOF requires at least one configured sink"),
    (obs({"atof": {"enabled": True, "output_directory": "x", "sinks": [{"type": "file"}]}}),
     r"atof\.output_directory: ATOF output_directory was removed in observability config "
     r"version 2; configure typed ATOF sinks instead"),
    (obs({"atof": {"enabled": True, "sinks": [{"type": "stream", "url": "http://x"}]}}),
     r"atof\.sinks\[0\]\.type: ATOF stream sinks are not supported by nemoflow"),
    (obs({"atof": {"enabled": 1}}), r"atof\.enabled: must be a boolean, got an integer"),
    (obs({"atif": {"enabled": True, "filename_template": "../{session_id}.json"}}),
     r"atif\.filename_template: .*not a safe file name"),
    (obs({"atif": {"enabled": True, "agent_name": 3}}),
     r"atif\.agent_name: must be a string, got an integer"),
    (obs({"opentelemetry": {"enabled": True}}),
     r"opentelemetry\.endpoints: enabled OpenTelemetry section requires at least one "
     r"endpoint"),
    (obs({"opentelemetry": {"enabled": True, "endpoints": [{"type": "full"}]}}),
     r"opentelemetry\.endpoints\[0\]\.endpoint: is required"),
    (obs({"opentelemetry": {"enabled": True, "endpoints": [
        {"type": "zipkin", "endpoint": "http://x"}]}}),
     r"endpoints\[0\]\.type: must be 'full', 'gen_ai' or 'openinference', got 'zipkin'"),
    (obs({"opentelemetry": {"enabled": True, "endpoints": [
        {"type": "full", "endpoint": "http://x", "transport": "grpc"}]}}),
     r"endpoints\[0\]\.transport: transport 'grpc' is not supported by nemoflow"),
    (obs({"opentelemetry": {"enabled": True, "endpoints": [
        {"type": "full", "endpoint": "http://x", "timeout_millis": 0}]}}),
     r"endpoints\[0\]\.timeout_millis: must be >= 1, got 0"),
    (obs({"opentelemetry": {"enabled": True, "endpoints": [
        {"type": "full", "endpoint": "http://x", "headers": {"x-key": 5}}]}}),
     r"endpoints\[0\]\.headers\.x-key: must be a string, got an integer"),
    (obs({"opentelemetry": {"enabled": True, "endpoints": [
        {"type": "full", "endpoint": "http://x",
         "header_env": {"authorization": "NEMOFLOW_TEST_UNSET_VARIABLE"}}]}}),
     r"endpoints\[0\]: invalid OTLP header \"authorization\": environment variable "
     r"\"NEMOFLOW_TEST_UNSET_VARIABLE\" is not set"),
    (obs({"policy": {"unknown_field": "error"}, "atof": {"enabld": True}}),
     r"components\[0\]\.config\.atof\.enabld: field 'enabld' is not recognized for 'atof'"),
]


@pytest.mark.parametrize(("config", "message"), INVALID)
def test_invalid_configuration_names_the_field(nemo_flow, config, message):
    with pytest.raises(nemo_flow.plugin.PluginConfigError, match=message) as caught:
        run(nemo_flow.plugin.initialize(config))
    assert isinstance(caught.value, ValueError) and isinstance(caught.value,
                                                               nemo_flow.NemoFlowError)
    assert any(d["level"] == "error" for d in caught.value.diagnostics)
    assert nemo_flow.plugin.report() is None
    # validate() reports the same findings without raising
    assert nemo_flow.plugin.validate(config)["diagnostics"] == caught.value.diagnostics


def test_every_error_is_listed_at_once(nemo_flow):
    config = obs({"atof": {"enabled": True, "sinks": [{"type": "file", "mode": "x"}]},
                  "atif": {"enabled": "no"}})
    with pytest.raises(nemo_flow.plugin.PluginConfigError) as caught:
        run(nemo_flow.plugin.initialize(config))
    assert str(caught.value).count("components[0].config.") == 2
    assert [d["field"] for d in caught.value.diagnostics] == ["atof.sinks[0].mode",
                                                              "atif.enabled"]


def test_invalid_toml_names_the_file(nemo_flow, tmp_path):
    path = tmp_path / "plugins.toml"
    path.write_text("version = 1\n[[components]\n")
    with pytest.raises(nemo_flow.plugin.PluginConfigError,
                       match=rf"invalid plugin TOML in {path}: .*line 2"):
        run(nemo_flow.plugin.initialize(path))


# --------------------------------------------------------------------------------------------
# nothing half-applied


def atof_config(directory, filename="events.jsonl"):
    return obs({"atof": {"enabled": True, "sinks": [
        {"type": "file", "output_directory": str(directory), "filename": filename}]}})


def marks(path):
    return [json.loads(line)["name"] for line in open(path)]


def test_an_invalid_configuration_leaves_the_active_one_in_force(nemo_flow, tmp_path):
    run(nemo_flow.plugin.initialize(atof_config(tmp_path / "a")))
    before = nemo_flow.plugin.report()
    nemo_flow.mark("one")
    bad = atof_config(tmp_path / "b")
    bad["components"][0]["config"]["atif"] = {"enabled": True, "agent_name": None,
                                              "model_name": 7}
    with pytest.raises(nemo_flow.plugin.PluginConfigError, match=r"atif\.model_name"):
        run(nemo_flow.plugin.initialize(bad))
    nemo_flow.mark("two")
    assert nemo_flow.plugin.report() is before
    nemo_flow.plugin.clear()
    assert marks(tmp_path / "a" / "events.jsonl") == ["one", "two"]
    assert not (tmp_path / "b").exists()  # nothing of the refused configuration was made


def test_a_component_that_fails_to_start_rolls_everything_back(nemo_flow, tmp_path, collector):
    run(nemo_flow.plugin.initialize(atof_config(tmp_path / "a")))
    seen = []

    class Recorder:
        def validate(self, config):
            return None

        def register(self, config, context):
            context.register_subscriber("seen", seen.append)
            context.register_tool_request_intercept("tag", 1, False,
                                                    lambda n, a: {**a, "tagged": True})
            if config.get("fail"):
                raise OSError("disk on fire")

    nemo_flow.plugin.register("recorder", Recorder())
    blocker = tmp_path / "file"
    blocker.write_text("")
    doomed = {"components": [
        {"kind": "recorder", "config": {}},
        {"kind": "observability", "config": {
            "opentelemetry": {"enabled": True, "endpoints": [
                {"type": "full", "endpoint": f"{collector.url}/v1/traces"}]},
            # a directory under a regular file: the sink cannot be opened
            "atof": {"enabled": True, "sinks": [
                {"type": "file", "output_directory": str(blocker / "sub")}]}}}]}
    with pytest.raises(nemo_flow.plugin.PluginActivationError,
                       match=r"components\[1\] \(observability\): atof\.sinks\[0\] could not "
                             r"be started"):
        run(nemo_flow.plugin.initialize(doomed))
    failing = {"components": [{"kind": "recorder", "config": {"fail": True}}]}
    with pytest.raises(nemo_flow.plugin.PluginActivationError,
                       match=r"components\[0\] \(recorder\): register\(\) failed: OSError: "
                             r"disk on fire"):
        run(nemo_flow.plugin.initialize(failing))

    # the first configuration is still in force, and nothing of the failed ones is left
    exporters = nemo_flow.diagnostics()["exporters"]
    assert "observability.atof.sinks[0]" in exporters
    assert "observability.opentelemetry.endpoints[0]" not in exporters
    got = run(nemo_flow.tools.execute("t", {"a": 1}, lambda a: a))
    assert got == {"a": 1} and seen == []
    nemo_flow.plugin.clear()
    assert marks(tmp_path / "a" / "events.jsonl") == ["t", "t"]
    assert collector.spans() == []


def test_replacing_a_configuration(nemo_flow, tmp_path):
    run(nemo_flow.plugin.initialize(atof_config(tmp_path / "a")))
    nemo_flow.mark("first")
    run(nemo_flow.plugin.initialize(atof_config(tmp_path / "b")))
    nemo_flow.mark("second")
    nemo_flow.plugin.clear()
    assert marks(tmp_path / "a" / "events.jsonl") == ["first"]
    assert marks(tmp_path / "b" / "events.jsonl") == ["second"]


# --------------------------------------------------------------------------------------------
# custom component kinds


class Tagger:
    """A custom kind: validates its config, installs a request intercept and a subscriber."""

    def __init__(self):
        self.events = []

    def validate(self, config):
        if not isinstance(config.get("tag"), str):
            return [{"level": "error", "code": "tagger.missing_tag", "field": "tag",
                     "message": "tag must be a string"}]
        return None

    def register(self, config, context):
        context.register_tool_request_intercept(
            "tag", 10, False, lambda name, args: {**args, "tag": config["tag"]})
        context.register_subscriber("events", self.events.append)


def test_custom_kind_registers_middleware_scoped_to_the_component(nemo_flow):
    plugin = nemo_flow.plugin
    tagger = Tagger()
    plugin.register("tagger", tagger)
    assert plugin.list_kinds() == ["observability", "tagger"]
    with pytest.raises(nemo_flow.AlreadyExistsError, match="plugin kind 'tagger'"):
        plugin.register("tagger", Tagger())
    with pytest.raises(plugin.PluginConfigError,
                       match=r"components\[0\]\.config\.tag: tag must be a string"):
        run(plugin.initialize({"components": [{"kind": "tagger", "config": {}}]}))

    run(plugin.initialize(plugin.PluginConfig(
        components=[plugin.ComponentSpec("tagger", config={"tag": "t1"})])))
    got = run(nemo_flow.tools.execute("tool", {"a": 1}, lambda a: a))
    assert got == {"a": 1, "tag": "t1"}
    assert [e.name for e in tagger.events] == ["tool", "tool"]
    with pytest.raises(nemo_flow.AlreadyExistsError):  # the component's own name
        nemo_flow.subscribers.register("tagger.events", print)

    plugin.clear()
    assert run(nemo_flow.tools.execute("tool", {"a": 1}, lambda a: a)) == {"a": 1}
    assert len(tagger.events) == 2
    assert plugin.deregister("tagger") is True
    assert plugin.deregister("tagger") is False
    with pytest.raises(nemo_flow.InvalidArgumentError, match="built in"):
        plugin.deregister("observability")


def test_disabled_components_are_validated_not_started(nemo_flow, tmp_path):
    tagger = Tagger()
    nemo_flow.plugin.register("tagger", tagger)
    with pytest.raises(nemo_flow.plugin.PluginConfigError, match="tag must be a string"):
        run(nemo_flow.plugin.initialize({"components": [{"kind": "tagger", "enabled": False}]}))
    config = {"components": [{"kind": "tagger", "enabled": False, "config": {"tag": "x"}}]}
    with nemo_flow.plugin.plugin(config):
        nemo_flow.mark("m")
    assert tagger.events == []


def test_a_plugin_without_the_methods_is_refused(nemo_flow):
    with pytest.raises(TypeError, match=r"a plugin needs a validate\(\) method"):
        nemo_flow.plugin.register("bad", object())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert nemo_flow.plugin.validate({}) == {"diagnostics": []}
