"""Whole generations, end to end: the Text tab's "served" choice (each call on the benchmark's
fastest variant for it) against each single variant, side by side in interleaved rounds.

    .venv/bin/python benchmarks/textgen_served.py artifacts/textgen/RUN [--prompts 64 500] [--new 128]
                                                  [--batch 1] [--rounds 5]

Each generation is greedy: a prompt of N bytes from the bundle's held-out prompts (repeated to
length), then ``--new`` bytes, through serve's own loop (``serve.tasks.textgen.complete``). Prints
the median seconds per generation and tokens/s per prompt length, the ratio to the best, and where
the served runner sent its calls. Also checks that served's greedy bytes match a single variant's
for most of the text (the backends differ by rounding, so a late tie may go another way).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serve.runtime import Bundle  # noqa: E402
from serve.tasks import textgen as loop  # noqa: E402


def prompt_of(bundle: Bundle, length: int) -> bytes:
    path = bundle.file("examples/prompts.txt")
    text = path.read_bytes() if path else b"The return value of this function is "
    text = b" ".join(x.strip() for x in text.split(b"\n") if x.strip())
    return (text * (1 + length // max(1, len(text))))[:length]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--prompts", type=int, nargs="+", default=[64, 500])
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    bundle = Bundle.open(args.run)
    spec = loop.CacheSpec.of(bundle.info)
    sampling = loop.Sampling(temperature=0.0, max_new_tokens=args.new)
    choices = [loop.SERVED, *bundle.variants()]
    print(f"{bundle.name}: greedy, {args.new} new bytes, batch {args.batch}, {args.rounds} interleaved rounds")
    print("\n| prompt bytes | " + " | ".join(choices) + " | served's calls |")
    print("|---:|" + "---:|" * len(choices) + "---|")
    for length in args.prompts:
        length = min(length, spec.context - 1)
        prompts = [prompt_of(bundle, length)] * args.batch
        seconds: dict[str, list[float]] = {c: [] for c in choices}
        texts: dict[str, list[bytes]] = {}
        used: dict[str, int] = {}
        for r in range(args.rounds + 1):  # round 0 warms every session up
            for choice in choices:
                runner = bundle.served("model", loop.call_axes) if choice == loop.SERVED else bundle.session("model", choice)
                t0 = time.perf_counter()
                out = loop.complete(runner, prompts, sampling, spec)
                if r:
                    seconds[choice].append(time.perf_counter() - t0)
                texts[choice] = out.data
                if choice == loop.SERVED:
                    used = runner.used
        med = {c: statistics.median(v) for c, v in seconds.items()}
        best = min(med.values())
        cells = [f"{1000 * med[c]:.0f} ms ({med[c] / best:.2f}x)" for c in choices]
        calls = ", ".join(f"{n} on {v}" for v, n in used.items())
        print(f"| {length} | " + " | ".join(cells) + f" | {calls} |")
        for v in bundle.variants():
            same = sum(a == b for a, b in zip(texts[loop.SERVED][0], texts[v][0]))
            prefix = next((i for i, (a, b) in enumerate(zip(texts[loop.SERVED][0], texts[v][0])) if a != b), args.new)
            print(f"  served vs {v}: {same}/{args.new} bytes equal, first {prefix} identical", file=sys.stderr)


if __name__ == "__main__":
    main()
