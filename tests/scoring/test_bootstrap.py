"""Bootstrap intervals, paired comparison and ``python -m scoring compare`` on real METEOR / CIDEr-D.

The corpora are generated here: captions drawn from a small grammar of sound events, the
"good" system picks words of its own clip's references, the "bad" one another clip's caption.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest

import scoring.bootstrap as B
import scoring.metrics as S
import scoring.names as N
from scoring.__main__ import main as scoring_main
from tests.scoring.test_metrics import _fresh_cache

SOURCES = ["a dog", "a man", "rain", "a car", "birds", "a siren", "water", "a bell", "wind", "a crowd"]
ACTIONS = ["barks", "speaks", "falls", "passes by", "chirp", "wails", "flows", "rings", "blows", "cheers"]
PLACES = ["outside", "in the distance", "on a roof", "nearby", "in a park", "on a street"]


def corpus(num_clips: int, seed: int = 0) -> tuple[list[str], list[str], list[list[str]]]:
    """(good captions, bad captions, references) of ``num_clips`` clips; the first clips of a
    larger corpus are those of a smaller one with the same seed."""
    rng = np.random.default_rng(seed)
    good, refs = [], []
    for _ in range(num_clips):
        s, a = rng.integers(len(SOURCES)), rng.integers(len(ACTIONS))
        places = rng.choice(len(PLACES), size=3, replace=False)
        refs.append([f"{SOURCES[s]} {ACTIONS[a]} {PLACES[p]}" for p in places])
        # Right source, sometimes the wrong action or place: per-clip scores vary.
        action = ACTIONS[a] if rng.random() < 0.6 else ACTIONS[rng.integers(len(ACTIONS))]
        good.append(f"{SOURCES[s]} {action} {PLACES[rng.integers(len(PLACES))]}")
    bad = good[1:] + good[:1]  # another clip's caption
    return good, bad, refs


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return _fresh_cache(tmp_path_factory.mktemp("bootstrap"))


def test_resample_counts():
    counts = B.resample_counts(7, 50, seed=3)
    assert counts.shape == (50, 7) and (counts.sum(axis=1) == 7).all()
    np.testing.assert_array_equal(counts, B.resample_counts(7, 50, seed=3))  # fixed seed
    assert not np.array_equal(counts, B.resample_counts(7, 50, seed=4))


def test_meteor_of_a_resample_equals_meteor_of_that_corpus(cache):
    good, _, refs = corpus(4)
    scores = S.score_clips(good, refs, ["meteor"], cache_dir=cache)
    counts = np.array([[1.0, 1.0, 1.0, 1.0], [2.0, 0.0, 1.0, 1.0]])
    resampled = B.resampled_scores(scores, counts)["meteor"]
    assert resampled[0] == pytest.approx(scores.corpus["meteor"], abs=1e-12)
    drawn = [0, 0, 2, 3]
    direct = S.score_clips([good[i] for i in drawn], [refs[i] for i in drawn], ["meteor"], cache_dir=cache)
    assert resampled[1] == pytest.approx(direct.corpus["meteor"], abs=1e-12)
    # METEOR's corpus score is not the mean of its per-clip scores, so the stats matter.
    assert abs(direct.corpus["meteor"] - np.mean(direct.per_clip["meteor"])) > 1e-4


def test_interval_contains_the_corpus_value_and_shrinks_with_more_clips(cache):
    widths = {}
    for num_clips in (12, 96):
        good, _, refs = corpus(num_clips)
        scores = S.score_clips(good, refs, ["meteor", "cider_d", "vocab"], cache_dir=cache)
        # CIDEr-D's corpus value is the mean of its per-clip values (IDF of the whole corpus).
        assert scores.corpus["cider_d"] == pytest.approx(np.mean(scores.per_clip["cider_d"]))
        spread = B.intervals(scores, 1000)
        assert set(spread) == {"meteor", "cider_d"}  # Vocab has none (design §8)
        for name, (low, high) in spread.items():
            assert low < scores.corpus[name] < high, (name, num_clips)
            widths[name, num_clips] = high - low
    for name in ("meteor", "cider_d"):
        assert widths[name, 96] < 0.6 * widths[name, 12], name


def test_paired_differences_of_a_system_with_itself_and_with_a_worse_one(cache):
    good, bad, refs = corpus(40)
    metrics = ["meteor", "cider_d", "vocab"]
    scores_good = S.score_clips(good, refs, metrics, cache_dir=cache)
    scores_bad = S.score_clips(bad, refs, metrics, cache_dir=cache)
    same = B.paired_differences(scores_good, scores_good, 500)
    for name in ("meteor", "cider_d"):
        d = same[name]
        assert d.diff == 0.0 and d.low == 0.0 and d.high == 0.0 and d.b_wins == 0.0
    better = B.paired_differences(scores_bad, scores_good, 500)  # B (good) - A (bad)
    for name in ("meteor", "cider_d"):
        d = better[name]
        assert d.diff > 0 and 0 < d.low < d.diff < d.high and d.b_wins > 0.99, name
    assert better["vocab"].low is None and better["vocab"].diff == 0.0  # same words, shifted
    # Paired: the interval of the difference is narrower than the two systems' intervals side by side.
    spread_good, spread_bad = B.intervals(scores_good, 500), B.intervals(scores_bad, 500)
    side_by_side = (spread_good["cider_d"][1] - spread_good["cider_d"][0]) + (spread_bad["cider_d"][1] -
                                                                               spread_bad["cider_d"][0])
    assert better["cider_d"].high - better["cider_d"].low < side_by_side


def _write_predictions(path, clips, captions, refs):
    from common.io import write_predictions_csv

    write_predictions_csv(path, clips, captions, refs)


def test_compare_cli(tmp_path, capsys, monkeypatch, cache):
    monkeypatch.setenv("AAC_METRICS_CACHE_PATH", str(cache))
    good, bad, refs = corpus(30)
    clips = [f"test/clip{i}.npy" for i in range(len(good))]
    split = tmp_path / "test.csv"
    with split.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file_path", "caption_1", "caption_2", "caption_3"])
        writer.writerows([clip, *r] for clip, r in zip(clips, refs))
    # B is written in another order: clips are matched by file_path.
    _write_predictions(tmp_path / "a.csv", clips, bad, refs)
    _write_predictions(tmp_path / "b.csv", clips[::-1], good[::-1], refs[::-1])
    args = ["compare", str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--test_csv", str(split),
            "--metrics", "cider_d,vocab", "--bootstrap", "300"]
    assert scoring_main(args) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.split()[:1] in (["CIDEr-D"], ["Vocab"])}
    a_cider = S.score_clips(bad, refs, ["cider_d"], cache_dir=cache).corpus["cider_d"]
    b_cider = S.score_clips(good, refs, ["cider_d"], cache_dir=cache).corpus["cider_d"]
    cells = rows["CIDEr-D"].split()
    assert float(cells[1]) == pytest.approx(a_cider, abs=5e-4) and float(cells[2]) == pytest.approx(b_cider, abs=5e-4)
    assert float(cells[3]) == pytest.approx(b_cider - a_cider, abs=5e-4) and cells[4].startswith("[")
    assert cells[-2:] == ["100.0", "%"]
    assert "[" not in rows["Vocab"]  # no interval for the vocabulary
    assert "30 clips" in out and "300 resamples" in out

    # Different clips: refused in one line, nothing scored.
    _write_predictions(tmp_path / "c.csv", clips[:-1], good[:-1], refs[:-1])
    assert scoring_main(args[:2] + [str(tmp_path / "c.csv")] + args[3:]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "caption different clips" in err and "test/clip29.npy" in err
    _write_predictions(tmp_path / "d.csv", ["elsewhere.npy"], ["x"], [["y"]])
    assert scoring_main(["compare", str(tmp_path / "d.csv"), str(tmp_path / "d.csv"), "--test_csv", str(split),
                         "--metrics", "cider_d"]) == 1
    assert "not in" in capsys.readouterr().err


def test_format_scores_with_intervals():
    table = N.format_scores({"cider_d": 0.48312, "vocab": 551.0, "meteor": 0.2},
                            intervals={"cider_d": (0.4712, 0.4951)})
    lines = table.splitlines()[2:]
    assert lines[0].split(None, 1) == ["METEOR", "0.200"]
    assert lines[1].split(None, 1) == ["CIDEr-D", "0.483 [0.471, 0.495]"]
    assert lines[2].split(None, 1) == ["Vocab", "551"]
    assert N.format_scores({"vocab": 12.0}).splitlines()[-1].split() == ["Vocab", "12"]
