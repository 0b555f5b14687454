"""E5 probe sets: short movie reviews, each with exactly one marked sentiment-bearing word.

Two sets: ours (:data:`PROBE_REVIEWS`, below) and the authors' 50 probe sentences
(``e5_probes/e5_probes.csv`` in the shared data folder, :func:`authors_probes`), of which the
authors keep only those whose marked token is a single WordPiece of the tokenised sentence
(44 with the shared uncased tokenizer).

The marked word (between asterisks) is the only word that decides the review's polarity;
the rest is neutral filler about a film.  The E5 score counts on how many reviews a
model's last-layer ``[CLS]`` attention (averaged over heads) is highest on the marked word.
Written for this project; label 1 = positive, 0 = negative.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass

AUTHORS_PROBE_FILE = "e5_probes/e5_probes.csv"

_MARK = re.compile(r"\*([^*]+)\*")

#: (review with one *marked* word, label)
PROBE_REVIEWS: tuple[tuple[str, int], ...] = (
    ("The film was *wonderful* from start to finish.", 1),
    ("I thought the ending was *brilliant* and the music fit it.", 1),
    ("The lead actress gives a *superb* performance here.", 1),
    ("We watched it on a Sunday and it was *delightful*.", 1),
    ("The story of the two brothers is *moving* in the final act.", 1),
    ("Its second half is *excellent*, with a long scene at the harbor.", 1),
    ("This remake is *charming* in the way it treats the old house.", 1),
    ("The dialogue in the kitchen scenes is *hilarious*.", 1),
    ("My friends and I found the whole movie *enjoyable*.", 1),
    ("The camera work over the desert is *beautiful*.", 1),
    ("I *loved* the way the director shot the train station.", 1),
    ("The cast of the sequel is *terrific* this time around.", 1),
    ("The plot about the missing letter is *clever* and tight.", 1),
    ("The animation in this feature is *stunning* on a big screen.", 1),
    ("Her scenes with the old sailor are *touching*.", 1),
    ("The pacing of the heist is *perfect* for a Friday night.", 1),
    ("Overall the documentary is *fascinating* about the city's bridges.", 1),
    ("The soundtrack of this western is *great* throughout.", 1),
    ("The young actor is *impressive* as the farmer's son.", 1),
    ("I found the courtroom drama *gripping* until the verdict.", 1),
    ("The costumes and sets of the period piece are *gorgeous*.", 1),
    ("This little comedy about a bakery is *sweet*.", 1),
    ("The final chase through the market is *thrilling*.", 1),
    ("The script for the second season is *smart* and careful.", 1),
    ("The musical numbers in the film are *fantastic*.", 1),
    ("Watching it with my kids was *fun* for all of us.", 1),
    ("The performance by the villain is *outstanding* in every scene.", 1),
    ("The story of the lighthouse keeper is *memorable*.", 1),
    ("The director's new film is a *masterpiece* of small moments.", 1),
    ("I *enjoyed* the long conversation on the night bus.", 1),
    ("The film was *terrible* from start to finish.", 0),
    ("I thought the ending was *awful* and the music did not fit it.", 0),
    ("The lead actor gives a *dreadful* performance here.", 0),
    ("We watched it on a Sunday and it was *boring*.", 0),
    ("The story of the two sisters is *dull* in the final act.", 0),
    ("Its second half is *horrible*, with a long scene at the airport.", 0),
    ("This remake is *lazy* in the way it treats the old castle.", 0),
    ("The dialogue in the office scenes is *stupid*.", 0),
    ("My friends and I found the whole movie *tedious*.", 0),
    ("The camera work over the mountains is *ugly*.", 0),
    ("I *hated* the way the director shot the hospital.", 0),
    ("The cast of the prequel is *weak* this time around.", 0),
    ("The plot about the stolen painting is *silly* and loose.", 0),
    ("The effects in this feature look *cheap* on a big screen.", 0),
    ("His scenes with the old doctor are *painful*.", 0),
    ("The pacing of the mystery is *slow* for a Friday night.", 0),
    ("Overall the documentary is *pointless* about the town's railway.", 0),
    ("The soundtrack of this thriller is *bad* throughout.", 0),
    ("The young actress is *unconvincing* as the baker's daughter.", 0),
    ("I found the war drama *confusing* until the last battle.", 0),
    ("The costumes and sets of the fantasy epic are *tacky*.", 0),
    ("This little comedy about a garage is *unfunny*.", 0),
    ("The final fight on the rooftop is *predictable*.", 0),
    ("The script for the third season is *clumsy* and careless.", 0),
    ("The songs in the film are *forgettable*.", 0),
    ("Watching it with my parents was a *waste* for all of us.", 0),
    ("The performance by the hero is *wooden* in every scene.", 0),
    ("The story of the night guard is *disappointing*.", 0),
    ("The director's new film is a *mess* of loose moments.", 0),
    ("I *disliked* the long argument in the parking lot.", 0),
)


@dataclass(frozen=True)
class ProbeReview:
    text: str          # the review without markers
    label: int
    word: str          # the marked word
    start: int         # its character span in ``text``
    end: int


def parse_marked(review: str, label: int) -> ProbeReview:
    """Strip the single ``*marker*`` from ``review`` and record its character span."""
    marks = list(_MARK.finditer(review))
    if len(marks) != 1:
        raise ValueError(f"probe review must mark exactly one word, found {len(marks)}: {review!r}")
    m = marks[0]
    text = review[: m.start()] + m.group(1) + review[m.end():]
    return ProbeReview(text, int(label), m.group(1), m.start(), m.start() + len(m.group(1)))


def probe_reviews() -> list[ProbeReview]:
    return [parse_marked(r, y) for r, y in PROBE_REVIEWS]


def authors_probes(tokenizer, data_root=None) -> tuple[list[tuple[int, ProbeReview]], list[tuple[int, str]]]:
    """The authors' probe sentences as ``(index, ProbeReview)`` — the marked span is the first
    word piece equal to the marked token — and the ``(index, reason)`` of those left out
    because the marked token is not a single word piece of the tokenised sentence (the
    authors' rule).  The file is checked against its published sha256."""
    from attnopt.data.shared import DataError, shared_file

    path = shared_file(AUTHORS_PROBE_FILE, data_root)
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        items = [(int(r["index"]), r["sentence"], int(r["label"]), r["marked_token"].strip().lower()) for r in rows]
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"{path}: not the E5 probe table (index, sentence, label, marked_token): {exc}") from None
    usable, excluded = [], []
    for idx, text, label, marked in items:
        enc = tokenizer.encode(text)
        hits = [j for j, t in enumerate(enc.tokens) if t == marked]
        if not hits:
            why = "not in the sentence" if marked not in text.lower() else "split into several word pieces"
            excluded.append((idx, why))
            continue
        start, end = enc.offsets[hits[0]]
        usable.append((idx, ProbeReview(text, label, text[start:end], start, end)))
    return usable, excluded


__all__ = ["PROBE_REVIEWS", "ProbeReview", "parse_marked", "probe_reviews", "authors_probes", "AUTHORS_PROBE_FILE"]
