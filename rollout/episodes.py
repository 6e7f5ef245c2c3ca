"""Multi-turn rollouts, token in / token out: the model talks to an environment and its tools until it is done.

One episode per sample. Each turn, every unfinished episode's whole token history goes to the engine as its prompt
(one sample each), and the sampled tokens are appended as they are; the environment's answer (tool results, or its
reply in the user's voice) is rendered by the chat template and its tokens appended after them. Earlier turns are
never re-tokenized, so the learner scores exactly the tokens that were sampled, and `model_mask` marks which tokens
the model produced (the learner's losses count only those, learner/losses.py).

The environment's messages become tokens as TRL 1.16 does it: the template renders a short conversation without and
with the new messages (the latter with the generation prompt), and the difference after the end-of-turn token is
appended. A turn's text is parsed for tool calls (rollout/tools.py); calls run with the job's timeout, and a malformed
call, an unknown tool, a tool that raises or times out becomes an error message the model reads, and is counted.

An episode ends when the model answers without calling a tool and the environment has no `respond` (or it returns
None), when a turn ends without the end token (`length`: rollout.max_new_tokens per turn), when the next turn would
pass rollout.max_episode_tokens (`budget`), or after rollout.max_turns model turns (`max_turns`). `length` and
`budget` are truncations.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from rollout.engines.base import Completion, SamplingParams
from rollout.environments import environment_tools
from rollout.tools import (
    TOOL_CALL_PARSERS,
    ToolResult,
    call_with_timeout,
    run_tool_call,
    tool_name,
    tool_schema,
    tools_system_prompt,
)

MIN_JUDGED = 32  # rollouts before the environment's error rate can fail the run


class EnvironmentFailure(ValueError):
    """The environment raised or timed out on more rollouts than rollout.environment_max_error_rate allows."""


@dataclass(frozen=True)
class Failed:
    """An environment call that raised or timed out."""

    reason: str


@dataclass(frozen=True)
class EpisodeSettings:
    max_turns: int
    max_episode_tokens: int
    max_new_tokens: int  # per model turn
    tool_timeout_s: float = 30.0
    tool_parser: str = "xml_json"
    max_error_rate: float = 0.1


@dataclass
class Episode:
    """One rollout in progress."""

    example: object
    prompt_ids: list[int]
    messages: list[dict]
    environment: object | None
    tools: dict
    ids: list[int] = field(default_factory=list)  # tokens after the prompt
    mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    turns: int = 0
    tool_calls: int = 0
    tool_errors: int = 0
    parse_failures: int = 0
    env_errors: int = 0
    last_text: str = ""
    finish_reason: str = "stop"
    stop_reason: str | None = None
    env_reward: float | None = None
    first_reply: int = 0  # index of the first message after the prompt's

    @property
    def done(self) -> bool:
        return self.stop_reason is not None

    def completion(self, index: int) -> Completion:
        model_tokens = sum(self.mask)
        return Completion(
            prompt_index=index, prompt_ids=self.prompt_ids, token_ids=self.ids, text=self.last_text,
            logprobs=self.logprobs, finish_reason=self.finish_reason, model_mask=self.mask,
            trajectory={"messages": self.messages[self.first_reply:], "turns": self.turns,
                        "tool_calls": self.tool_calls, "tool_errors": self.tool_errors,
                        "parse_failures": self.parse_failures, "env_errors": self.env_errors,
                        "stop_reason": self.stop_reason, "truncated": self.stop_reason in ("length", "budget"),
                        "env_reward": self.env_reward, "model_tokens": model_tokens,
                        "env_tokens": len(self.ids) - model_tokens})


class Agent:
    """Runs a job's multi-turn rollouts: its environment class (or None), its standalone tools and its limits."""

    def __init__(self, tokenizer, encoder, environment: type | None, tools: list, settings: EpisodeSettings):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("multi-turn rollouts (rollout.environment / rollout.tools) need a chat model: the "
                             "tokenizer has no chat template to render the environment's messages")
        self.tokenizer, self.encoder, self.environment, self.settings = tokenizer, encoder, environment, settings
        self.standalone = list(tools)
        self.parse = TOOL_CALL_PARSERS.get(settings.tool_parser)
        self.eos_id = tokenizer.eos_token_id
        probe = environment() if environment is not None else None
        self.schemas = [tool_schema(fn) for fn in self.standalone + (environment_tools(probe) if probe else [])]
        self.native_tools = bool(self.schemas) and self._template_renders_tools()
        self.has_respond = probe is not None and callable(getattr(probe, "respond", None))
        self.has_reward = probe is not None and callable(getattr(probe, "get_reward", None))
        self.reward_name = type(probe).__name__ if self.has_reward else None
        self.episodes_run = 0
        self.episodes_failed = 0

    def _template_renders_tools(self) -> bool:
        """Whether the chat template renders `tools=` (the first tool's name appears in the rendered prompt)."""
        name = self.schemas[0]["function"]["name"]
        try:
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tools=self.schemas,
                                                      tokenize=False, add_generation_prompt=True)
        except Exception:  # a template that fails on tools does not support them
            return False
        return name in text

    # --- starting an episode ---

    def _start(self, example) -> Episode:
        environment = self.environment() if self.environment is not None else None
        tools = {tool_name(fn): fn for fn in self.standalone}
        messages = ([{"role": "user", "content": example.prompt}] if isinstance(example.prompt, str)
                    else [dict(m) for m in example.prompt])
        env_error = 0
        if environment is not None:
            tools.update({tool_name(fn): fn for fn in environment_tools(environment)})
            observation = self._call(environment.reset, {"prompt": example.prompt, "answer": example.answer,
                                                         **example.meta})
            if isinstance(observation, Failed):
                env_error = 1
            elif observation is not None:
                messages[-1] = {**messages[-1], "content": f"{messages[-1]['content']}{observation}"}
        system = self.encoder.system_prompt
        if self.schemas and not self.native_tools:
            tools_text = tools_system_prompt(self.schemas)
            if messages[0]["role"] == "system":
                messages[0] = {**messages[0], "content": f"{messages[0]['content']}\n\n{tools_text}"}
            else:
                system = f"{system}\n\n{tools_text}" if system else tools_text
        if system and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": system}, *messages]
        text = self.tokenizer.apply_chat_template(messages, tools=self.schemas if self.native_tools else None,
                                                  tokenize=False, add_generation_prompt=True)
        prompt_ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return Episode(example, prompt_ids, messages, environment, tools, env_errors=env_error,
                       first_reply=len(messages))

    def _call(self, method, kwargs: dict):
        """An environment method's value, or a Failed describing what went wrong (raised or timed out)."""
        try:
            return call_with_timeout(method, kwargs, self.settings.tool_timeout_s)
        except Exception as err:  # the environment's own failure is counted, never a crash
            return Failed(f"{getattr(method, '__qualname__', method)}: {type(err).__name__}: {err}")

    # --- one rollout of every example ---

    def rollout(self, engine, examples: list, params: SamplingParams) -> list[list[Completion]]:
        """params.n episodes per example, grouped per example: each model turn is one engine.generate call (n = 1
        per episode, the turn's seed derived from params.seed), each environment answer appended as tokens."""
        episodes = [self._start(ex) for ex in examples for _ in range(params.n)]
        for turn in range(self.settings.max_turns):
            active = [e for e in episodes if not e.done]
            if not active:
                break
            room = max(self.settings.max_episode_tokens - len(e.ids) for e in active)
            turn_params = replace(params, n=1, max_new_tokens=min(self.settings.max_new_tokens, room),
                                  seed=params.seed + 7919 * turn)
            groups = engine.generate([e.prompt_ids + e.ids for e in active], turn_params)
            for e, group in zip(active, groups, strict=True):
                self._model_turn(e, group[0])
                if not e.done:
                    self._environment_turn(e, last_turn=turn == self.settings.max_turns - 1)
        for e in episodes:
            if e.stop_reason is None:
                e.stop_reason = "max_turns"
            self._finish(e)
        self._judge_errors(episodes)
        n = params.n
        return [[e.completion(i) for e in episodes[i * n:(i + 1) * n]] for i in range(len(examples))]

    def _model_turn(self, e: Episode, c: Completion) -> None:
        room = self.settings.max_episode_tokens - len(e.ids)
        tokens, logprobs, stopped = c.token_ids, c.logprobs, c.finish_reason == "stop"
        if len(tokens) > room:
            tokens, logprobs, stopped = tokens[:room], logprobs[:room], False
            e.stop_reason = "budget"
        e.ids += tokens
        e.logprobs += logprobs
        e.mask += [1] * len(tokens)
        e.turns += 1
        text = self.tokenizer.decode(tokens[:-1] if stopped else tokens, skip_special_tokens=True)
        e.last_text = text
        e.messages.append({"role": "assistant", "content": text})
        e.finish_reason = "stop" if stopped else "length"
        if not stopped and e.stop_reason is None:
            e.stop_reason = "length"

    def _environment_turn(self, e: Episode, last_turn: bool) -> None:
        """The environment's answer to the model's turn: tool results, a reply, or the end of the episode."""
        parsed = self.parse(e.last_text) if e.tools else None
        replies: list[dict] = []
        if parsed is not None and (parsed.calls or parsed.problems):
            if last_turn:
                e.stop_reason = "max_turns"
                return
            results = []
            for call in parsed.calls:
                e.tool_calls += 1
                result = run_tool_call(e.tools, call, self.settings.tool_timeout_s)
                e.tool_errors += result.error is not None
                results.append(result)
            for problem in parsed.problems:
                e.parse_failures += 1
                results.append(ToolResult("parse_error", f"Error: {problem}", "parse"))
            replies = self._tool_messages(results)
        elif self.has_respond and e.environment is not None and not e.env_errors:
            reply = self._call(e.environment.respond, {"text": e.last_text})
            if isinstance(reply, Failed):
                e.env_errors += 1
                e.stop_reason = "env_error"
                return
            if reply is None:
                e.stop_reason = "done"
                return
            if last_turn:
                e.stop_reason = "max_turns"
                return
            replies = [{"role": "user", "content": str(reply)}]
        else:
            e.stop_reason = "done"
            return
        suffix = self.message_ids(replies)
        if len(e.ids) + len(suffix) + 1 > self.settings.max_episode_tokens:
            e.stop_reason = "budget"
            return
        e.ids += suffix
        e.mask += [0] * len(suffix)
        e.logprobs += [0.0] * len(suffix)
        e.messages += replies

    def _tool_messages(self, results: list[ToolResult]) -> list[dict]:
        """Tool results as messages: role `tool` where the template renders tools, else one user message of
        <tool_response> blocks (the format tools_system_prompt announces)."""
        if self.native_tools:
            return [{"role": "tool", "name": r.name, "content": r.text} for r in results]
        body = "\n".join(f"<tool_response>\n{r.text}\n</tool_response>" for r in results)
        return [{"role": "user", "content": body}]

    def message_ids(self, messages: list[dict]) -> list[int]:
        """The tokens that follow a finished model turn when `messages` are appended, up to the next turn's
        generation prompt (TRL 1.16's `_get_tool_suffix_ids`, for any role)."""
        dummy = [{"role": "user", "content": "dummy"}, {"role": "assistant", "content": "dummy"}]
        tools = self.schemas if self.native_tools else None
        prefix = self.tokenizer.apply_chat_template(dummy, tools=tools, tokenize=False)
        full = self.tokenizer.apply_chat_template(dummy + messages, tools=tools, tokenize=False,
                                                  add_generation_prompt=True)
        prefix_ids = list(self.tokenizer(prefix, add_special_tokens=False)["input_ids"])
        full_ids = list(self.tokenizer(full, add_special_tokens=False)["input_ids"])
        ends = [i for i, t in enumerate(prefix_ids) if t == self.eos_id]
        if ends:
            prefix_ids = prefix_ids[:ends[-1] + 1]
        if full_ids[:len(prefix_ids)] != prefix_ids:
            raise ValueError("the chat template renders an earlier turn differently once messages follow it, so "
                             "turns cannot be appended token by token; use a model whose template is prefix-stable")
        return full_ids[len(prefix_ids):]

    def _finish(self, e: Episode) -> None:
        if self.has_reward and e.environment is not None and not e.env_errors:
            reward = self._call(e.environment.get_reward, {})
            if isinstance(reward, Failed):
                e.env_errors += 1
            else:
                e.env_reward = float(reward)

    def _judge_errors(self, episodes: list[Episode]) -> None:
        self.episodes_run += len(episodes)
        self.episodes_failed += sum(1 for e in episodes if e.env_errors)
        rate = self.episodes_failed / max(self.episodes_run, 1)
        if self.episodes_run >= MIN_JUDGED and rate > self.settings.max_error_rate:
            name = self.environment.__name__ if self.environment is not None else "the tools"
            raise EnvironmentFailure(
                f"environment {name} raised or timed out on {self.episodes_failed} of {self.episodes_run} rollouts "
                f"so far ({rate:.0%}, more than rollout.environment_max_error_rate "
                f"{self.settings.max_error_rate:.0%}); fix it, or raise the rate / rollout.tool_timeout_s")


def generate_groups(engine, examples: list, encoder, params: SamplingParams, agent: Agent | None = None
                    ) -> list[list[Completion]]:
    """The sampled groups of `examples`: one engine call for single-turn jobs, the agent's episodes otherwise."""
    if agent is None:
        return engine.generate(encoder.ids(examples), params)
    return agent.rollout(engine, examples, params)



def conversation_text(messages: list[dict]) -> str:
    """A conversation as readable text, one "role: content" block per message (samples, the dashboard)."""
    return "\n".join(f"[{m['role']}{' ' + m['name'] if m.get('name') else ''}] {m['content']}" for m in messages)
