"""What the networks accept, stated once: the input side and resnet's widths.

Every stage checks its options with these rules (``pipeline.common.config``
raises its one-line ConfigError with the same text); the factory raises
ValueError. Here, on the ground, so the networks import nothing of
``pipeline``.
"""

from __future__ import annotations

from typing import Optional

# Both reference networks halve the side four times (BART) and compute their
# flatten size from it, so the side is a multiple of 16.
SIZE_MIN, SIZE_MAX, SIZE_STEP = 16, 1024, 16
WIDTH_MIN, WIDTH_MAX = 1, 4096   # channels of one ResNetS stage


def size_problem(size) -> Optional[str]:
    """Why ``size`` is not a square side every stage accepts, or None."""
    if not isinstance(size, int) or isinstance(size, bool) or not SIZE_MIN <= size <= SIZE_MAX or size % SIZE_STEP:
        return (f"size must be a multiple of {SIZE_STEP} in {SIZE_MIN}..{SIZE_MAX} pixels "
                f"(64 and 128 are the notebooks'), got {size}")
    return None


def widths_problem(widths, model: str = "resnet") -> Optional[str]:
    """Why ``widths`` do not fit ``model`` (resnet: 4 channel counts, the stem and three stages;
    empty: the network's own), or None."""
    if not widths:
        return None
    if model != "resnet":
        return f"widths are resnet's; {model} is a notebook's network with its own: drop --widths"
    whole = isinstance(widths, (list, tuple)) and len(widths) == 4 and all(
        isinstance(w, (int, float)) and not isinstance(w, bool) and float(w).is_integer() and WIDTH_MIN <= w <= WIDTH_MAX
        for w in widths)
    if not whole:
        return (f"widths must be 4 positive channel counts (the stem and three stages), each a whole "
                f"number in [{WIDTH_MIN}, {WIDTH_MAX}], got {widths!r}")
    return None
