"""Training-step benchmark: our data path + model vs the original's way, same model, same batch.

``python benchmarks/train_step.py`` (no arguments, about four minutes on a 2-core CPU) measures,
for the same randomly initialised model and the same batch (8 clips of 750 frames, ~12-token
captions, MCM masks as design §4), examples per second of loading + collate + forward/backward
and the peak memory of that step, for three pipelines:

* ours: ``CaptionDataset`` (masks drawn on the fly) -> ``EnClapCollator`` (vectorised) ->
  ``model(..., mcm_labels=...)`` with the training shortcuts of ``modeling/layers.py`` (MCM heads
  only where their codebook is masked, cross-attention without key/value projections, a lean
  encoder feed-forward) and transformers' SDPA attention;
* original (the original's way, written here): masks precomputed for every example up front, a
  collator that makes one ``tokenizer.pad`` call per codebook per example, no workers, the MCM
  loss from all 16 heads at every encoder position, stock BART layers with eager attention (the
  only attention of the transformers 4.29 that the original pins);
* sdpa: the same as original but with stock SDPA attention, i.e. what our model does minus
  our changes, to show how much of the gain is ours and how much the attention kernel's.

All three must give the same batch and the same loss (asserted, 1e-5 relative: the shortcuts
change float rounding only). Each figure comes from a fresh subprocess: speed after one warm-up
step with the default allocator; peak memory in a second process whose allocator returns freed
blocks at once: peak RSS sampled during the step minus RSS before it (CPU: the kernel's
high-water mark, gradients included), or ``torch.cuda.max_memory_allocated`` (GPU). Two sizes:
bart-base (d_model 768, 6+6 layers, vocab 50265) and a small one (d_model 256, 2+2 layers).
Speed is reported per CPU-second of the process (all its threads) and per wall-second; the
last line is ``speedup: N.NN`` = ours / original examples per CPU-second at bart-base size (on a
machine shared with other jobs the wall-clock ratio is mostly noise).
"""

from __future__ import annotations

import csv
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

BATCH, FRAMES, SEED = 8, 750, 1115
CAPTIONS = [
    "a dog barks repeatedly while a man speaks in the distance",
    "heavy rain falls on a metal roof as thunder rumbles",
    "a high pitched electronic beep repeats several times",
    "static noise fades in followed by a low engine hum",
    "birds chirp loudly in the distance as strong wind blows",
    "a car engine revs up and then idles for a while",
    "water runs from a kitchen tap into a metal sink",
    "an emergency siren wails and slowly fades away",
]
SIZES = {
    "bart-base": dict(d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                      decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072),
    "small": dict(d_model=256, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                  decoder_attention_heads=4, encoder_ffn_dim=1024, decoder_ffn_dim=1024),
}
STEPS = {"bart-base": 1, "small": 2}


def write_data(root: str) -> None:
    """8 clips of random codes (750, 16) and CLAP vectors, plus the training CSV."""
    import numpy as np

    rng = np.random.default_rng(0)
    for sub in ("enc", "clap"):
        os.makedirs(os.path.join(root, sub, "clips"), exist_ok=True)
    with open(os.path.join(root, "train.csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_path", "caption"])
        for i, caption in enumerate(CAPTIONS):
            np.save(os.path.join(root, "enc", "clips", f"{i}.npy"), rng.integers(0, 1024, (FRAMES, 16)))
            clap = rng.standard_normal(512).astype(np.float32)
            np.save(os.path.join(root, "clap", "clips", f"{i}.npy"), clap / np.linalg.norm(clap))
            writer.writerow([f"clips/{i}.npy", caption])


# ---------------------------------------------------------------------------- the baseline


class BaselineDataset:
    """The original's dataset: every example's MCM mask is computed once, up front."""

    def __init__(self, root: str, tokenizer):
        import numpy as np

        from data.masking import MASK_STREAM, example_rng, span_mask

        with open(os.path.join(root, "train.csv"), newline="") as handle:
            self.rows = list(csv.DictReader(handle))
        self.root, self.tokenizer = root, tokenizer
        self.masks = []
        for index, row in enumerate(self.rows):  # same draws as our dataset's epoch 0
            codes = np.load(os.path.join(root, "enc", row["file_path"]))
            self.masks.append(span_mask(codes.shape[0], example_rng(SEED, 0, index, MASK_STREAM), 16, 0.15, 10))

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        import numpy as np

        row = self.rows[index]
        codes = np.load(os.path.join(self.root, "enc", row["file_path"]))          # (T, 16)
        mask = self.masks[index]
        special = lambda v: np.full((1, 16), v)  # noqa: E731
        input_ids = np.concatenate([special(0), special(0), np.where(mask, 1024, codes), special(2)])  # (T+3, 16)
        labels = np.concatenate([special(-100), special(-100), np.where(mask, codes, -100), special(-100)])
        encodec_mask = np.array([0, 0] + [1] * codes.shape[0] + [0])
        return {"input_ids": input_ids, "mcm_labels": labels, "encodec_mask": encodec_mask,
                "attention_mask": np.ones(codes.shape[0] + 3, dtype=np.int64),
                "labels": self.tokenizer(row["caption"])["input_ids"],
                "clap_embedding": np.load(os.path.join(self.root, "clap", row["file_path"]))}


