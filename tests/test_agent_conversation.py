"""The conversation state: repaired turns render to requests the public APIs accept (checked by
the fake endpoints' validators, which refuse what the APIs refuse), old tool results are
compacted, cache breakpoints stay within the API's limit."""

from __future__ import annotations

import json

import pytest
from leads_agent.anthropic_provider import render_messages as anthropic_messages
from leads_agent.conversation import EMPTY_REPLY, Conversation, RequestedCall, ToolOutcome
from leads_agent.openai_provider import render_messages as openai_messages
from llm_api_rules import anthropic_request_error, openai_request_error


def anthropic_body(messages: list[dict], system_marks: int = 1) -> dict:
    system = [{"type": "text", "text": "You are LEADS."}]
    if system_marks:
        system[0]["cache_control"] = {"type": "ephemeral"}
    tool = {"name": "select_reaction", "input_schema": {"type": "object", "properties": {}}}
    return {"model": "m", "max_tokens": 10, "system": system, "tools": [tool], "messages": messages}


def openai_body(messages: list[dict]) -> dict:
    return {"model": "m", "messages": messages}


def hostile_conversation() -> Conversation:
    """Everything real models send, as it arrives."""
    conversation = Conversation(compact_above=100)
    conversation.add_user("Step 1 of 3.", step=1, step_start=True)
    conversation.add_model_turn("", [], step=1)  # empty
    conversation.add_user("Your last reply was empty.", step=1)
    calls = [
        RequestedCall("toolu_1", "select_reaction", {"reaction": "reaction_A"}),
        RequestedCall("bad id!", "select_diffusion", error="arguments are not valid JSON"),
        RequestedCall("toolu_1", "", {}),  # duplicate id, no name
        RequestedCall("toolu_4", "query_archive", "not an object"),  # type: ignore[arg-type]
    ]
    conversation.add_model_turn("  ", calls, step=1)
    conversation.add_tool_results([ToolOutcome(calls[0].call_id, "x" * 500)], step=1)
    conversation.add_model_turn("   \n", [], step=1)  # whitespace only: empty
    conversation.add_user("Step 2 of 3.", step=2, step_start=True)
    conversation.add_model_turn("text only", [], step=2)
    conversation.add_user("No candidate is set up for this step yet.", step=2)
    return conversation


def test_repairs_make_every_turn_valid():
    conversation = hostile_conversation()
    model_turns = [t for t in conversation.turns if hasattr(t, "calls")]
    assert model_turns[0].empty and model_turns[0].text == EMPTY_REPLY
    calls = model_turns[1].calls
    ids = [c.call_id for c in calls]
    assert len(set(ids)) == 4 and all(i.replace("_", "").isalnum() for i in ids)
    assert calls[1].arguments == {} and "not valid JSON" in calls[1].error
    assert calls[2].name == "invalid_tool_name" and "unknown tool ''" in calls[2].error
    assert calls[3].arguments == {} and "JSON object" in calls[3].error
    results = conversation.turns[conversation.turns.index(model_turns[1]) + 1].results
    assert [r.call_id for r in results] == ids  # every call answered, in order
    assert [r.is_error for r in results] == [False, True, True, True]
    assert model_turns[2].text == EMPTY_REPLY
    anthropic = anthropic_body(anthropic_messages(conversation))
    assert anthropic_request_error(anthropic) is None
    assert openai_request_error(openai_body(openai_messages(conversation, "system"))) is None


def test_the_validators_refuse_what_the_apis_refuse():
    """The turns of the issue, stored as they came, are refused (so the tests can fail)."""
    user = {"role": "user", "content": [{"type": "text", "text": "Step 1"}]}
    empty = {"role": "assistant", "content": []}
    assert "non-empty content" in anthropic_request_error(
        anthropic_body([user, empty, {"role": "user", "content": "go on"}])
    )
    spaces = {"role": "assistant", "content": [{"type": "text", "text": "  "}]}
    assert "non-whitespace" in anthropic_request_error(anthropic_body([user, spaces, user]))
    use = {"type": "tool_use", "id": "t1", "name": "select_reaction", "input": "x"}
    bad_input = {"role": "assistant", "content": [use]}
    result = {"type": "tool_result", "tool_use_id": "t1", "content": "ok"}
    after = {"role": "user", "content": [result]}
    assert "valid dict" in anthropic_request_error(anthropic_body([user, bad_input, after]))
    good_use = {"role": "assistant", "content": [{**use, "input": {}}]}
    assert "without `tool_result`" in anthropic_request_error(
        anthropic_body([user, good_use, user])
    )
    text_first = {"role": "user", "content": [{"type": "text", "text": "hi"}, result]}
    assert "must come first" in anthropic_request_error(
        anthropic_body([user, good_use, text_first])
    )
    marked = {"type": "text", "text": "m", "cache_control": {"type": "ephemeral"}}
    many = [{"role": r, "content": [dict(marked)]} for r in ("user", "assistant") * 2]
    assert "maximum of 4" in anthropic_request_error(anthropic_body(many))

    system = {"role": "system", "content": "s"}
    hello = {"role": "user", "content": "hi"}
    assert "got null" in openai_request_error(
        openai_body([system, hello, {"role": "assistant", "content": None}, hello])
    )
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"a": '}}
    answered = {"role": "tool", "tool_call_id": "c", "content": "ok"}
    history = [system, hello, {"role": "assistant", "content": None, "tool_calls": [call]}]
    assert "not a valid JSON" in openai_request_error(openai_body([*history, answered]))
    assert openai_request_error(openai_body([*history, answered]), strict_arguments=False) is None
    unanswered = openai_body([*history, hello])
    assert "did not have response messages" in openai_request_error(unanswered, False)
    assert "preceeding message" in openai_request_error(openai_body([system, hello, answered]))


def test_old_tool_results_are_compacted_and_breakpoints_stay_within_the_limit():
    conversation = hostile_conversation()
    assert conversation.compact(before_step=2) == 1
    texts = [r.text for t in conversation.turns for r in getattr(t, "results", [])]
    assert texts[0].startswith("[step 1 tool result of 500 characters")
    assert conversation.compact(before_step=2) == 0  # once
    messages = anthropic_messages(conversation)
    marks = [b for m in messages for b in m["content"] if "cache_control" in b]
    assert 1 <= len(marks) <= 3
    assert "cache_control" in messages[-1]["content"][-1]  # the latest turn is written
    body = anthropic_body(messages)
    assert anthropic_request_error(body) is None
    assert json.dumps(body).count("cache_control") <= 4


def test_tool_results_must_follow_a_turn_with_calls():
    conversation = Conversation()
    conversation.add_user("Step 1", step=1, step_start=True)
    with pytest.raises(ValueError):
        conversation.add_tool_results([ToolOutcome("x", "y")], step=1)
    with pytest.raises(ValueError):
        conversation.add_user("   ", step=1)
