"""A1111 prompt syntax: LoRA tags, prompt editing, emphasis and BREAK.

A prompt goes through three stages, in A1111's order (`modules/extra_networks.py`,
`modules/prompt_parser.py`):

1. Extra-network tags `<lora:NAME:W>`, `<lora:NAME:TE_W:UNET_W>` (and `te=`/`unet=` named forms) are
   taken out of the text. Other tag types (`<hypernet:...>`) are taken out too and reported.
2. Prompt editing: `[from:to:when]`, `[to:when]`, `[from::when]` (when < 1 is a fraction of the steps)
   and alternation `[a|b]` turn the text into a schedule of plain texts, one per range of steps. A
   prompt whose brackets do not form these constructs is used as written, as in A1111.
3. Emphasis, per scheduled text: `(x)` x1.1, `((x))` x1.21, `(x:1.3)`, `[x]` /1.1, `\\(` escapes;
   `BREAK` ends a CLIP chunk. The result is a list of weighted fragments. (One deliberate difference:
   A1111 turns a BREAK inside brackets, `(a BREAK b)`, into the word "break"; here it always breaks.)

Not supported, and said so in `ParsedPrompt.warnings`: composable diffusion (`AND`), extra networks
other than LoRA.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from hayai.errors import RequestError

__all__ = [
    "BREAK",
    "Fragment",
    "LoraTag",
    "ParsedPrompt",
    "ScheduledText",
    "parse_attention",
    "parse_prompt",
]

_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")  # A1111 modules/extra_networks.py
_LORA_TYPES = ("lora", "lyco")  # A1111 registers "lyco" as an alias of "lora"
_AND = re.compile(r"\bAND\b")
_BREAK_SPLIT = re.compile(r"\s*\bBREAK\b\s*", re.S)
_NUMBER = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)")
_SCHEDULE_TOKEN = re.compile(r"\\.|\\|[\[\]():|]|[^\\\[\]():|]+", re.S)
_ATTENTION_TOKEN = re.compile(
    r"\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:([+-]?[.\d]+)\)|\)|]|[^\\()\[\]:]+|:"
)
_ROUND, _SQUARE = 1.1, 1 / 1.1
_SPACE_BEFORE_COMMA = re.compile(r" ,")
_REPEATED_COMMAS = re.compile(r",(?: ?,)+")
MAX_NESTING = 100  # brackets inside brackets; real prompts use a handful, the parser recurses per level


@dataclass(frozen=True)
class LoraTag:
    """A `<lora:...>` tag: the name as written and the two multipliers."""

    name: str
    te_weight: float
    unet_weight: float
    text: str  # the tag exactly as it appeared


@dataclass(frozen=True)
class Fragment:
    """A run of prompt text with one emphasis weight; `is_break` marks a BREAK (text "BREAK")."""

    text: str
    weight: float
    is_break: bool = False


BREAK = Fragment("BREAK", -1.0, True)


@dataclass(frozen=True)
class ScheduledText:
    """The prompt text in force up to and including denoising step `end_at_step` (A1111's counting)."""

    end_at_step: int
    text: str


# --- prompt editing ------------------------------------------------------------------------------
# Nodes: str (raw text, escapes kept), _Group (emphasis brackets, kept as text), _Scheduled, _Alternate.


@dataclass(frozen=True)
class _Group:
    open: str
    parts: tuple[tuple, ...]  # node sequences separated by ":" (at most two, for "(a:1.2)")
    close: str


@dataclass(frozen=True)
class _Scheduled:
    before: tuple
    after: tuple
    when: float


@dataclass(frozen=True)
class _Alternate:
    options: tuple[tuple, ...]


class _Unparsable(Exception):
    """The bracket at this position does not open a construct of the grammar."""


def _schedule_tree(text: str) -> tuple | None:
    """The prompt-editing tree of `text`, or None where A1111's grammar rejects it (then: plain text)."""
    tokens = _SCHEDULE_TOKEN.findall(text)
    nodes: list = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token in ("(", "["):
            try:
                node, i = _group(tokens, i)
                nodes.append(node)
                continue
            except _Unparsable:
                pass  # a stray bracket is text at the top level
        elif token == "|":
            return None  # `|` outside brackets is not in A1111's grammar: the whole prompt is used as is
        nodes.append(token)
        i += 1
    return tuple(nodes)


def _sequence(tokens: list[str], i: int, stops: str) -> tuple[tuple, int]:
    nodes: list = []
    while i < len(tokens):
        token = tokens[i]
        if token in stops:
            return tuple(nodes), i
        if token in ("(", "["):
            node, i = _group(tokens, i)
            nodes.append(node)
            continue
        if token in (")", "]", ":", "|"):
            raise _Unparsable
        nodes.append(token)
        i += 1
    raise _Unparsable  # ran off the end: an unclosed bracket


def _number(nodes: tuple) -> float | None:
    if len(nodes) != 1 or not isinstance(nodes[0], str):
        return None
    match = _NUMBER.fullmatch(nodes[0])
    return float(match.group(1)) if match else None


def _group(tokens: list[str], i: int) -> tuple[object, int]:
    if tokens[i] == "(":
        first, i = _sequence(tokens, i + 1, "):")
        if tokens[i] == ")":
            return _Group("(", (first,), ")"), i + 1
        second, i = _sequence(tokens, i + 1, ")")
        return _Group("(", (first, second), ")"), i + 1
    first, i = _sequence(tokens, i + 1, "]:|")
    if tokens[i] == "]":
        return _Group("[", (first,), "]"), i + 1
    if tokens[i] == "|":
        options = [first]
        while tokens[i] == "|":
            option, i = _sequence(tokens, i + 1, "]|")
            options.append(option)
        return _Alternate(tuple(options)), i + 1
    second, i = _sequence(tokens, i + 1, "]:")
    if tokens[i] == "]":  # [to:when]
        when = _number(second)
        if when is None:
            raise _Unparsable
        return _Scheduled((), first, when), i + 1
    third, i = _sequence(tokens, i + 1, "]")  # [from:to:when]
    when = _number(third)
    if when is None:
        raise _Unparsable
    return _Scheduled(first, second, when), i + 1


def _steps_of(nodes: tuple, steps: int, out: set[int]) -> None:
    for node in nodes:
        if isinstance(node, _Scheduled):
            out.add(_when_step(node.when, steps))
            _steps_of(node.before, steps, out)
            _steps_of(node.after, steps, out)
        elif isinstance(node, _Alternate):
            out.update(range(1, steps + 1))
            for option in node.options:
                _steps_of(option, steps, out)
        elif isinstance(node, _Group):
            for part in node.parts:
                _steps_of(part, steps, out)


def _when_step(when: float, steps: int) -> int:
    value = when * steps if when < 1 else when
    return min(steps, int(value))


def _render(nodes: tuple, step: int, steps: int) -> str:
    out = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, _Scheduled):
            out.append(_render(node.before if step <= _when_step(node.when, steps) else node.after, step, steps))
        elif isinstance(node, _Alternate):
            out.append(_render(node.options[(step - 1) % len(node.options)], step, steps))
        else:
            out.append(node.open + ":".join(_render(part, step, steps) for part in node.parts) + node.close)
    return "".join(out)