def baseline_collate(features, tokenizer):
    """The original's collator: one ``tokenizer.pad`` call per codebook per example."""
    import torch

    longest = max(len(f["input_ids"]) for f in features)
    input_ids, mcm_labels = [], []
    pad_id = tokenizer.pad_token_id
    for feature in features:
        for j in range(16):
            tokenizer.pad_token_id = 1024  # the original swaps the tokenizer's pad id
            input_ids.append(tokenizer.pad({"input_ids": feature["input_ids"][:, j].tolist()}, padding="max_length",
                                           max_length=longest)["input_ids"])
            tokenizer.pad_token_id = pad_id
            row = feature["mcm_labels"][:, j].tolist()
            mcm_labels.append(row + [-100] * (longest - len(row)))
    as_blt = lambda rows: torch.tensor(rows).reshape(len(features), 16, longest).transpose(1, 2)  # noqa: E731
    tokenizer.pad_token_id = 1
    others = tokenizer.pad([{"input_ids": f["encodec_mask"].tolist(), "attention_mask": f["attention_mask"].tolist()}
                            for f in features], return_tensors="pt")
    tokenizer.pad_token_id = pad_id
    width = max(len(f["labels"]) for f in features)
    labels = torch.tensor([f["labels"] + [-100] * (width - len(f["labels"])) for f in features])
    return {"input_ids": as_blt(input_ids), "mcm_labels": as_blt(mcm_labels),
            "encodec_mask": others["input_ids"].bool(), "attention_mask": others["attention_mask"],
            "clap_embedding": torch.tensor(__import__("numpy").stack([f["clap_embedding"] for f in features])),
            "labels": labels}


def baseline_loss(model, batch):
    """Caption loss + 0.7 * sum_j 2^-(j+1) CE(head j at EVERY position) -- the original's MCM."""
    import torch.nn.functional as F

    mcm_labels = batch.pop("mcm_labels")
    out = model(**batch)
    hidden = out.encoder_last_hidden_state                                          # (B, L, D)
    logits = [head(hidden) for head in model.mcm_heads]                             # 16 x (B, L, 1024)
    mcm = sum(F.cross_entropy(logits[j].reshape(-1, 1024).float(), mcm_labels[..., j].reshape(-1),
                              ignore_index=-100) / 2 ** (j + 1) for j in range(16))
    return out.lm_loss + model.config.mcm_loss_scale * mcm


# ---------------------------------------------------------------------------- one pipeline


