#!/usr/bin/env python3
"""The table of tests/bench/tunnels.sh: medians per tunnel and test, the
gateways' CPU, and each wasmsec tunnel's ratio to strongSwan libipsec and to
the better of boringtun and wireguard-go (issue #16's targets: 5x and 3x).

usage: tunnels-table.py RESULTS.tsv   (lines: tunnel test value cpu_a cpu_b)
"""
import math
import statistics
import sys
from collections import defaultdict

TARGET_LIBIPSEC = 5.0
TARGET_WIREGUARD = 3.0


def main():
    runs = defaultdict(list)
    order = []
    for line in open(sys.argv[1]):
        tunnel, test, value, cpu_a, cpu_b = line.split("\t")
        if tunnel not in order:
            order.append(tunnel)
        runs[(tunnel, test)].append((float(value), int(cpu_a), int(cpu_b)))
    tests = []
    for (_, test) in runs:
        if test not in tests:
            tests.append(test)

    def median(tunnel, test):
        r = runs.get((tunnel, test))
        if not r:
            return None
        vals = [v for v, _, _ in r if not math.isnan(v)]
        return statistics.median(vals) if vals else None

    def cpu(tunnel, test):
        r = runs[(tunnel, test)]
        return statistics.median(a for _, a, _ in r), statistics.median(b for _, _, b in r)

    unit = {t: ("packets/s" if t.startswith("udp") else "Mbit/s") for t in tests}
    print()
    print("| tunnel | test | median | of runs | gateway CPU A / B (% of a core) | x libipsec | x best WireGuard |")
    print("|---|---|---|---|---|---|---|")
    for test in tests:
        base = median("libipsec", test)
        wgs = [m for m in (median("boringtun", test), median("wireguard-go", test)) if m]
        best_wg = max(wgs) if wgs else None
        for tunnel in order:
            m = median(tunnel, test)
            if m is None:
                continue
            a, b = cpu(tunnel, test)
            vals = " ".join(f"{v:.0f}" for v, _, _ in runs[(tunnel, test)])
            r1 = f"{m / base:.2f}" if base and tunnel.startswith("wasmsec") else ""
            r2 = f"{m / best_wg:.2f}" if best_wg and tunnel.startswith("wasmsec") else ""
            print(f"| {tunnel} | {test} | {m:.0f} {unit[test]} | {vals} | {a:.0f} / {b:.0f} | {r1} | {r2} |")
    print()
    met = []
    for test in (t for t in tests if t.startswith("tcp")):
        base = median("libipsec", test)
        wgs = [m for m in (median("boringtun", test), median("wireguard-go", test)) if m]
        for tunnel in (t for t in order if t.startswith("wasmsec")):
            m = median(tunnel, test)
            if m is None:
                continue
            if base:
                met.append((f"{tunnel} {test} >= {TARGET_LIBIPSEC:.0f}x libipsec", m / base >= TARGET_LIBIPSEC, m / base))
            if wgs:
                met.append((f"{tunnel} {test} >= {TARGET_WIREGUARD:.0f}x best WireGuard", m / max(wgs) >= TARGET_WIREGUARD,
                            m / max(wgs)))
    for what, ok, ratio in met:
        print(f"target {what}: {'met' if ok else 'NOT met'} ({ratio:.2f}x)")


if __name__ == "__main__":
    main()
