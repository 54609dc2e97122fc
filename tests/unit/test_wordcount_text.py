"""Unit tests of the pure parts of the sample project (projects/wordcount)."""

import sys
from collections import Counter
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2] / "projects" / "wordcount"
sys.path.insert(0, str(PROJECT))

from wordcount import sample, text  # noqa: E402


def test_tokenize_lowercases_and_drops_punctuation():
    assert text.tokenize("The cat, the HAT! And-so on... 42 times?") == [
        "the", "cat", "the", "hat", "and", "so", "on", "42", "times",
    ]


def test_tokenize_keeps_inner_apostrophes_and_unicode_letters():
    assert text.tokenize("Don't stop 'quoted' o\u2019clock caf\u00e9 na\u00efve") == [
        "don't", "stop", "quoted", "o'clock", "caf\u00e9", "na\u00efve",
    ]


def test_tokenize_empty_and_separators_only():
    assert text.tokenize("") == []
    assert text.tokenize(" \n\t-- ,; _ ") == []


def test_chunk_words_sizes():
    words = [str(i) for i in range(10)]
    chunks = text.chunk_words(words, 3)
    assert [len(c) for c in chunks] == [3, 3, 3, 1]
    assert [w for c in chunks for w in c] == words
    assert text.chunk_words([], 3) == []
    with pytest.raises(ValueError):
        text.chunk_words(words, 0)


@pytest.mark.parametrize("size", [1, 7, 100, 300, 10_000])
def test_chunk_text_covers_every_word_exactly_once(size):
    content = sample.generate(words=2000, seed=7)
    chunks = text.chunk_text(content, size)
    assert all(len(c.split()) <= size for c in chunks)
    assert [w for c in chunks for w in text.tokenize(c)] == text.tokenize(content)


def test_chunk_text_never_cuts_a_word():
    content = "alpha beta-gamma\n\ndon't  stop,\tnow"
    for size in range(1, 6):
        rejoined = [w for c in text.chunk_text(content, size) for w in text.tokenize(c)]
        assert rejoined == text.tokenize(content)


def test_count_words():
    assert text.count_words("a b a. A!") == {"a": 3, "b": 1}
    assert text.count_words("") == {}


def test_merge_counts_sums():
    merged = text.merge_counts([{"a": 1, "b": 2}, {"b": 3, "c": 4}, {}])
    assert merged == {"a": 1, "b": 5, "c": 4}
    assert text.merge_counts([]) == {}


def test_map_reduce_equals_direct_count():
    content = sample.generate(words=3000, seed=3)
    parts = [text.count_words(c) for c in text.chunk_text(content, 250)]
    assert text.merge_counts(parts) == dict(Counter(text.tokenize(content)))


def test_top_words_orders_by_count_then_word():
    counts = {"b": 2, "a": 2, "c": 5, "d": 1}
    assert text.top_words(counts, 3) == [("c", 5), ("a", 2), ("b", 2)]
    assert text.top_words(counts) == [("c", 5), ("a", 2), ("b", 2), ("d", 1)]
    assert text.top_words(counts, 0) == []
    assert text.top_words({}, 5) == []


def test_sample_is_deterministic_and_zipf_like():
    a = sample.generate(words=5000, seed=1)
    assert a == sample.generate(words=5000, seed=1)
    assert a != sample.generate(words=5000, seed=2)
    words = text.tokenize(a)
    assert len(words) == 5000
    ranked = text.top_words(text.count_words(a))
    # the most frequent word is far more common than the tenth
    assert ranked[0][1] > 4 * ranked[9][1]


def test_shipped_sample_matches_generator():
    shipped = (PROJECT / "data" / "sample.txt").read_text(encoding="utf-8")
    assert shipped == sample.generate()
    assert len(text.tokenize(shipped)) == 6000