class PeakRSS:
    """Samples this process's resident memory every 5 ms in a thread (CPU peak memory)."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def current(self) -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * self._page

    def __enter__(self):
        self.start = self.current()
        self.peak = self.start
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.current())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current())


PIPELINES = ("original", "sdpa", "ours")


def run_pipeline(which: str, size: str, root: str, mode: str) -> dict:
    """Builds the model and runs one pipeline; ``mode`` "time" or "memory" says what to measure.

    "time": one warm-up step, then STEPS[size] timed steps (steady state), default allocator.
    "memory": one step, peak memory above the step's start (run with MALLOC_MMAP_THRESHOLD_ set).
    """
    import torch

    from data.collator import EnClapCollator
    from data.dataset import CaptionDataset
    from modeling import EnClapBartConfig, EnClapBartForConditionalGeneration
    from training.tokenizer import train_tokenizer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = train_tokenizer(CAPTIONS * 4, vocab_size=400)
    # The original swaps the pad id to 1024, which is a real token in BART's 50265-word
    # vocabulary: give this small tokenizer that many entries too.
    tokenizer.add_tokens([f"<unused_{i}>" for i in range(1100 - len(tokenizer))])
    config = EnClapBartConfig(vocab_size=50265, max_position_embeddings=1024, dropout=0.0, attention_dropout=0.0,
                              activation_dropout=0.0, **SIZES[size])
    torch.manual_seed(0)
    model = EnClapBartForConditionalGeneration(config).to(device).train()
    if which != "ours":
        model.set_efficient_training(False)  # stock BART layers, as the original trained them
    if which == "original":
        # The original pins transformers 4.29, whose BART has one attention: the eager one.
        model.config._attn_implementation = "eager"
    if which == "ours":
        dataset = CaptionDataset(os.path.join(root, "train.csv"), os.path.join(root, "enc"),
                                 os.path.join(root, "clap"), train=True, seed=SEED)
        # No worker process here either, so that all of the loading work is in this process's
        # CPU time (train.py uses data.num_workers; at ~0.1 s per batch it only hides latency).
        loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, collate_fn=EnClapCollator(tokenizer),
                                             num_workers=0)
    else:
        dataset = BaselineDataset(root, tokenizer)  # masks precomputed up front
        loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, num_workers=0,
                                             collate_fn=lambda f: baseline_collate(f, tokenizer))

    def step():
        batch = next(iter(loader))
        batch = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        loss = model(**batch).loss if which == "ours" else baseline_loss(model, dict(batch))
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return batch, loss

    if mode == "memory":
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base_mem = torch.cuda.memory_allocated()
        with PeakRSS() as rss:
            batch, loss = step()
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated() - base_mem
        else:
            # The kernel's high-water mark is exact where a sampling thread may be starved on a
            # busy machine; the step is this process's largest moment, so it holds the step's peak.
            high_water = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            peak = max(rss.peak, high_water) - rss.start
        torch.save({k: v.cpu() for k, v in batch.items()}, os.path.join(root, f"batch_{which}_{size}.pt"))
        return {"peak_bytes": peak, "loss": loss.item(), "device": str(device)}

    _, loss = step()  # warm-up: first-call costs of the kernels are not a training step's
    model.zero_grad(set_to_none=True)
    elapsed = cpu = 0.0
    for _ in range(STEPS[size]):
        start, start_cpu = time.perf_counter(), time.process_time()
        step()
        elapsed += time.perf_counter() - start
        cpu += time.process_time() - start_cpu
        model.zero_grad(set_to_none=True)
    return {"examples_per_s": STEPS[size] * BATCH / elapsed, "seconds_per_step": elapsed / STEPS[size],
            "examples_per_cpu_s": STEPS[size] * BATCH / cpu, "cpu_seconds_per_step": cpu / STEPS[size],
            "loss": loss.item(), "device": str(device)}


def child(which: str, size: str, root: str, mode: str) -> dict:
    """Runs one measurement in a fresh process, so that its memory and caches are its own."""
    env = dict(os.environ)
    if mode == "memory":
        # A fixed mmap threshold makes glibc return every large freed block at once, so the
        # sampled RSS follows the live tensors instead of heap fragmentation. It also makes every
        # large allocation fault its pages in anew, which is why timing runs without it.
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    run = subprocess.run([sys.executable, os.path.abspath(__file__), which, size, root, mode],
                         capture_output=True, text=True, cwd=REPO, env=env)
    if run.returncode != 0:
        sys.exit(f"{which} / {size} / {mode} failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] in PIPELINES:  # child process
        print(json.dumps(run_pipeline(*sys.argv[1:])))
        return
    import torch

    cpu = platform.processor() or platform.machine()
    print(f"machine: {os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}, "
          f"{'GPU ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}; "
          f"batch {BATCH} x {FRAMES} frames, ~12-token captions")
    results = {}
    with tempfile.TemporaryDirectory(prefix="enclap_bench_") as root:
        write_data(root)
        for size in ("small", "bart-base"):
            for which in PIPELINES:
                results[which, size] = {**child(which, size, root, "time"), **child(which, size, root, "memory")}
            batches = {which: torch.load(os.path.join(root, f"batch_{which}_{size}.pt")) for which in PIPELINES}
            for which in ("original", "sdpa"):
                assert batches["ours"].keys() == batches[which].keys(), (batches["ours"].keys(), batches[which].keys())
                for key in batches["ours"]:
                    assert torch.equal(batches["ours"][key], batches[which][key]), f"{which}: batches differ in {key}"
            losses = {which: results[which, size]["loss"] for which in PIPELINES}
            assert max(losses.values()) - min(losses.values()) <= 1e-5 * abs(losses["ours"]), losses
            for which in PIPELINES:
                fig = results[which, size]
                print(f"{size:9s} {which:8s} {fig['examples_per_cpu_s']:7.3f} examples/CPU-s "
                      f"({fig['cpu_seconds_per_step']:6.1f} CPU-s/step) {fig['examples_per_s']:7.3f} examples/s "
                      f"({fig['seconds_per_step']:6.1f} s/step) peak {fig['peak_bytes'] / 2**30:5.2f} GiB "
                      f"loss {fig['loss']:.7f}", flush=True)
            ours = results["ours", size]
            for which, what in (("original", "the original's step (eager attention)"),
                                ("sdpa", "the original's step with stock SDPA attention")):
                base = results[which, size]
                print(f"{size:9s} ours / {which}: x{ours['examples_per_cpu_s'] / base['examples_per_cpu_s']:.2f} "
                      f"examples per CPU-second, x{ours['examples_per_s'] / base['examples_per_s']:.2f} per "
                      f"wall-second, {100 * (1 - ours['peak_bytes'] / base['peak_bytes']):.0f}% less peak memory "
                      f"than {what}; same batch, same loss", flush=True)
    # CPU time (all threads of the process) is the headline: on a shared machine wall time
    # mostly measures the other jobs; on an idle one the two ratios agree.
    ratio = results["ours", "bart-base"]["examples_per_cpu_s"] / results["original", "bart-base"]["examples_per_cpu_s"]
    print(f"speedup: {ratio:.2f}")


if __name__ == "__main__":
    main()
