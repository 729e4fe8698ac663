"""The quick start (`make demo`): generated corpus -> features -> tiny EnCLAP -> scores -> a caption.

    python scripts/demo.py [--out demo_out] [--clap_ckpt 630k-audioset-fusion-best.pt]

Every step is one of the project's own entry points, run as a user would run it:

1. ``python -m data.corpora.synth``      a seeded corpus of synthesized sound events with 5 captions each
2. ``python data/preprocess.py`` EnCodec codes + CLAP embeddings (seeded random weights unless a
                                 CLAP checkpoint is given; then pretrained EnCodec + that CLAP)
3. ``sh train.sh cfg/tiny.yaml`` the tiny from-scratch recipe, with the corpus paths as overrides
4. ``python evaluate.py``        corpus scores on the held-out test split
5. the trivial system            always the most frequent training caption, scored the same way
6. ``python inference.py``       one test clip captioned from its audio file

This script only strings them together and prints a summary; the tools show their own
progress bars. Everything lands under ``--out``; a rerun reuses the corpus, the features and
a finished training run, and repeats only the (cheap) evaluation and captioning.
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python scripts/demo.py`: make the packages importable
    sys.path.insert(0, str(ROOT))

from common.errors import UserError  # noqa: E402
from common.io import atomic_write_text  # noqa: E402

#: Overrides of cfg/tiny.yaml that fit the demo in a few CPU minutes (measured in the README).
TRAIN_OVERRIDES = (
    # Measured on the 300-clip corpus with random encoders: validation CIDEr-D rises to about
    # 1.0-1.16 (2x the trivial caption) between epochs 13 and 21; the best epoch is kept.
    "optim.epochs=25",
    "optim.batch_size=32",
    "optim.lr=2e-3",
    "optim.warmup_steps=20",
    "eval.batch_size=64",
)


class DemoError(UserError):
    """A step failed or a result is unusable; the message is one line."""


def _shown(cmd: Sequence[str]) -> str:
    """The command as a user would type it (repo-relative paths, the venv's python)."""
    parts = []
    for part in cmd:
        part = str(part)
        if part == sys.executable:
            exe = Path(part)
            part = os.path.relpath(exe, ROOT) if ROOT in exe.parents else "python"
        parts.append(part)
    return " ".join(shlex.quote(p) for p in parts)


class Steps:
    """Numbered, timed steps that run entry points in the repo root."""

    def __init__(self, total: int):
        self.total = total
        self.index = 0
        self.seconds: dict = {}
        self.env = dict(os.environ)
        self.env.setdefault("HF_HUB_OFFLINE", "1")
        self.env.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
        self.env.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), self.env.get("PYTHONPATH")]))

    def header(self, title: str) -> None:
        self.index += 1
        print(f"\n==> [{self.index}/{self.total}] {title}", flush=True)

    def run(self, name: str, cmd: Sequence[str], capture: bool = False) -> str:
        """Runs ``cmd`` (its progress bars and logs go straight to the terminal).

        Args:
            name: the step's short name, for timing and errors.
            cmd: the command.
            capture: also return its stdout (still echoed).

        Raises:
            DemoError: non-zero exit.
        """
        print(f"$ {_shown(cmd)}", flush=True)
        start = time.perf_counter()
        proc = subprocess.run([str(c) for c in cmd], cwd=ROOT, env=self.env, text=True,
                              stdout=subprocess.PIPE if capture else None)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
        if capture and proc.stdout:
            print(proc.stdout, end="", flush=True)
        if proc.returncode != 0:
            raise DemoError(f"step '{name}' failed with exit status {proc.returncode}; its own message is above "
                            f"(command: {_shown(cmd)})")
        return proc.stdout or ""


# --------------------------------------------------------------------------------------------
# Small pieces the summary needs
# --------------------------------------------------------------------------------------------


def most_frequent_caption(train_csv: Path) -> tuple[str, int]:
    """The most frequent training caption (ties: the first in file order) and its count."""
    with open(train_csv, newline="", encoding="utf-8") as f:
        counts = collections.Counter(row["caption"] for row in csv.DictReader(f))
    return counts.most_common(1)[0]


