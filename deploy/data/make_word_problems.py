"""Word problems in GSM8K's format, from templates: people, objects, prices, rates; one or two arithmetic steps.

Each row is {"question": ..., "answer": ...} like GSM8K's: the answer is a short worked solution whose steps carry
GSM8K's calculator annotations (`5 + 3 = <<5+3=8>>8`) and whose last line is `#### N`. Every number in a solution is
computed from the problem's operands, so the answers are correct by construction; tests/deploy/test_word_problems.py
re-evaluates every annotation and final answer of the committed files.

The problems are easy on purpose: SmolLM2-135M-Instruct through its chat template answers roughly a quarter of them
with a worked solution and a tenth with the final number alone (docs/real-models.md has the calibration), which
leaves GRPO room to improve. Operands are small (2..12, products
and totals up to ~100) and half the families take two steps.

The output is a pure function of the seed and the sizes: test is the first `--test` distinct questions drawn,
train the next `--train` distinct ones, and no question appears in both.

    .venv/bin/python deploy/data/make_word_problems.py [--out deploy/data/word_problems] [--seed 0]
        [--train 4000] [--test 500]
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from pathlib import Path

OUT = Path(__file__).resolve().parent / "word_problems"
SEED, TRAIN, TEST = 0, 4000, 500
MAX_REPEATS = 10_000

PEOPLE = (("Ava", "she"), ("Ben", "he"), ("Chloe", "she"), ("Dan", "he"), ("Emma", "she"), ("Finn", "he"),
          ("Grace", "she"), ("Hugo", "he"), ("Isla", "she"), ("Jack", "he"), ("Lily", "she"), ("Leo", "he"),
          ("Mia", "she"), ("Noah", "he"), ("Olivia", "she"), ("Omar", "he"), ("Priya", "she"), ("Ravi", "he"),
          ("Sara", "she"), ("Sam", "he"), ("Tara", "she"), ("Tom", "he"), ("Yuki", "she"), ("Zane", "he"))
THINGS = ("apples", "marbles", "stickers", "pencils", "cookies", "books", "shells", "stamps", "cards", "toy cars",
          "balloons", "crayons", "eggs", "flowers", "coins", "oranges")
# (item, plural, lowest price, highest price) in whole dollars
ITEMS = (("pen", "pens", 1, 5), ("notebook", "notebooks", 2, 6), ("ticket", "tickets", 3, 10),
         ("sandwich", "sandwiches", 3, 8), ("toy", "toys", 2, 9), ("cup of juice", "cups of juice", 1, 4),
         ("comic book", "comic books", 2, 7), ("plant", "plants", 4, 10), ("ball", "balls", 2, 6),
         ("kite", "kites", 5, 12))
# (what is done, unit, per what): "{name} reads 6 pages each day"
RATES = (("reads", "pages", "day"), ("walks", "kilometers", "day"), ("bakes", "muffins", "hour"),
         ("paints", "pictures", "week"), ("saves", "dollars", "week"), ("picks", "apples", "hour"),
         ("writes", "emails", "hour"), ("swims", "laps", "day"))
CONTAINERS = ("boxes", "bags", "baskets", "jars", "rows", "piles")


def step(text: str, expression: str, value: int, after: str = "") -> str:
    """One solution line with GSM8K's calculator annotation: '{text}{expr} = <<expr=value>>value{after}'."""
    return f"{text}{expression} = <<{expression.replace(' ', '')}={value}>>{value}{after}"


def solution(lines: list[str], value: int) -> str:
    return "\n".join([*lines, f"#### {value}"])


def people(rng: random.Random, n: int) -> list[tuple[str, str]]:
    return rng.sample(PEOPLE, n)


def gets_more(rng: random.Random) -> tuple[str, str]:
    (name, pron), (friend, _) = people(rng, 2)
    thing, a, b = rng.choice(THINGS), rng.randint(2, 12), rng.randint(2, 12)
    verb = rng.choice((f"{friend} gives {pron_obj(pron)} {b} more", f"{pron.capitalize()} finds {b} more",
                       f"{pron.capitalize()} buys {b} more"))
    q = f"{name} has {a} {thing}. {verb}. How many {thing} does {name} have now?"
    return q, solution([step(f"{name} has ", f"{a} + {b}", a + b, f" {thing} now.")], a + b)


def gives_away(rng: random.Random) -> tuple[str, str]:
    (name, pron), (friend, _) = people(rng, 2)
    thing, b = rng.choice(THINGS), rng.randint(2, 9)
    a = b + rng.randint(2, 10)
    verb = rng.choice((f"gives {b} of them to {friend}", f"loses {b} of them", f"uses {b} of them"))
    q = f"{name} has {a} {thing}. {pron.capitalize()} {verb}. How many {thing} does {name} have left?"
    return q, solution([step(f"{name} has ", f"{a} - {b}", a - b, f" {thing} left.")], a - b)


def buys(rng: random.Random) -> tuple[str, str]:
    (name, _), = people(rng, 1)
    item, items, low, high = rng.choice(ITEMS)
    price, n = rng.randint(low, high), rng.randint(2, 6)
    q = f"A {item} costs {price} dollars. {name} buys {n} {items}. How many dollars does {name} spend?"
    return q, solution([step(f"{name} spends ", f"{n} * {price}", n * price, " dollars.")], n * price)