def _has_editing(nodes: tuple) -> bool:
    for node in nodes:
        if isinstance(node, (_Scheduled, _Alternate)):
            return True
        if isinstance(node, _Group) and any(_has_editing(part) for part in node.parts):
            return True
    return False


# --- emphasis ------------------------------------------------------------------------------------


def parse_attention(text: str) -> list[Fragment]:
    """Weighted fragments of one (already scheduled) prompt text, A1111's `parse_prompt_attention`.

    Unclosed brackets apply to the end of the text; runs of equal weight are merged; BREAK becomes
    the `BREAK` fragment. An empty text gives one empty fragment of weight 1.
    """
    res: list[list] = []  # [text, weight] pairs, BREAK as ["BREAK", -1]
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for item in res[start:]:
            if item[1] != -1:
                item[1] *= factor

    for match in _ATTENTION_TOKEN.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            res.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(res))
        elif token == "[":
            square_open.append(len(res))
        elif weight is not None and round_open and _is_float(weight):
            multiply(round_open.pop(), float(weight))
        elif token == ")" and round_open:
            multiply(round_open.pop(), _ROUND)
        elif token == "]" and square_open:
            multiply(square_open.pop(), _SQUARE)
        else:
            for k, part in enumerate(_BREAK_SPLIT.split(token)):
                if k > 0:
                    res.append(["BREAK", -1])
                res.append([part, 1.0])
    for start in round_open:
        multiply(start, _ROUND)
    for start in square_open:
        multiply(start, _SQUARE)
    if not res:
        res = [["", 1.0]]
    merged: list[list] = []
    for item in res:
        if merged and merged[-1][1] == item[1] and item[1] != -1:
            merged[-1][0] += item[0]
        else:
            merged.append(list(item))
    return [BREAK if w == -1 else Fragment(t, w) for t, w in merged]


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# --- LoRA tags -----------------------------------------------------------------------------------


def _parse_weight(tag: str, what: str, value: str) -> float:
    try:
        weight = float(value)
    except ValueError:
        raise RequestError(f"prompt tag {tag}: {what} {value!r} is not a number") from None
    if not math.isfinite(weight):
        raise RequestError(f"prompt tag {tag}: {what} {value!r} must be a finite number")
    return weight


def _lora_tag(tag: str, args: str) -> LoraTag:
    items = args.split(":")
    positional = [item.strip() for item in items if "=" not in item]
    named = dict(item.split("=", 1) for item in items if "=" in item)
    named = {key.strip(): value.strip() for key, value in named.items()}
    unknown = set(named) - {"te", "unet", "dyn"}
    if unknown:
        raise RequestError(f"prompt tag {tag}: unknown parameter {sorted(unknown)[0]!r}; known: te=, unet=")
    if not positional or not positional[0]:
        raise RequestError(f"prompt tag {tag} has no LoRA name; write <lora:NAME:WEIGHT>")
    te = _parse_weight(tag, "weight", positional[1]) if len(positional) > 1 else 1.0
    te = _parse_weight(tag, "te", named["te"]) if "te" in named else te
    unet = _parse_weight(tag, "unet weight", positional[2]) if len(positional) > 2 else te
    unet = _parse_weight(tag, "unet", named["unet"]) if "unet" in named else unet
    if len(positional) > 3 or "dyn" in named:
        raise RequestError(f"prompt tag {tag}: dynamic rank (4th value, dyn=) is not supported; remove it")
    return LoraTag(positional[0], te, unet, tag)


