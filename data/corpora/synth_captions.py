"""The caption grammar of the generated corpus (:mod:`data.corpora.synth`): captions that say only what
a clip's parameters say, in several wordings."""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Sequence

import numpy as np

if TYPE_CHECKING:  # data.corpora.synth imports this module
    from data.corpora.synth import Event

NUM_CAPTIONS = 5
_COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
_TIMES_WORDS = {1: "once", 2: "twice", 3: "three times", 4: "four times"}
_LOUD_WORDS = {"loud": ("loud",), "quiet": ("quiet", "faint", "soft")}


def _loud(event: Event, rng: np.random.Generator, p: float = 0.5) -> str:
    """A loudness adjective with a trailing space, or nothing (captions need not say it)."""
    if rng.random() >= p:
        return ""
    words = _LOUD_WORDS[event.loudness]
    return words[int(rng.integers(len(words)))] + " "


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _choose(options: Sequence[str], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]


def noun_phrase(event: Event, rng: np.random.Generator) -> str:
    """A noun phrase for the event ("three high pitched beeps", "a low hum fading in")."""
    n, loud = event.count, _loud(event, rng)
    if event.kind == "beep":
        if n == 1:
            return _article(f"{loud}{event.pitch} pitched beep")
        return f"{_COUNT_WORDS[n]} {loud}{event.pitch} pitched beeps"
    if event.kind == "chirp":
        return _article(f"{loud}{event.direction} chirp") if n == 1 else \
            f"{_COUNT_WORDS[n]} {loud}{event.direction} chirps"
    if event.kind == "burst":
        noise = _choose(("static", "white noise"), rng)
        return _article(f"{loud}burst of {noise}") if n == 1 else f"{_COUNT_WORDS[n]} {loud}bursts of {noise}"
    if event.kind == "click":
        return f"{_COUNT_WORDS[n]} {loud}clicks"
    fading = {None: "", "in": " fading in", "out": " fading out"}[event.fade]
    # Without a fade, an optional adjective for the steadiness keeps the five captions distinct.
    steady = "" if event.fade else _choose(("", "wailing ") if event.kind == "siren" else
                                           ("", "steady ", "continuous "), rng)
    if event.kind == "siren":
        return _article(f"{loud}{steady}{event.pitch} siren") + fading
    if event.kind == "hum":
        return _article(f"{loud}{steady}low {_choose(('hum', 'electrical hum', 'drone'), rng)}") + fading
    return f"{loud}{steady}static noise{fading}".strip()


def clause(event: Event, rng: np.random.Generator) -> str:
    """A clause for the event ("a high pitched beep repeats three times", "a siren fades out")."""
    n, loud = event.count, _loud(event, rng)
    times = _TIMES_WORDS[n]
    if event.kind == "beep":
        subject = _article(f"{loud}{event.pitch} pitched beep")
        if n == 1:
            return _choose((f"{subject} sounds once", f"{_article(loud + event.pitch)} tone beeps once"), rng)
        return _choose((f"{subject} repeats {times}", f"{_article(loud + event.pitch)} tone beeps {times}"), rng)
    if event.kind == "chirp":
        way = "up" if event.direction == "rising" else "down"
        return _choose((f"{_article(loud + event.direction)} chirp sounds {times}",
                        f"{_article(loud + 'tone')} sweeps {way} {times}"), rng)
    if event.kind == "burst":
        noise = _choose(("static", "white noise"), rng)
        return f"{loud}{noise} bursts {times}".strip()
    if event.kind == "click":
        return _choose((f"{_article(loud + 'click')} repeats {times}", f"something clicks {times}"), rng)
    verb = {"siren": "wails", "hum": "drones", "static": "hisses"}[event.kind]
    if event.kind == "siren":
        subject = _article(f"{loud}{event.pitch} siren")
    elif event.kind == "hum":
        subject = _article(f"{loud}low hum")
    else:
        subject = f"{loud}static noise"
    if event.fade is None:
        return _choose((f"{subject} {verb}", f"{subject} {verb} steadily", f"{subject} {verb} continuously"), rng)
    return _choose((f"{subject} fades {event.fade}", f"{subject} {verb} and fades {event.fade}"), rng)


def caption(events: Sequence[Event], rng: np.random.Generator) -> str:
    """One caption for the clip's events, in temporal order."""
    if len(events) == 1:
        return clause(events[0], rng) if rng.random() < 0.7 else noun_phrase(events[0], rng)
    first, second = events
    form = int(rng.integers(4))
    if form == 0:
        return f"{clause(first, rng)}, followed by {noun_phrase(second, rng)}"
    if form == 1:
        return f"{clause(first, rng)} and then {clause(second, rng)}"
    if form == 2:
        return f"{noun_phrase(first, rng)}, then {noun_phrase(second, rng)}"
    return f"{clause(second, rng)} after {noun_phrase(first, rng)}"


def captions_for(events: Sequence[Event], rng: np.random.Generator, k: int = NUM_CAPTIONS) -> List[str]:
    """``k`` distinct captions (distinct when the grammar allows; repeats fill up otherwise)."""
    seen: List[str] = []
    for _ in range(50 * k):
        text = " ".join(caption(events, rng).split())
        if text not in seen:
            seen.append(text)
        if len(seen) == k:
            return seen
    return (seen * k)[:k]
