"""Learning a WordPiece vocabulary, deterministically.

The vocabulary is grown as the `tokenizers` library's WordPiece trainer grows it: start from every
character seen, and a `##c` continuation piece for each seen after a word's first position, then repeatedly
merge the most frequent adjacent pair of pieces across the corpus (weighted by word count) and add the
merged piece, until the vocabulary is full or no pair is frequent enough. `a` + `##b` becomes `ab`,
`##a` + `##b` becomes `##ab`. Encoding then uses WordPiece's greedy longest-match-first, as BERT.

Why plmkit grows it itself: that trainer numbers the `##c` pieces in hash-map order, and since ties between
equally frequent pairs are broken by piece id, two runs on the same text give different vocabularies (a
dozen of a thousand pieces) and different ids for the same word. Here every id is fixed by sorting: special
tokens in the order given, then characters, then `##` characters, each by code point, then merges in the
order made; among pairs of equal count the one with the lower ids merges first. The result depends only on
the word counts, never on the process, and where no ties decide it, it is the vocabulary that trainer learns.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Mapping, Sequence

__all__ = ["learn_wordpiece_vocab"]


def _merge_word(seq: list[int], a: int, b: int, new: int) -> list[int]:
    """Replace each non-overlapping (a, b) in `seq`, left to right, by `new`."""
    out: list[int] = []
    i = 0
    while i < len(seq):
        if i + 1 < len(seq) and seq[i] == a and seq[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(seq[i])
            i += 1
    return out


def learn_wordpiece_vocab(
    word_counts: Mapping[str, int],
    vocab_size: int,
    special_tokens: Sequence[str] = (),
    min_frequency: int = 2,
    prefix: str = "##",
) -> list[str]:
    """The vocabulary, in id order, learned from `word_counts` (pre-tokenized word -> occurrences).

    Stops at `vocab_size` pieces or when the most frequent pair occurs fewer than `min_frequency` times,
    so the result can be shorter than `vocab_size` on a small corpus.
    """
    words = sorted(w for w, c in word_counts.items() if w and c > 0)
    chars = sorted({ch for w in words for ch in w})  # every character stands alone, wherever it was seen
    later = sorted({prefix + ch for w in words for ch in w[1:]})
    vocab: list[str] = list(dict.fromkeys([*special_tokens, *chars, *later]))
    index = {tok: i for i, tok in enumerate(vocab)}
    if len(vocab) >= vocab_size:
        return vocab

    seqs = [[index[w[0]], *(index[prefix + ch] for ch in w[1:])] for w in words]
    weights = [word_counts[w] for w in words]
    pair_count: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)
    for wi, seq in enumerate(seqs):
        for pair in zip(seq, seq[1:]):
            pair_count[pair] += weights[wi]
            where[pair].add(wi)
    # A heap of (-count, a, b): the most frequent pair first, lower ids first among equals. Entries go
    # stale as counts change; a stale one is re-queued with its current count when it surfaces.
    heap = [(-c, a, b) for (a, b), c in pair_count.items()]
    heapq.heapify(heap)

    while len(vocab) < vocab_size and heap:
        neg, a, b = heapq.heappop(heap)
        count = pair_count.get((a, b), 0)
        if count != -neg:
            if count > 0:
                heapq.heappush(heap, (-count, a, b))
            continue
        if count < max(min_frequency, 1):
            break
        right = vocab[b][len(prefix):] if vocab[b].startswith(prefix) else vocab[b]
        piece = vocab[a] + right
        new = index.get(piece)
        if new is None:  # two pairs can spell the same piece ("t"+"##he", "th"+"##e"): keep one id
            new = index[piece] = len(vocab)
            vocab.append(piece)
        rising: set[tuple[int, int]] = set()
        for wi in sorted(where.pop((a, b))):
            old = seqs[wi]
            merged = _merge_word(old, a, b, new)
            if len(merged) == len(old):
                continue
            w = weights[wi]
            for pair in zip(old, old[1:]):
                pair_count[pair] -= w
            for pair in zip(merged, merged[1:]):
                pair_count[pair] += w
                where[pair].add(wi)
                rising.add(pair)
            seqs[wi] = merged
        pair_count.pop((a, b), None)
        for pair in sorted(rising):
            if pair_count[pair] > 0:
                heapq.heappush(heap, (-pair_count[pair], *pair))
    return vocab
