"""Write assets/example.wav, the demo's example clip: three beeps over soft rain-like noise.

Deterministic (fixed seed, PCM 16-bit), so re-running it reproduces the shipped file byte for
byte:  python assets/make_example.py
"""

from __future__ import annotations

import io
import os
import sys

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000
SECONDS = 3.0


def make_example(seed: int = 1115) -> np.ndarray:
    """The clip as float32 (samples,) in [-1, 1] at ``SAMPLE_RATE``.

    Args:
        seed: seed of the noise generator.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(int(SAMPLE_RATE * SECONDS)) / SAMPLE_RATE  # (N,)
    # Low-passed noise (a running mean) sounds like distant rain.
    noise = np.convolve(rng.standard_normal(t.size), np.ones(8) / 8, mode="same") * 0.08
    beeps = np.zeros_like(t)
    for start in (0.4, 1.2, 2.0):  # three 0.3 s beeps at 1 kHz with 10 ms fades
        on = (t >= start) & (t < start + 0.3)
        fade = np.clip(np.minimum(t - start, start + 0.3 - t) / 0.01, 0, 1)
        beeps += on * fade * 0.4 * np.sin(2 * np.pi * 1000 * t)
    return np.clip(noise + beeps, -1, 1).astype(np.float32)


def main() -> None:
    from common.io import atomic_write_bytes

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "example.wav")
    buffer = io.BytesIO()
    sf.write(buffer, make_example(), SAMPLE_RATE, subtype="PCM_16", format="WAV")
    atomic_write_bytes(path, buffer.getvalue())
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository root, not assets/
    main()
