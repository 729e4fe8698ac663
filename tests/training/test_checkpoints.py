"""Tests for training/checkpoints.py: atomic folders, resume discovery and best-K rotation."""

from __future__ import annotations

from pathlib import Path


from training.checkpoints import CheckpointManager, best_entry


def _fake_checkpoint(manager: CheckpointManager, step: int, score: float, all_empty: bool = False) -> str:
    tmp = manager.tmp_path(step)
    (Path(tmp) / "model").mkdir()
    (Path(tmp) / "model" / "weights.txt").write_text(str(step))
    return manager.commit(tmp, step, {"global_step": step, "scores": {"cider_d": score}, "all_empty": all_empty})


def test_checkpoint_manager_latest_ignores_incomplete(tmp_path):
    manager = CheckpointManager(str(tmp_path), keep_best=2)
    assert manager.latest() is None
    _fake_checkpoint(manager, 10, 0.1)
    # A killed run leaves a temp folder and maybe a renamed folder without trainer_state.json.
    Path(manager.tmp_path(20)).joinpath("state").mkdir()
    (tmp_path / "checkpoints" / "step_00000030").mkdir()
    assert manager.latest() == manager.path(10)
    assert CheckpointManager.read_state(manager.latest())["global_step"] == 10


def test_checkpoint_rotation_keeps_best_k_and_newest(tmp_path):
    manager = CheckpointManager(str(tmp_path), keep_best=2)
    for step, score in [(1, 0.3), (2, 0.9), (3, 0.1), (4, 0.5), (5, 0.2)]:
        _fake_checkpoint(manager, step, score)
        manager.rotate("cider_d")
    kept = [step for step, _ in manager.complete()]
    assert kept == [2, 4, 5]  # best two (0.9, 0.5) + the newest for resume
    manager.update_best(str(Path(manager.path(2)) / "model"))
    manager.update_best(str(Path(manager.path(4)) / "model"))
    assert (tmp_path / "best" / "weights.txt").read_text() == "4"
    assert not (tmp_path / "best.tmp").exists() and not (tmp_path / "best.old").exists()


def test_rotation_never_keeps_an_all_empty_pass_among_the_best(tmp_path):
    # An all-empty pass can score above the others (e.g. a metric that rewards brevity), yet is
    # never a best checkpoint; it survives only while it is the newest (for resume).
    manager = CheckpointManager(str(tmp_path), keep_best=2)
    for step, score, empty in [(1, 0.3, False), (2, 0.9, True), (3, 0.1, False), (4, 0.5, False)]:
        _fake_checkpoint(manager, step, score, all_empty=empty)
        manager.rotate("cider_d")
        if step == 2:
            assert 2 in [s for s, _ in manager.complete()]
    assert [step for step, _ in manager.complete()] == [1, 4]


def test_the_earliest_of_equal_scores_is_best_in_summary_and_rotation(tmp_path):
    # A later pass must beat the best so far to replace it (an equal score is no progress).
    history = [{"step": s, "epoch": s, "scores": {"cider_d": v}} for s, v in [(1, 0.2), (2, 0.5), (3, 0.5), (4, 0.4)]]
    assert best_entry(history, "cider_d")["step"] == 2
    assert best_entry([{**history[0], "all_empty": True}], "cider_d") is None
    manager = CheckpointManager(str(tmp_path), keep_best=1)
    for entry in history:
        _fake_checkpoint(manager, entry["step"], entry["scores"]["cider_d"])
        manager.rotate("cider_d")
    assert [step for step, _ in manager.complete()] == [2, 4]  # the best (earliest of two) + the newest
