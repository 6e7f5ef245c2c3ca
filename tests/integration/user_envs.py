"""Environments and tools written the way a TRL 1.16 user writes them for GRPOTrainer's `environment_factory` and
`tools` (public methods are the tools, reset(**example), get_reward()), used by the multi-turn tests unchanged."""

from __future__ import annotations

import time


class Calculator:
    """A TRL-style environment: two tools and a reward from what happened."""

    def reset(self, **example) -> str:
        self.answer, self.calls = example.get("answer"), 0
        return " You may use the tools."

    def add(self, a: int, b: int) -> int:
        """Add.

        Args:
            a: a
            b: b
        """
        self.calls += 1
        return a + b

    def multiply(self, a: int, b: int) -> int:
        """Multiply.

        Args:
            a: a
            b: b
        """
        self.calls += 1
        return a * b

    def get_reward(self) -> float:
        return 0.25 * min(self.calls, 2)


class Nagging:
    """Answers every model turn in the user's voice until the turns run out: every rollout is multi-turn."""

    def reset(self, **example) -> None:
        self.turns = 0

    def respond(self, text: str) -> str:
        self.turns += 1
        return f"Are you sure? Say it again, differently (round {self.turns})."

    def get_reward(self) -> float:
        return float(self.turns)


class BrokenReset:
    """reset raises: counted per rollout; past rollout.environment_max_error_rate the run fails, naming the class."""

    def reset(self, **example):
        raise RuntimeError("the game server is down")

    def respond(self, text: str) -> None:
        return None


def lookup(key: str) -> str:
    """Look a key up.

    Args:
        key: What to look up.
    """
    return {"pi": "3.14159"}.get(key, "not found")


def hang(seconds: float) -> str:
    """A tool that hangs.

    Args:
        seconds: How long.
    """
    time.sleep(seconds)
    return "done"