def rate(rng: random.Random) -> tuple[str, str]:
    (name, pron), = people(rng, 1)
    verb, unit, per = rng.choice(RATES)
    r, t = rng.randint(2, 9), rng.randint(2, 6)
    base = {"reads": "read", "walks": "walk", "bakes": "bake", "paints": "paint", "saves": "save", "picks": "pick",
            "writes": "write", "swims": "swim"}[verb]
    q = f"{name} {verb} {r} {unit} every {per}. How many {unit} does {pron} {base} in {t} {per}s?"
    return q, solution([step(f"In {t} {per}s {name} {verb} ", f"{r} * {t}", r * t, f" {unit}.")], r * t)


def shares(rng: random.Random) -> tuple[str, str]:
    (name, pron), = people(rng, 1)
    thing, container = rng.choice(THINGS), rng.choice(CONTAINERS)
    k, each = rng.randint(2, 6), rng.randint(2, 9)
    total = k * each
    q = (f"{name} has {total} {thing}. {pron.capitalize()} puts them into {k} {container} with the same number in "
         f"each. How many {thing} are in each of the {container}?")
    return q, solution([step("Each one holds ", f"{total} / {k}", each, f" {thing}.")], each)


def more_than(rng: random.Random) -> tuple[str, str]:
    (name, _), (friend, _) = people(rng, 2)
    thing, a, b = rng.choice(THINGS), rng.randint(2, 10), rng.randint(2, 8)
    q = (f"{name} has {a} {thing}. {friend} has {b} more {thing} than {name}. How many {thing} do {name} and "
         f"{friend} have together?")
    f = a + b
    return q, solution([step(f"{friend} has ", f"{a} + {b}", f, f" {thing}."),
                        step("Together they have ", f"{a} + {f}", a + f, f" {thing}.")], a + f)


def buys_then_gives(rng: random.Random) -> tuple[str, str]:
    (name, pron), (friend, _) = people(rng, 2)
    thing, a, b = rng.choice(THINGS), rng.randint(2, 10), rng.randint(2, 10)
    c = rng.randint(1, a + b - 1)
    q = (f"{name} has {a} {thing}. {pron.capitalize()} buys {b} more and then gives {c} to {friend}. "
         f"How many {thing} does {name} have now?")
    s = a + b
    return q, solution([step(f"After buying, {name} has ", f"{a} + {b}", s, f" {thing}."),
                        step("After giving some away, ", f"{s} - {c}", s - c, f" {thing} are left.")], s - c)


def change(rng: random.Random) -> tuple[str, str]:
    (name, _), = people(rng, 1)
    item, items, low, high = rng.choice(ITEMS)
    price, n = rng.randint(low, min(high, 6)), rng.randint(2, 4)
    cost = n * price
    paid = next(bill for bill in (10, 20, 50) if bill > cost)
    q = (f"{name} buys {n} {items} that cost {price} dollars each and pays with a {paid}-dollar bill. "
         f"How many dollars of change does {name} get?")
    return q, solution([step("The items cost ", f"{n} * {price}", cost, " dollars."),
                        step(f"{name} gets ", f"{paid} - {cost}", paid - cost, " dollars of change.")], paid - cost)


def two_groups(rng: random.Random) -> tuple[str, str]:
    (name, pron), = people(rng, 1)
    thing, container = rng.choice(THINGS), rng.choice(CONTAINERS)
    k, each, extra = rng.randint(2, 5), rng.randint(2, 6), rng.randint(1, 9)
    q = (f"{name} has {k} {container} with {each} {thing} in each, and {extra} more {thing} on the table. "
         f"How many {thing} does {pron} have in all?")
    inside = k * each
    return q, solution([step(f"The {container} hold ", f"{k} * {each}", inside, f" {thing}."),
                        step("In all there are ", f"{inside} + {extra}", inside + extra, f" {thing}.")],
                       inside + extra)


def pron_obj(pron: str) -> str:
    return {"she": "her", "he": "him"}[pron]


FAMILIES: tuple[Callable[[random.Random], tuple[str, str]], ...] = (
    gets_more, gives_away, buys, rate, shares, more_than, buys_then_gives, change, two_groups)


def generate(seed: int = SEED, n_train: int = TRAIN, n_test: int = TEST) -> tuple[list[dict], list[dict]]:
    """(train, test): distinct questions, test drawn first, no question in both; each family equally likely."""
    rng = random.Random(f"word-problems:{seed}")
    seen: set[str] = set()
    rows: list[dict] = []
    repeats = 0  # draws in a row that gave a question already drawn
    while len(rows) < n_train + n_test:
        question, answer = rng.choice(FAMILIES)(rng)
        if question in seen:
            repeats += 1
            if repeats > MAX_REPEATS:
                raise ValueError(f"the templates gave no new question in {MAX_REPEATS} draws after {len(rows)} "
                                 f"distinct questions; ask for fewer than {n_train + n_test}")
            continue
        repeats = 0
        seen.add(question)
        rows.append({"question": question, "answer": answer})
    return rows[n_test:], rows[:n_test]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--train", type=int, default=TRAIN)
    parser.add_argument("--test", type=int, default=TEST)
    args = parser.parse_args()
    train, test = generate(args.seed, args.train, args.test)
    args.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out / "train.jsonl", train)
    write_jsonl(args.out / "test.jsonl", test)
    print(f"wrote {len(train)} train and {len(test)} test problems to {args.out}")


if __name__ == "__main__":
    main()