def read_references(split_csv: Path) -> List[List[str]]:
    """The reference captions of every clip of a valid/test CSV, in file order."""
    with open(split_csv, newline="", encoding="utf-8") as f:
        return [[row[k] for k in row if k.startswith("caption_") and row[k]] for row in csv.DictReader(f)]


def describe_features(encodec_root: Path, clap_root: Path, split_csv: Path) -> str:
    """One line saying how much the features vary across a split (the honest part of the demo)."""
    import numpy as np

    with open(split_csv, newline="", encoding="utf-8") as f:
        rels = list(dict.fromkeys(row["file_path"] for row in csv.DictReader(f)))
    codes = np.concatenate([np.load(encodec_root / rel).reshape(-1) for rel in rels])
    clap = np.stack([np.load(clap_root / rel) for rel in rels])  # (N, 512)
    cos = clap @ clap.T
    off = cos[~np.eye(len(rels), dtype=bool)]
    return (f"{len(rels)} training clips: the EnCodec codes take {len(np.unique(codes))} distinct value(s); "
            f"CLAP embeddings: pairwise cosine {off.min():.3f} .. {off.max():.3f} (mean {off.mean():.3f})")


def count_distinct(predictions_csv: Path) -> int:
    """How many different captions evaluate.py's predictions CSV holds."""
    with open(predictions_csv, newline="", encoding="utf-8") as f:
        return len({row["prediction"] for row in csv.DictReader(f)})


_STAMP = "demo_train_args.json"


def training_done(run_dir: Path, overrides: Sequence[str]) -> bool:
    """Whether ``run_dir`` holds a finished demo training with exactly these overrides."""
    stamp = run_dir / _STAMP
    try:
        same = json.loads(stamp.read_text(encoding="utf-8")) == list(overrides)
    except (OSError, ValueError):
        return False
    return same and (run_dir / "best" / "config.json").is_file()


def mark_training_done(run_dir: Path, overrides: Sequence[str]) -> None:
    """Records a finished training (atomically) so that a rerun of the demo reuses it."""
    atomic_write_text(run_dir / _STAMP, json.dumps(list(overrides)))


def score_line(label: str, scores: dict, note: str) -> str:
    """``label: CIDEr-D x  SPIDEr y  METEOR z  (note)`` with CIDEr-D first (the comparison)."""
    names = {"cider_d": "CIDEr-D", "spider": "SPIDEr", "spice": "SPICE", "meteor": "METEOR"}
    parts = [f"{names[k]} {scores[k]:.3f}" for k in ("cider_d", "spider", "spice", "meteor") if k in scores]
    return f"{label:<8} " + "  ".join(parts) + f"  ({note})"


