"""Generate the shipped sample text (data/sample.txt): deterministic, Zipf-like.

    python -m wordcount.sample [--words 6000] [--seed 42] [--output data/sample.txt]

Word frequencies follow Zipf's law (the k-th most common word appears about 1/k as
often as the first). The vocabulary is common English words followed by invented
but pronounceable ones, arranged in sentences and paragraphs with punctuation, so
the tokenizer has something to do. The same arguments always give the same text.
"""

from __future__ import annotations

import argparse
import random
import sys
import textwrap
from pathlib import Path

COMMON = """
the of and to a in is it that was for on are as with he they at be this from
have or by one had not but what all were when we there can an your which their
said if do will each about how up out them then she many some so these would
other into has more her two like him see time could no make than first been its
who now people my made over did down only way find use may water long little
very after words called just where most know get through back much before go
good new write our used me man too any day same right look think also around
another came come work three word must because does part even place well such
here take why things help put years different away again off went old number
great tell men say small every found still between name should home big give
air line set own under read last never us left end along while might next sound
below saw something thought both few those always looked show large often
together asked house don't world going want school important until form food
keep children feet land side without boy once animals life enough took
sometimes four head above kind began almost live page got earth need far hand
high year mother light parts country father let night following picture being
study second eyes soon times story boys since white days ever paper hard near
sentence better best across during today others however sure means knew it's
try told young miles sun ways thing whole hear example heard several change
answer room sea against top turned learn point city play toward five using
himself usually river morning mountain island garden lantern harbor meadow
""".split()

ONSETS = ["b", "br", "c", "ch", "d", "dr", "f", "fl", "g", "gr", "h", "j", "k", "l",
          "m", "n", "p", "pl", "r", "s", "sh", "st", "t", "th", "tr", "v", "w"]
VOWELS = ["a", "e", "i", "o", "u", "a", "e", "i", "o", "ea", "ee", "oo", "ou"]
CODAS = ["", "", "", "n", "r", "l", "s", "t", "nd", "st", "m"]
ENDINGS = ["", "", "", "", "er", "ing", "ed", "ly", "ful", "en", "s"]


def invented_words(rng: random.Random, count: int, taken: set[str]) -> list[str]:
    words: list[str] = []
    while len(words) < count:
        syllables = rng.choice((1, 2, 2))
        w = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS)
                    for _ in range(syllables)) + rng.choice(ENDINGS)
        if 3 <= len(w) <= 9 and w not in taken:
            taken.add(w)
            words.append(w)
    return words


def vocabulary(rng: random.Random, size: int) -> list[str]:
    common = list(dict.fromkeys(COMMON))
    return common + invented_words(rng, max(size - len(common), 0), set(common))


def generate(words: int = 6000, seed: int = 42, vocab_size: int = 1200) -> str:
    """A text of exactly `words` words (as the tokenizer counts them)."""
    rng = random.Random(seed)
    vocab = vocabulary(rng, vocab_size)
    weights = [1.0 / (rank ** 1.05) for rank in range(1, len(vocab) + 1)]
    stream = rng.choices(vocab, weights=weights, k=words)

    paragraphs: list[str] = []
    sentences: list[str] = []
    i = 0
    while i < len(stream):
        n = min(rng.randint(6, 18), len(stream) - i)
        sentence = stream[i : i + n]
        i += n
        parts = []
        for j, w in enumerate(sentence):
            if j == 0:
                w = w[0].upper() + w[1:]
            elif j < n - 2 and rng.random() < 0.06:
                w += ","
            parts.append(w)
        end = rng.choices([".", "!", "?", ";"], weights=[80, 5, 10, 5])[0]
        sentences.append(" ".join(parts) + end)
        if len(sentences) >= rng.randint(4, 8) or i >= len(stream):
            paragraphs.append(textwrap.fill(" ".join(sentences), width=76))
            sentences = []
    return "\n\n".join(paragraphs) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m wordcount.sample", description=__doc__.splitlines()[0])
    p.add_argument("--words", type=int, default=6000)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--output", type=Path, default=None, help="file to write (default: stdout)")
    args = p.parse_args(argv)
    out = generate(args.words, args.seed)
    if args.output is None:
        sys.stdout.write(out)
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(out, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