# --- the whole prompt ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedPrompt:
    """A prompt taken apart. `schedule(steps)` and `fragments(...)` give what the encoders see."""

    text: str
    text_without_loras: str
    loras: tuple[LoraTag, ...] = ()
    warnings: tuple[str, ...] = ()
    _tree: tuple | None = field(default=None, repr=False, compare=False)

    @property
    def has_editing(self) -> bool:
        """Whether the prompt uses prompt editing or alternation (its text changes during sampling)."""
        return self._tree is not None and _has_editing(self._tree)

    def schedule(self, steps: int) -> list[ScheduledText]:
        """The texts in force over the run; a prompt without editing gives one entry ending at `steps`."""
        if steps < 1:
            raise RequestError(f"steps={steps} must be at least 1")
        if not self.has_editing:
            return [ScheduledText(steps, self.text_without_loras)]
        boundaries: set[int] = {steps}
        _steps_of(self._tree, steps, boundaries)
        out: list[ScheduledText] = []
        for end in sorted(boundaries):
            text = _render(self._tree, end, steps)
            if out and out[-1].text == text:
                out[-1] = ScheduledText(end, text)
            else:
                out.append(ScheduledText(end, text))
        return out

    def fragments(self, steps: int = 1, step: int = 0) -> list[Fragment]:
        """The weighted fragments in force at 0-based denoising `step` of `steps`."""
        return parse_attention(text_at_step(self.schedule(steps), step))

    def plain_text(self, steps: int = 1) -> str:
        """The words in force at the last of `steps` steps, without LoRA tags, emphasis brackets, weights or
        BREAK: what the image shows, as a training caption says it ("(red:1.2) cat <lora:x:1>" -> "red cat").
        Whitespace runs become one space and the commas a removed tag leaves doubled become one."""
        fragments = parse_attention(self.schedule(steps)[-1].text)
        text = "".join(" " if fragment.is_break else fragment.text for fragment in fragments)
        text = _SPACE_BEFORE_COMMA.sub(",", " ".join(text.split()))
        return _REPEATED_COMMAS.sub(",", text).strip(" ,")


def text_at_step(schedule: list[ScheduledText], step: int) -> str:
    """The scheduled text at 0-based denoising step `step` (A1111: the first entry with step <= end)."""
    return schedule[index_at_step(schedule, step)].text


def index_at_step(schedule: list[ScheduledText], step: int) -> int:
    for index, entry in enumerate(schedule):
        if step <= entry.end_at_step:
            return index
    return len(schedule) - 1


def _check_nesting(text: str) -> None:
    depth = deepest = 0
    for token in _SCHEDULE_TOKEN.findall(text):  # escaped brackets are tokens of their own
        if token in ("(", "["):
            depth += 1
            deepest = max(deepest, depth)
        elif token in (")", "]"):
            depth = max(0, depth - 1)
    if deepest > MAX_NESTING:
        raise RequestError(f"the prompt nests brackets {deepest} deep; hayai reads at most {MAX_NESTING} levels "
                           "(write a literal bracket as \\( or \\[)")


def parse_prompt(text: str) -> ParsedPrompt:
    """Parse an A1111 prompt: LoRA tags out, prompt editing understood, problems noted in `warnings`."""
    if not isinstance(text, str):
        raise RequestError(f"prompt={text!r} must be a string")
    loras: list[LoraTag] = []
    warnings: list[str] = []

    def take(match: re.Match) -> str:
        kind, args = match.group(1), match.group(2)
        if kind in _LORA_TYPES:
            loras.append(_lora_tag(match.group(0), args))
        else:
            warnings.append(f"{match.group(0)}: extra network type {kind!r} is not supported; the tag was removed")
        return ""

    without = _EXTRA_NETWORK.sub(take, text)
    _check_nesting(without)
    tree = _schedule_tree(without)
    if _AND.search(without):
        warnings.append("AND (composable diffusion) is not supported: the prompt is encoded as one text with 'AND' in it")
    if tree is None and ("[" in without or "|" in without):
        warnings.append("the prompt's brackets do not form A1111 prompt-editing constructs; it is used as written")
    names = [tag.name for tag in loras]
    for name in sorted({n for n in names if names.count(n) > 1}):
        warnings.append(f"LoRA {name!r} is tagged {names.count(name)} times")
    for tag in loras:
        for what, weight in (("te", tag.te_weight), ("unet", tag.unet_weight)):
            if not 0 <= weight <= 2:
                warnings.append(f"{tag.text}: {what} weight {weight:g} is outside 0..2")
    return ParsedPrompt(text, without, tuple(loras), tuple(warnings), tree)
