"""Pure text helpers for the word count: tokenize, chunk, count, merge, rank.

No Celery here, so this module is unit-tested on its own and used by both the
client (chunking, ranking) and the tasks (counting, merging).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable, Mapping

# A word: letters/digits, with inner apostrophes kept ("don't", "o'clock").
# Everything else (punctuation, dashes, underscores, whitespace) separates words.
_WORD = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")


def tokenize(text: str) -> list[str]:
    """Lower-cased words of `text`, in order; curly apostrophes become straight ones."""
    return [w.replace("\u2019", "'") for w in _WORD.findall(text.lower())]


def chunk_words(words: list[str], size: int) -> list[list[str]]:
    """Consecutive pieces of `words` of `size` items (the last one may be shorter)."""
    if size < 1:
        raise ValueError(f"chunk size must be at least 1, got {size}")
    return [words[i : i + size] for i in range(0, len(words), size)]


def chunk_text(text: str, words_per_chunk: int) -> list[str]:
    """Split `text` at whitespace into pieces of about `words_per_chunk` words each.

    Splitting only at whitespace never cuts a word, so tokenizing the chunks one by
    one yields exactly the words of the whole text, each once and in order.
    """
    pieces = text.split()
    return [" ".join(group) for group in chunk_words(pieces, words_per_chunk)]


def count_words(text: str) -> dict[str, int]:
    """Occurrences of each word of `text`."""
    return dict(Counter(tokenize(text)))


def merge_counts(counts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """Sum several word counts into one."""
    total: Counter[str] = Counter()
    for c in counts:
        total.update(c)
    return dict(total)


def top_words(counts: Mapping[str, int], n: int | None = None) -> list[tuple[str, int]]:
    """(word, count) pairs, most frequent first, ties in alphabetical order; the first `n`."""
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return ranked if n is None else ranked[: max(n, 0)]
