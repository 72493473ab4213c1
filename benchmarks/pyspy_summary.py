"""Summarise a py-spy raw profile (recorded with --threads --idle): per thread, the share of samples
and the functions it sat in (inclusive), so a run can say where a worker's threads spend their time.

    python benchmarks/pyspy_summary.py pyspy_n64.txt [--top 15]    # a raw file written by gpu_profile.sh
"""

from __future__ import annotations

import argparse
import collections
import re


def summarise(path: str, top: int) -> str:
    threads: collections.Counter[str] = collections.Counter()
    incl: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    leaf: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    total = 0
    for line in open(path):
        line = line.rstrip("\n")
        if not line or " " not in line:
            continue
        stack, count = line.rsplit(" ", 1)
        n = int(count)
        frames = stack.split(";")
        thread = frames[0]
        total += n
        threads[thread] += n
        seen = set()
        for f in frames[1:]:
            name = re.sub(r" \(.*?([^/]+\.py):\d+\)$", r" \1", f)
            if name not in seen:
                incl[thread][name] += n
                seen.add(name)
        if len(frames) > 1:
            leaf[thread][re.sub(r"^(.*?) \(.*?([^/]+:\d+)\)$", r"\1 \2", frames[-1])] += n
    out = [f"{path}: {total} samples"]
    for thread, n in threads.most_common():
        out.append(f"\n{thread}: {100 * n / total:.1f}% of samples")
        out.append("  inclusive:")
        out += [f"    {100 * v / n:5.1f}%  {k[:110]}" for k, v in incl[thread].most_common(top)]
        out.append("  leaf:")
        out += [f"    {100 * v / n:5.1f}%  {k[:110]}" for k, v in leaf[thread].most_common(8)]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("path")
    p.add_argument("--top", type=int, default=15)
    a = p.parse_args()
    print(summarise(a.path, a.top))


if __name__ == "__main__":
    main()
