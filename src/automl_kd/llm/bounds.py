"""How much of an LLM's answer is kept and read: the bounds that keep a hostile or broken server from filling the
disk or the CPU (docs/llm.md, "Bounds on a request and its answer").

- An answer is cut to :func:`answer_limit` characters, 16 per token of the request's ``max_tokens``, before it
  reaches the transcript, the response cache, the study or the parser. A server that honours ``max_tokens``
  never comes near it: a token of English prose is about 4 characters, and the answers recorded from a real
  model for the replay tests run 1.6 to 2.3 characters a token.
- The parser reads at most :data:`MAX_ANSWER_CHARS` characters, nested at most :data:`MAX_DEPTH` levels (those
  recorded answers nest 4), and its search for lists and objects inside prose scans at most
  :data:`SCAN_BUDGET` characters (and four times the answer's length) in all: an answer beyond these is
  unusable (the proposer re-asks, then falls back), read in a bounded time.
"""

from __future__ import annotations

import logging
import re

#: characters kept per token of ``max_tokens``
CHARS_PER_TOKEN = 16
#: the tokens assumed for a request sent without ``max_tokens`` (``max_tokens: null`` and no schema to bound it)
UNBOUNDED_TOKENS = 16_384
#: the longest answer the parser reads: 32,768 tokens of prose at about 4 characters a token
MAX_ANSWER_CHARS = 131_072
#: the deepest nesting of lists and objects the parser reads
MAX_DEPTH = 32
#: characters the parser's search for lists and objects scans, all attempts together (and at most four times the
#: answer's length)
SCAN_BUDGET = 2 * MAX_ANSWER_CHARS

_BRACKETS = re.compile(r"[\[\]{}]")
log = logging.getLogger("automl_kd.llm")


def answer_limit(max_tokens: int | None) -> int:
    """The most characters kept of an answer to a request with ``max_tokens``."""
    return CHARS_PER_TOKEN * (max_tokens if max_tokens and max_tokens > 0 else UNBOUNDED_TOKENS)


def cut_answer(text: str, max_tokens: int | None) -> tuple[str, dict[str, int] | None]:
    """``text`` cut to :func:`answer_limit` characters, and ``{"chars": ..., "kept": ...}`` when it was cut."""
    limit = answer_limit(max_tokens)
    if len(text) <= limit:
        return text, None
    log.warning(
        "the answer has %d characters, more than max_tokens=%s allows; the first %d are kept",
        len(text),
        max_tokens,
        limit,
    )
    return text[:limit], {"chars": len(text), "kept": limit}


def nesting_depth(text: str, limit: int = MAX_DEPTH) -> int:
    """How deep the brackets of ``text`` nest (quotes are not told apart), counted up to ``limit + 1``."""
    depth = deepest = 0
    for m in _BRACKETS.finditer(text):
        if m.group() in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    break
        elif depth:
            depth -= 1
    return deepest


def unreadable(text: str) -> str | None:
    """Why the parser does not read ``text`` (too long, nested too deep), or None."""
    if nesting_depth(text) > MAX_DEPTH:
        return f"the answer nests lists or objects more than {MAX_DEPTH} levels deep; at most {MAX_DEPTH} are read"
    if len(text) > MAX_ANSWER_CHARS:
        return f"the answer is {len(text)} characters long; at most {MAX_ANSWER_CHARS} are read"
    return None
