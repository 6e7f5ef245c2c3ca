"""Tools a model may call during a rollout: their schemas, how calls are parsed from the model's text, and how a call
runs (sync or async, with a timeout, every failure turned into a message the model reads).

Schemas come from a function's type hints and its Google-style docstring (`transformers.utils.get_json_schema`, what
`apply_chat_template(tools=...)` uses), so a tool written for TRL's `tools=` works unchanged. A chat template that
renders tools gets them as `tools=`; for one that does not (SmolLM2's), `tools_system_prompt` puts them into the
system prompt in this documented format (the Hermes / Qwen convention):

    # Tools
    You may call one or more of these tools. Their signatures, one JSON schema per line:
    <tools>
    {"type": "function", "function": {"name": ..., "description": ..., "parameters": {...}}}
    </tools>
    To call a tool, write <tool_call>{"name": "<tool name>", "arguments": {<its arguments>}}</tool_call>.
    Each result comes back as <tool_response>...</tool_response>.

Parsers (`TOOL_CALL_PARSERS`, chosen by rollout.tool_parser) read a model turn's text into calls and problems:
`xml_json` (default) takes every <tool_call>{json}</tool_call> block; `json_object` takes a turn that is one JSON
object {"name": ..., "arguments": {...}} (Llama 3's custom-tool format). A malformed call is a parse failure that the
model is told about, never an exception.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
from collections.abc import Callable
from dataclasses import dataclass

from common.registry import Registry
from rollout.background import background

TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.S)


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict


@dataclass(frozen=True)
class ParsedTurn:
    """What a parser read from one model turn: the calls, and one message per malformed call."""

    calls: list[ToolCall]
    problems: list[str]


@dataclass(frozen=True)
class ToolResult:
    """One call's outcome: the text the model reads, and the kind of failure (None when it worked)."""

    name: str
    text: str
    error: str | None = None  # "unknown_tool" | "bad_arguments" | "raised" | "timeout"


def tool_schema(fn: Callable) -> dict:
    """The JSON schema of a tool function, from its type hints and docstring (ValueError naming the fix)."""
    from transformers.utils import get_json_schema

    try:
        return get_json_schema(fn)
    except Exception as err:  # transformers raises its own exception types for missing hints or docs
        raise ValueError(f"tool {getattr(fn, '__name__', fn)!r} has no usable schema ({err}); give every argument a "
                         f"type hint and document it under 'Args:' in the function's docstring") from None


def tools_system_prompt(schemas: list[dict]) -> str:
    """The tools section of the system prompt for a chat template that does not render tools (module docstring)."""
    lines = "\n".join(json.dumps(s) for s in schemas)
    return ("# Tools\nYou may call one or more of these tools. Their signatures, one JSON schema per line:\n"
            f"<tools>\n{lines}\n</tools>\n"
            'To call a tool, write <tool_call>{"name": "<tool name>", "arguments": {<its arguments>}}</tool_call>.\n'
            "Each result comes back as <tool_response>...</tool_response>.")


def _call_from_json(body: str) -> ToolCall | str:
    """A call from a JSON object {"name", "arguments"}, or what is wrong with it."""
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as err:
        return f"the tool call is not valid JSON ({err.msg} at character {err.pos})"
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return 'a tool call is a JSON object {"name": <tool name>, "arguments": {...}}'
    arguments = obj.get("arguments", {})
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            pass
    if not isinstance(arguments, dict):
        return f"the arguments of tool call {obj['name']!r} must be a JSON object"
    return ToolCall(obj["name"], arguments)


TOOL_CALL_PARSERS: Registry[Callable[[str], ParsedTurn]] = Registry("tool-call parser")


@TOOL_CALL_PARSERS.register("xml_json")
def parse_xml_json(text: str) -> ParsedTurn:
    """Every <tool_call>{json}</tool_call> block of the turn; an opening tag without its closing one is a problem."""
    calls, problems = [], []
    for body in TOOL_CALL.findall(text):
        call = _call_from_json(body.strip())
        (calls if isinstance(call, ToolCall) else problems).append(call)
    if text.count("<tool_call>") > text.count("</tool_call>"):
        problems.append("a <tool_call> was opened but not closed with </tool_call>")
    return ParsedTurn(calls, problems)


@TOOL_CALL_PARSERS.register("json_object")
def parse_json_object(text: str) -> ParsedTurn:
    """The whole turn as one JSON object {"name", "arguments"} (a turn that does not start with '{' calls nothing)."""
    stripped = text.strip()
    if not stripped.startswith("{"):
        return ParsedTurn([], [])
    call = _call_from_json(stripped)
    return ParsedTurn([call], []) if isinstance(call, ToolCall) else ParsedTurn([], [call])


def tool_name(fn: Callable) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


def call_with_timeout(fn: Callable, kwargs: dict, timeout_s: float):
    """fn(**kwargs) within timeout_s: a sync fn in the shared thread pool, an async one on the shared event loop.
    Raises TimeoutError past it, or what fn raised."""
    loop, threads = background()
    if inspect.iscoroutinefunction(fn):
        return asyncio.run_coroutine_threadsafe(asyncio.wait_for(fn(**kwargs), timeout_s), loop).result(timeout_s + 1)
    return threads.submit(fn, **kwargs).result(timeout_s)


def run_tool_call(tools: dict[str, Callable], call: ToolCall, timeout_s: float) -> ToolResult:
    """Run one call: an unknown tool, arguments that do not fit, an exception or a timeout become a ToolResult whose
    text says so (the model reads it). Sync tools run in the shared thread pool, async ones on the shared event loop;
    a sync tool past its timeout is abandoned (its thread finishes on its own; the sandboxed code tool kills its
    process itself)."""
    fn = tools.get(call.name)
    if fn is None:
        return ToolResult(call.name, f"Error: unknown tool {call.name!r}; available: {', '.join(sorted(tools))}",
                          "unknown_tool")
    try:
        inspect.signature(fn).bind(**call.arguments)
    except TypeError as err:
        return ToolResult(call.name, f"Error: bad arguments for {call.name}: {err}", "bad_arguments")
    try:
        value = call_with_timeout(fn, call.arguments, timeout_s)
    except TimeoutError:
        return ToolResult(call.name, f"Error: {call.name} timed out after {timeout_s:g} s", "timeout")
    except Exception as err:  # the tool's own failure is the model's observation
        return ToolResult(call.name, f"Error: {call.name} raised {type(err).__name__}: {err}", "raised")
    return ToolResult(call.name, value if isinstance(value, str) else json.dumps(value, default=str))
