"""Tool calls: schemas from type hints and docstrings, the parsers on well-formed and malformed turns, and every way a
call can fail turned into a message and an error kind, never an exception."""

from __future__ import annotations

import asyncio
import time

import pytest

from rollout.tools import (
    TOOL_CALL_PARSERS,
    ToolCall,
    parse_json_object,
    parse_xml_json,
    run_tool_call,
    tool_schema,
    tools_system_prompt,
)


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b


async def slow_async(seconds: float) -> str:
    """Sleep, then answer.

    Args:
        seconds: How long to sleep.
    """
    await asyncio.sleep(seconds)
    return "awake"


def slow_sync(seconds: float) -> str:
    """Sleep, then answer.

    Args:
        seconds: How long to sleep.
    """
    time.sleep(seconds)
    return "awake"


def broken(x: str) -> str:
    """Always fails.

    Args:
        x: Anything.
    """
    raise RuntimeError("disk on fire")


TOOLS = {"add": add, "slow_async": slow_async, "slow_sync": slow_sync, "broken": broken}


def test_schema_from_hints_and_docstring():
    schema = tool_schema(add)
    assert schema["function"]["name"] == "add"
    assert schema["function"]["parameters"]["properties"]["a"] == {"type": "integer", "description": "The first number."}
    assert schema["function"]["parameters"]["required"] == ["a", "b"]
    prompt = tools_system_prompt([schema])
    assert '"name": "add"' in prompt and "<tool_call>" in prompt and "<tool_response>" in prompt


def test_schema_of_an_undocumented_function_names_the_fix():
    def bare(x):
        return x

    with pytest.raises(ValueError, match="type hint and document it under 'Args:'"):
        tool_schema(bare)


def test_xml_json_parser():
    turn = 'Let me add. <tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call> and ' \
           '<tool_call>{"name": "add", "arguments": "{\\"a\\": 1, \\"b\\": 1}"}</tool_call>'
    parsed = parse_xml_json(turn)
    assert parsed.calls == [ToolCall("add", {"a": 2, "b": 3}), ToolCall("add", {"a": 1, "b": 1})]
    assert parsed.problems == []
    assert parse_xml_json("The answer is 5.").calls == [] and parse_xml_json("The answer is 5.").problems == []


@pytest.mark.parametrize("turn, problem", [
    ('<tool_call>{"name": "add", "arguments": {"a": 2,}}</tool_call>', "not valid JSON"),
    ('<tool_call>["add", 2, 3]</tool_call>', 'JSON object {"name"'),
    ('<tool_call>{"name": "add", "arguments": [2, 3]}</tool_call>', "must be a JSON object"),
    ('<tool_call>{"name": "add", "arguments": {"a": 2}}', "not closed"),
])
def test_xml_json_parser_reports_malformed_calls(turn, problem):
    parsed = parse_xml_json(turn)
    assert parsed.calls == [] and len(parsed.problems) == 1 and problem in parsed.problems[0]


def test_json_object_parser():
    assert parse_json_object('{"name": "add", "arguments": {"a": 1, "b": 2}}').calls == [ToolCall("add", {"a": 1, "b": 2})]
    assert parse_json_object("19").calls == []
    assert "not valid JSON" in parse_json_object('{"name": "add"').problems[0]
    assert set(TOOL_CALL_PARSERS.names()) == {"xml_json", "json_object"}


def test_a_working_call():
    result = run_tool_call(TOOLS, ToolCall("add", {"a": 2, "b": 3}), timeout_s=5)
    assert (result.text, result.error) == ("5", None)
    assert run_tool_call(TOOLS, ToolCall("slow_async", {"seconds": 0.0}), timeout_s=5).text == "awake"


@pytest.mark.parametrize("call, kind, text", [
    (ToolCall("subtract", {"a": 1}), "unknown_tool", "unknown tool 'subtract'; available: add, broken"),
    (ToolCall("add", {"a": 1, "c": 2}), "bad_arguments", "bad arguments for add"),
    (ToolCall("broken", {"x": "y"}), "raised", "broken raised RuntimeError: disk on fire"),
    (ToolCall("slow_sync", {"seconds": 3.0}), "timeout", "slow_sync timed out after 0.2 s"),
    (ToolCall("slow_async", {"seconds": 3.0}), "timeout", "slow_async timed out after 0.2 s"),
])
def test_failures_become_messages(call, kind, text):
    started = time.time()
    result = run_tool_call(TOOLS, call, timeout_s=0.2)
    assert result.error == kind and text in result.text and result.text.startswith("Error: ")
    assert time.time() - started < 2.0  # a hung tool costs its timeout, not its run time