def _display(path: Path) -> str:
    try:
        return os.path.relpath(path, Path.cwd())
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------------------------
# The demo
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``scripts/demo.py`` (``make demo`` passes its variables here)."""
    p = argparse.ArgumentParser(
        description="The quick start: generate a captioned sound corpus, extract features, train the tiny "
                    "EnCLAP, score it against the trivial system and caption one clip. Offline, CPU.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="demo_out", help="folder for everything the demo writes")
    p.add_argument("--num_clips", type=int, default=300, help="clips in the generated corpus (all splits)")
    p.add_argument("--seed", type=int, default=0, help="corpus seed")
    p.add_argument("--clap_ckpt", default=None,
                   help="LAION-CLAP 630k-audioset-fusion-best.pt: use pretrained encoders (EnCodec's weights are "
                        "downloaded by the encodec package) instead of seeded random ones")
    p.add_argument("--metrics", nargs="+", default=["meteor", "cider_d", "spice", "spider"],
                   help="test metrics; those that cannot run here (SPICE/SPIDEr without CoreNLP) are left out "
                        "with a note. CIDEr-D is always computed (the model/trivial comparison)")
    p.add_argument("--require_gain", type=float, default=1.5,
                   help="exit 1 unless the model's test CIDEr-D is at least this many times the trivial "
                        "system's and its captions differ between clips (0 disables the check)")
    p.add_argument("--device", default="cpu", help="device for evaluation and captioning (training: accelerate "
                                                     "config)")
    p.add_argument("train_overrides", nargs="*", metavar="key=value",
                   help=f"extra overrides of cfg/tiny.yaml, after the demo's own ({' '.join(TRAIN_OVERRIDES)})")
    return p


def run_demo(args: argparse.Namespace) -> int:
    """Runs every step; returns the exit status (DemoError for a failed step)."""
    from scoring import MetricsUnavailable, available_metrics, compute_scores, normalize_metrics, preflight

    if args.num_clips < 20:
        # 10 % each for valid and test: CIDEr-D needs at least two clips per split.
        raise DemoError(f"--num_clips must be at least 20 (got {args.num_clips}): validation and test need 2+ clips")
    out = Path(args.out).resolve()
    corpus = out / "corpus"
    kind = "pretrained" if args.clap_ckpt else "random"
    features = out / f"features_{kind}"
    run_dir = out / f"run_{kind}"
    ckpt = run_dir / "best"
    py = sys.executable
    steps = Steps(total=6)
    wall = time.perf_counter()

    # Metrics first: without Java the last step would fail after minutes of work.
    wanted = normalize_metrics(list(dict.fromkeys(list(args.metrics) + ["cider_d"])))
    try:
        preflight(["cider_d"])
    except MetricsUnavailable as err:
        raise DemoError(f"cannot score the demo: {err}") from None
    metrics = list(available_metrics(wanted))
    skipped = [m for m in wanted if m not in metrics]
    if args.clap_ckpt:
        if not Path(args.clap_ckpt).is_file():
            raise DemoError(f"CLAP checkpoint not found: {args.clap_ckpt} (download 630k-audioset-fusion-best.pt "
                            "from https://huggingface.co/lukewys/laion_clap or leave CLAP_CKPT unset)")
        encoders = f"pretrained encoders: EnCodec 24 kHz and CLAP {args.clap_ckpt}"
        encoder_flags = ["--clap_ckpt", args.clap_ckpt]
    else:
        encoders = ("RANDOM-WEIGHT encoders (seeded): no checkpoints given, so EnCodec and CLAP are built "
                    "with random weights; pass CLAP_CKPT=/path/630k-audioset-fusion-best.pt for pretrained ones")
        encoder_flags = ["--random_encoders"]
    print(f"EnCLAP demo -> {_display(out)}\nfeatures: {encoders}\ntest metrics: "
          f"{', '.join(metrics)}" + (f" (not available here: {', '.join(skipped)})" if skipped else ""), flush=True)

    steps.header("generate the captioned sound corpus")
    steps.run("corpus", [py, "-m", "data.corpora.synth", "--out", corpus, "--num_clips", args.num_clips,
                         "--seed", args.seed])

    steps.header("extract EnCodec codes and CLAP embeddings")
    steps.run("features", [py, "data/preprocess.py", "--data_path", corpus / "audio",
                           "--encodec_path", features / "encodec", "--clap_path", features / "clap",
                           "--device", args.device]
              + (["--clap_ckpt", args.clap_ckpt] if args.clap_ckpt else ["--random_weights"]))
    print(describe_features(features / "encodec", features / "clap", corpus / "csv" / "train.csv"), flush=True)

    steps.header("train the tiny EnCLAP (sh train.sh cfg/tiny.yaml)")
    overrides = [f"output_dir={run_dir}", f"data.train_csv={corpus / 'csv' / 'train.csv'}",
                 f"data.val_csv={corpus / 'csv' / 'valid.csv'}", f"data.encodec_base_path={features / 'encodec'}",
                 f"data.clap_base_path={features / 'clap'}", "eval.metrics=[cider_d]", "eval.select_metric=cider_d",
                 *TRAIN_OVERRIDES, *args.train_overrides]
    if training_done(run_dir, overrides):
        print(f"reusing the finished run in {_display(run_dir)} (delete it to train again)", flush=True)
    else:
        if (run_dir / _STAMP).is_file():
            # A finished run with other overrides: train.py would resume it under the new
            # recipe. Keep it, out of the way, and start afresh.
            aside = run_dir.with_name(f"{run_dir.name}.{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(run_dir, aside)
            print(f"the previous run (other training overrides) was moved to {_display(aside)}", flush=True)
        # An interrupted run is resumed by train.py itself from its newest checkpoint.
        steps.run("train", ["sh", "train.sh", "cfg/tiny.yaml", *overrides])
        if not (ckpt / "config.json").is_file():
            raise DemoError(f"training finished without a best model folder {ckpt}")
        mark_training_done(run_dir, overrides)

    steps.header("evaluate on the held-out test split")
    predictions = out / f"test_predictions_{kind}.csv"
    steps.run("evaluate", [py, "evaluate.py", "--ckpt", ckpt, "--test_csv", corpus / "csv" / "test.csv",
                           "--from_preprocessed", "--encodec_path", features / "encodec",
                           "--clap_path", features / "clap", "--save_path", predictions,
                           "--metrics", *metrics, "--device", args.device])
    model_scores = json.loads(predictions.with_name(predictions.stem + "_scores.json").read_text())["scores"]

    steps.header("score the trivial system (always the most frequent training caption)")
    start = time.perf_counter()
    trivial_caption, trivial_count = most_frequent_caption(corpus / "csv" / "train.csv")
    references = read_references(corpus / "csv" / "test.csv")
    trivial_metrics = [m for m in metrics if m in ("cider_d", "spice", "spider")]
    trivial_scores = compute_scores([trivial_caption] * len(references), references, trivial_metrics)
    steps.seconds["trivial"] = time.perf_counter() - start
    print(f"\"{trivial_caption}\" ({trivial_count} of the training captions)", flush=True)

    steps.header("caption one test clip from its audio file (inference.py)")
    with open(corpus / "csv" / "test.csv", newline="", encoding="utf-8") as f:
        first = next(csv.DictReader(f))
    wav = corpus / "audio" / (first["file_path"][: -len(".npy")] + ".wav")
    printed = steps.run("inference", [py, "inference.py", "--ckpt", ckpt, "--input", wav, *encoder_flags,
                                      "--device", args.device], capture=True)
    caption = printed.strip().split("\t", 1)[-1] if printed.strip() else ""

    total = time.perf_counter() - wall
    ratio = model_scores["cider_d"] / max(trivial_scores["cider_d"], 1e-9)
    gradio = f"{_shown([py])} gradio_app.py --ckpt {_display(ckpt)} {' '.join(encoder_flags)} --device cpu"
    print("\n" + "=" * 78)
    print(f"EnCLAP demo summary ({len(references)} test clips; features: "
          f"{'pretrained' if args.clap_ckpt else 'random-weight'} encoders)")
    print(score_line("model:", model_scores, "tiny EnCLAP trained here"))
    print(score_line("trivial:", trivial_scores, f"always \"{trivial_caption}\""))
    distinct = count_distinct(predictions)
    print(f"CIDEr-D ratio model/trivial: {ratio:.1f}x; the model wrote {distinct} different "
          f"captions for the {len(references)} test clips (1 would mean it ignores the audio)"
          + (f"; not computed here: {', '.join(skipped)}" if skipped else ""))
    print(f"one test clip: {_display(wav)}\n  caption:    {caption}\n  references: {' | '.join(first[k] for k in first if k.startswith('caption_'))}")
    print(f"checkpoint:  {_display(ckpt)}  (evaluate.py / inference.py --ckpt)")
    print(f"predictions: {_display(predictions)}")
    print(f"demo page:   {gradio}   -> http://127.0.0.1:7860")
    print("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in steps.seconds.items()) + f"; total {total:.0f} s")
    if args.require_gain and (ratio < args.require_gain or distinct < 2):
        why = (f"its CIDEr-D is not {args.require_gain}x the trivial system's" if ratio < args.require_gain
               else "it writes the same caption for every clip")
        print(f"demo: the model did not learn enough: {why} (with random-weight encoders the features are weak; "
              "more clips (--num_clips N) or pretrained encoders (CLAP_CKPT=...) help, see README)", file=sys.stderr)
        return 1
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point: a failed step or bad input is one line on stderr and a non-zero exit."""
    args = build_parser().parse_args(argv)
    try:
        return run_demo(args)
    except DemoError as err:
        print(f"demo: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("demo: interrupted; rerun the same command to continue where it stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
