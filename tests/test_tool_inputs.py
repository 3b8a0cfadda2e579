"""The published tools: one input model per tool (server/inputs.py), flattened into the
argument list clients see, with the names, defaults, ranges and annotations of before."""

from __future__ import annotations

import pytest
from leads_server.app import LeadsServer
from leads_server.inputs import TOOL_INPUTS, StartSession
from mcp import Client
from pydantic import ValidationError

pytest_plugins = ("server_fixtures",)
pytestmark = pytest.mark.anyio

REQUIRED = object()
#: every tool's arguments in published order, with their defaults (REQUIRED: none)
ARGUMENTS = {
    "list_catalogs": {"session_id": None},
    "start_session": {
        "dataset": "ap",
        "budget": 15,
        "anonymise": True,
        "seed": 0,
        "epochs": 3,
        "batch_size": None,
    },
    "select_reaction": {
        "session_id": REQUIRED,
        "reaction": REQUIRED,
        "hyperparameters": None,
        "residual": None,
    },
    "select_diffusion": {"session_id": REQUIRED, "template": REQUIRED, "hyperparameters": None},
    "refine_diffusion": {
        "session_id": REQUIRED,
        "candidate_id": REQUIRED,
        "hyperparameters": REQUIRED,
    },
    "modify_diffusion": {
        "session_id": REQUIRED,
        "source": REQUIRED,
        "candidate_id": None,
        "template": None,
    },
    "modify_reaction": {
        "session_id": REQUIRED,
        "source": REQUIRED,
        "candidate_id": None,
        "reaction": None,
    },
    "simplify_diffusion": {
        "session_id": REQUIRED,
        "candidate_id": REQUIRED,
        "template": None,
        "hyperparameters": None,
    },
    "train_candidate": {
        "session_id": REQUIRED,
        "epochs": None,
        "wait": True,
        "learning_rate_scale": 1.0,
        "warm_start": [],
    },
    "query_archive": {"sql": REQUIRED, "max_rows": 200, "session_id": None},
    "wait_candidate": {"candidate_id": REQUIRED, "timeout_s": 45.0},
    "cancel_candidate": {"candidate_id": REQUIRED},
    "get_candidate": {"candidate_id": REQUIRED},
    "finetune_candidate": {
        "session_id": REQUIRED,
        "candidate_id": REQUIRED,
        "epochs": 10,
        "learning_rate_scale": 1.0,
        "warmup_epochs": 0.0,
    },
    "evaluate_candidate": {"session_id": REQUIRED, "candidate_id": REQUIRED, "split": "test"},
    "record_step": {
        "session_id": REQUIRED,
        "thought": REQUIRED,
        "action": REQUIRED,
        "observation": "",
    },
    "list_datasets": {},
    "generate_dataset": {"benchmark": "ap"},
    "import_recording": {
        "name": REQUIRED,
        "mesh": REQUIRED,
        "signals": REQUIRED,
        "times": REQUIRED,
        "lead_field": None,
        "electrodes": None,
        "contact_nodes": None,
        "pacing_sites": None,
    },
}


async def test_tools_publish_schemas_and_honest_annotations(client: Client) -> None:
    tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == set(ARGUMENTS)
    for tool in tools.values():
        assert tool.output_schema and tool.output_schema["type"] == "object", tool.name
        assert tool.input_schema["type"] == "object"
        assert tool.annotations is not None
        assert tool.annotations.destructive_hint is (tool.name == "cancel_candidate")
        assert tool.annotations.open_world_hint is False
        assert tool.title, tool.name
    read_only = {name for name, tool in tools.items() if tool.annotations.read_only_hint}
    assert read_only == {
        "list_catalogs",
        "query_archive",
        "get_candidate",
        "wait_candidate",
        "list_datasets",
    }
    # every tool that is not read-only appends a step or candidate row: not idempotent
    idempotent = {name for name, tool in tools.items() if tool.annotations.idempotent_hint}
    assert idempotent == read_only | {"cancel_candidate", "generate_dataset", "import_recording"}
    budget = tools["start_session"].input_schema["properties"]["budget"]
    assert budget["minimum"] == 1 and budget["default"] == 15
    templates = await client.list_resource_templates()
    uris = {t.uri_template for t in templates.resource_templates}
    assert uris == {
        "catalog://diffusion/{name}",
        "catalog://reaction/{name}",
        "session://{session_id}/reaction/{name}",
        "candidate://{candidate_id}/activation_map.png",
        "candidate://{candidate_id}/training_curves.png",
        "session://{session_id}/summary",
        "candidate://{candidate_id}/weights.pt",
        "viewer://candidate/{candidate_id}",
        "viewer://candidate/{candidate_id}/payload",
        "viewer://session/{session_id}",
        "viewer://session/{session_id}/payload",
    }


async def test_every_tool_publishes_flat_arguments_with_their_defaults(client: Client) -> None:
    tools = [tool for tool in (await client.list_tools()).tools]
    assert [tool.name for tool in tools] == list(ARGUMENTS)  # published in this order
    for tool in tools:
        schema = tool.input_schema
        expected = ARGUMENTS[tool.name]
        assert list(schema["properties"]) == list(expected), tool.name
        required = [name for name, default in expected.items() if default is REQUIRED]
        assert schema.get("required", []) == required, tool.name
        for name, default in expected.items():
            prop = schema["properties"][name]
            assert "$ref" not in prop and "properties" not in prop, (tool.name, name)  # flat
            if default is not REQUIRED:
                assert prop["default"] == default, (tool.name, name)
        # de-indented, one line per paragraph
        assert tool.description == " ".join((TOOL_INPUTS[tool.name].__doc__ or "").split()), (
            tool.name
        )


async def test_argument_ranges_and_descriptions_come_from_the_input_models(
    client: Client,
) -> None:
    tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    start = tools["start_session"].input_schema["properties"]
    assert start["seed"]["maximum"] == 2**31 - 1 and start["epochs"]["maximum"] == 100
    assert start["batch_size"]["anyOf"][0] == {"maximum": 256, "minimum": 1, "type": "integer"}
    assert "generated if missing" in start["dataset"]["description"]
    reaction = tools["select_reaction"].input_schema["properties"]
    assert reaction["session_id"]["maxLength"] == 64 and reaction["reaction"]["minLength"] == 1
    neural = reaction["hyperparameters"]["anyOf"][0]
    assert (
        neural["additionalProperties"] == {"type": "integer"} and "neural" in neural["description"]
    )
    split = tools["evaluate_candidate"].input_schema["properties"]["split"]
    assert split["enum"] == ["train", "val", "test"]
    source = tools["modify_diffusion"].input_schema["properties"]["source"]
    assert source["maxLength"] == 50_000 and "class Diffusion" in source["description"]


async def test_out_of_range_arguments_are_refused_before_the_service(
    client: Client, server: LeadsServer
) -> None:
    for arguments in ({"budget": 0}, {"epochs": 101}, {"batch_size": 0}, {"seed": -1}):
        result = await client.call_tool("start_session", {"dataset": "tiny", **arguments})
        assert result.is_error, arguments
    assert server.service.store.sessions == {}


def test_input_models_hold_the_defaults_and_refuse_unknown_arguments() -> None:
    assert StartSession() == StartSession(
        dataset="ap", budget=15, anonymise=True, seed=0, epochs=3, batch_size=None
    )
    with pytest.raises(ValidationError):
        StartSession(budgets=3)
    assert list(TOOL_INPUTS) == list(ARGUMENTS)
