#!/usr/bin/env python3
"""The table of tests/bench/handshakes.sh: one row per responder from the
generator's `ikeload key=value ...` lines, and the ratios issue #16 asks
for (wasmsec against strongSwan, measured in the same run)."""
import sys

runs = {}
for line in open(sys.argv[1]):
    if not line.startswith("ikeload "):
        continue
    kv = dict(f.split("=", 1) for f in line.split()[1:])
    runs[kv["label"]] = kv


def num(kv, k):
    try:
        return float(kv[k])
    except (KeyError, ValueError):
        return float("nan")


responders = []
for label in runs:
    r = label.rsplit("-", 1)[0]
    if r not in responders:
        responders.append(r)

print()
rate_kv = next((kv for l, kv in runs.items() if l.endswith("-rate")), {})
standing = int(rate_kv.get("standing", "0"))
print("| responder | sequential setup ms (mean / p50 / p99) | setups/s, %s in flight%s | latency p50 / p99 ms | responder CPU s | setups per CPU-second | failed |"
      % (rate_kv.get("in_flight", "?"), ", %d IKE SAs standing" % standing if standing else ""))
print("|---|---|---|---|---|---|---|")
for r in responders:
    s = runs.get(r + "-sequential", {})
    q = runs.get(r + "-rate", {})
    print("| %s | %.2f / %.2f / %.2f | %.0f | %.2f / %.2f | %s | %s | %d + %d |" % (
        r, num(s, "latency_mean_ms"), num(s, "latency_p50_ms"), num(s, "latency_p99_ms"),
        num(q, "rate"), num(q, "latency_p50_ms"), num(q, "latency_p99_ms"),
        q.get("responder_cpu_s", "na"), q.get("setups_per_cpu_s", "na"),
        int(num(s, "failed") or 0), int(num(q, "failed") or 0)))

w, s = "wasmsec", "strongswan"
if w in responders and s in responders:
    print()
    ws, ss = num(runs[w + "-sequential"], "latency_mean_ms"), num(runs[s + "-sequential"], "latency_mean_ms")
    print("sequential setup, mean: wasmsec %.2f ms, strongSwan %.2f ms: %s (target: no worse)"
          % (ws, ss, "met" if ws <= ss else "NOT met"))
    wr, sr = num(runs[w + "-rate"], "setups_per_cpu_s"), num(runs[s + "-rate"], "setups_per_cpu_s")
    print("setups per CPU-second: wasmsec %.0f, strongSwan %.0f = %.2fx (targets: >= 5,000 and >= 3x): %s"
          % (wr, sr, wr / sr if sr else float("nan"), "met" if wr >= 5000 and wr >= 3 * sr else "NOT met"))
    wt, st = num(runs[w + "-rate"], "rate"), num(runs[s + "-rate"], "rate")
    print("setups per second (wall): wasmsec %.0f, strongSwan %.0f = %.2fx" % (wt, st, wt / st if st else float("nan")))
