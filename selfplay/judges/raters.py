"""A population of raters: P(a ≻ b) is the mean of Bradley–Terry comparisons, one per
rater, each on its own criterion of the response text (the prompt is not read):

    P(a ≻ b) = (1/R) Σ_r σ((c_r(a) − c_r(b)) / s_r),

with σ the logistic function and, for the R = 3 raters of `RATERS`:

- sentiment:   c = VADER's compound polarity in [−1, 1] (vaderSentiment; Hutto &
               Gilbert 2014), scale s = 0.25;
- readability: c = the Flesch reading ease (textstat; Flesch 1948: higher reads
               more easily; 0 for a text with no words), scale s = 10;
- brevity:     c = −(number of whitespace-separated words), scale s = 10.

Each rater alone is transitive (a Bradley–Terry model ranks by its c_r), but their
mixture is not in general: three raters can prefer a ≻ b ≻ c ≻ a by a majority
of their probabilities, the Condorcet cycle. That is the case Nash learning from
human feedback is for (Munos et al. 2023): no reward model can express it.

P(b ≻ a) = 1 − P(a ≻ b) exactly up to rounding (each σ term is computed as
½ + ½·tanh(d/2), odd about ½), and P(a ≻ a) = ½.

This file imports nothing from selfplay, so it can be copied and edited as a
user's own judge (`selfplay demo real` writes it next to the policy):

    judge: {kind: function, function: real/raters.py:prob, returns: prob}

Needs `vaderSentiment` and `textstat` < 0.7.9 (later versions download NLTK's
cmudict at first use; 0.7.4–0.7.8 ship their data): `pip install 'selfplay[real]'`.
"""

from __future__ import annotations

import math
from functools import lru_cache

#: (criterion, Bradley–Terry scale s_r) per rater.
RATERS = (("sentiment", 0.25), ("readability", 10.0), ("brevity", 10.0))


@lru_cache(maxsize=1)
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def sentiment(text: str) -> float:
    """VADER's compound polarity of `text`, in [−1, 1]."""
    return float(_vader().polarity_scores(text)["compound"])


def readability(text: str) -> float:
    """Flesch reading ease of `text` (textstat); 0 for a text with no words."""
    if not text.split():
        return 0.0
    import textstat

    return float(textstat.flesch_reading_ease(text))


def brevity(text: str) -> float:
    """−(number of whitespace-separated words)."""
    return -float(len(text.split()))


CRITERIA = {"sentiment": sentiment, "readability": readability, "brevity": brevity}


@lru_cache(maxsize=4096)
def criteria(text: str) -> tuple[float, ...]:
    """(c_r(text) for each rater of RATERS)."""
    return tuple(CRITERIA[name](text) for name, _ in RATERS)


def rater_probs(a: str, b: str) -> tuple[float, ...]:
    """(σ((c_r(a) − c_r(b)) / s_r) for each rater r)."""
    ca, cb = criteria(a), criteria(b)
    return tuple(
        0.5 + 0.5 * math.tanh(0.5 * (x - y) / s)
        for x, y, (_, s) in zip(ca, cb, RATERS, strict=True)
    )


def prob(prompt, a: str, b: str) -> float:
    """P(a ≻ b): the raters' mean Bradley–Terry probability (module docstring)."""
    p = rater_probs(a, b)
    return sum(p) / len(p)
