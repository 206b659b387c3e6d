"""Classifier-free guidance limited to an interval of the denoising steps (infer.py --guidance-interval).

    interval (start, end), fractions of the steps; step i of N is guided when round(start N) <= i < round(end N)
    guided step:   negative + positive prompt as one batch of 2, cache context "cond_uncond", CFG combine
    other steps:   the positive prompt alone (batch 1), cache context "cond", its prediction used as is

The default (0, 1) guides every step: exactly the full-CFG loop. An unguided step runs one batch item instead of
two, so it costs about half a guided one. Kynkäänniemi et al. 2024 ("Applying guidance in a limited interval
improves sample and distribution quality in diffusion models") found guidance needed only over part of the noise
levels; which interval keeps re-rendering quality is measured in docs/benchmarks.md. The interval is in steps,
not noise levels: with Wan's shifted schedule (shift 3) the first half of the steps takes sigma from 1 to 0.75 only.
"""

from __future__ import annotations

FULL_INTERVAL = (0.0, 1.0)
BOTH_BRANCHES, POSITIVE_BRANCH = "cond_uncond", "cond"  # the cache contexts of a step with and without CFG


def parse_interval(text: str, flag: str = "--guidance-interval") -> tuple[float, float]:
    """'START,END' -> (start, end), checked; ValueError naming the problem and the expected form otherwise."""
    parts = text.split(",")
    try:
        start, end = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"{flag} takes START,END (fractions of the denoising steps, e.g. 0,0.6), "
                         f"got {text!r}") from None
    check_interval((start, end), flag)
    return start, end


def check_interval(interval: tuple[float, float], flag: str = "guidance_interval") -> None:
    start, end = interval
    if not (0.0 <= start <= 1.0 and 0.0 <= end <= 1.0):
        raise ValueError(f"{flag} must lie within [0, 1] (fractions of the denoising steps), got {start:g},{end:g}")
    if start > end:
        raise ValueError(f"{flag} starts after it ends ({start:g} > {end:g}); give START <= END, e.g. 0,0.6")


def guided_steps(num_steps: int, interval: tuple[float, float] = FULL_INTERVAL) -> list[bool]:
    """Per denoising step, whether it runs both CFG branches."""
    check_interval(interval)
    first, last = round(interval[0] * num_steps), round(interval[1] * num_steps)
    return [first <= i < last for i in range(num_steps)]
