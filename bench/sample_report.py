#!/usr/bin/env python3
"""bench/sample_report.py OUT [THREAD] [PATTERN ...]: from bench/sample's perf.script, the share of
samples by thread; then, for THREAD (default: the busiest), the share of its samples whose stack
holds each PATTERN (a regular expression over function names: inclusive cost) and its top leaf
functions (self cost). Shares are of samples, so of CPU time."""
import collections, re, sys

out = sys.argv[1]
frame_re = re.compile(r"^\s*[0-9a-f]+ (.*?)(\+0x[0-9a-f]+)? \(.*\)$")
samples = []  # (thread, [leaf ... root])
for block in open(f"{out}/perf.script", encoding="utf-8", errors="replace").read().split("\n\n"):
    lines = block.strip("\n").split("\n")
    if len(lines) < 2:
        continue
    thread = re.split(r"\s+\d+\s", lines[0].strip(), maxsplit=1)[0]
    frames = [m.group(1) for m in map(frame_re.match, lines[1:]) if m]
    samples.append((thread, frames))
if not samples:
    sys.exit("no samples")
by_thread = collections.Counter(t for t, _ in samples)
print(f"{len(samples)} samples, by thread:")
for t, n in by_thread.most_common(8):
    print(f"  {100 * n / len(samples):6.2f} %  {t}")
thread = sys.argv[2] if len(sys.argv) > 2 else by_thread.most_common(1)[0][0]
mine = [f for t, f in samples if t == thread]
patterns = sys.argv[3:] or [
    r"Event::from_written", r"Adapter>::decide", r"model::identity::", r"Command::new",
    r"encode_body|envelope_to_datum", r"detach", r"drop_in_place", r"dedupe::",
    r"StreamConsumer|recv", r"^_?mi_|operator delete|malloc|free",
]
print(f"\nthread {thread!r}: {len(mine)} samples; inclusive:")
for p in patterns:
    n = sum(1 for f in mine if any(re.search(p, x) for x in f))
    print(f"  {100 * n / len(mine):6.2f} %  {p}")
print("self (top 25):")
for name, n in collections.Counter(f[0] for f in mine if f).most_common(25):
    print(f"  {100 * n / len(mine):6.2f} %  {name[:140]}")
