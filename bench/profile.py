"""Summarise py-spy profiles of benchmark runs (``BENCH_PROFILE=DIR python -m bench ...``).

    python -m bench.profile .bench/profiles/kafka-poller-0.txt          # one run
    python -m bench.profile --top 40 --match poller .bench/profiles/*.txt

Each input is py-spy's raw format: one folded stack per line (``frame;frame;... count``, the
outermost frame first). Prints, per function, the share of samples in which it is the innermost
frame (self) and in which it is anywhere on the stack (total), largest total first. Line numbers
are dropped, so that a function counts once however many of its lines were sampled.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

_LINE = re.compile(r":\d+\)$")


def function_of(frame: str) -> str:
    """``name (path/file.py:123)`` -> ``name (path/file.py)``."""
    return _LINE.sub(")", frame.strip())


def summarise(lines: Iterable[str]) -> tuple[int, Counter[str], Counter[str]]:
    """Samples in all, and samples per function as the innermost frame and anywhere on the stack."""
    samples = 0
    self_samples: Counter[str] = Counter()
    total_samples: Counter[str] = Counter()
    for line in lines:
        stack, _, count_text = line.rstrip("\n").rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [function_of(frame) for frame in stack.split(";") if frame.strip()]
        if not frames:
            continue
        samples += count
        self_samples[frames[-1]] += count
        for function in set(frames):  # recursion counts once per sample
            total_samples[function] += count
    return samples, self_samples, total_samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=30, help="functions to show (default 30)")
    parser.add_argument("--match", default="", help="only functions whose name or file contains this")
    args = parser.parse_args(argv)
    for path in args.files:
        with path.open() as file:
            samples, self_samples, total_samples = summarise(file)
        print(f"\n{path}: {samples} samples")
        if not samples:
            continue
        print(f"{'total %':>8} {'self %':>8}  function")
        shown = [name for name, _ in total_samples.most_common() if args.match in name][: args.top]
        for name in shown:
            print(
                f"{100 * total_samples[name] / samples:8.1f} {100 * self_samples[name] / samples:8.1f}  {name}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
