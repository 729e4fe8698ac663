"""Tests for data/extraction/batching.py: length-aware batch plans."""

from data.extraction.batching import plan_batches


def test_plan_batches_groups_similar_lengths():
    durations = [1.0, 30.0, 2.0, 29.0, 10.0, 0.0]
    batches = plan_batches(durations, batch_size=2, max_batch_seconds=1000)
    assert batches == [[1, 3], [4, 2], [0, 5]]
    # The padded-seconds cap closes batches early; a clip above the cap goes alone.
    assert plan_batches(durations, batch_size=8, max_batch_seconds=40) == [[1], [3], [4, 2, 0, 5]]
    assert sorted(sum(plan_batches(durations, 3, 50), [])) == list(range(6))
