"""Tests of scoring/diversity.py: when are generated captions degenerate, and what is said."""

from __future__ import annotations

from scoring.diversity import caption_stats, degenerate_warning


def test_stats_count_empty_and_distinct_captions():
    stats = caption_stats(["a dog barks", "  ", "", "a dog barks", "rain falls"])
    assert (stats.total, stats.empty, stats.distinct) == (5, 2, 2)
    assert (stats.top_caption, stats.top_count) == ("a dog barks", 2)
    assert not stats.all_empty and not stats.one_caption
    assert caption_stats(["", ""]).all_empty and not caption_stats([]).all_empty


def test_all_empty_captions_warn_with_counts_and_the_hint():
    message = degenerate_warning(["", "", ""], "raise optim.epochs", "validation clips")
    assert message.startswith("3 of 3 captions for validation clips are empty (0 distinct captions)")
    assert message.endswith("; raise optim.epochs")


def test_one_caption_for_nearly_all_clips_warns():
    same = ["a man speaks"] * 19 + ["rain"]
    message = degenerate_warning(same, "hint")
    assert "19 of 20 clips got the same caption 'a man speaks'" in message and "(2 distinct captions)" in message
    assert degenerate_warning(["a man speaks", "a man speaks"], "hint") is not None
    # 8 of 10 is varied enough; so are two different captions, and a single clip.
    assert degenerate_warning(["a man speaks"] * 8 + ["rain", "wind"], "hint") is None
    assert degenerate_warning(["a man speaks", "rain"], "hint") is None
    assert degenerate_warning(["a man speaks"], "hint") is None


def test_some_empty_captions_are_reported_too():
    message = degenerate_warning(["a dog", "", "rain", "wind"], "hint", "files")
    assert message.startswith("1 of 4 captions for files are empty (3 distinct captions)")
