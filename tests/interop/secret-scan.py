#!/usr/bin/env python3
"""Look for secrets where they must not be.

usage: secret-scan.py --audit AUDIT --psk PSK [--keylog FILE]... FILE...

AUDIT holds every secret wasmsec's IKE key vault created during a run
(`[ike] secret_audit`, one hex line each: PSK, g^ir, SKEYSEED, SK_*, CHILD
SA keying material, COOKIE secrets). --keylog files are the run's key
exports (Wireshark `ikev2_decryption_table` and `esp_sa`): every key in them
must be part of an audited secret, which shows the audit is complete. Then
each FILE (logs, counters, admin answers, what the guest was given) is
searched for the PSK and for every 12-byte piece of every audited secret,
raw and in hex. Prints what it checked; exits 1 if anything is found.
"""
import argparse
import re
import sys

WINDOW = 12


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--audit", required=True)
    ap.add_argument("--psk", required=True)
    ap.add_argument("--keylog", action="append", default=[])
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    secrets = [bytes.fromhex(l.strip()) for l in open(a.audit) if l.strip()]
    secrets = [s for s in secrets if len(s) >= WINDOW]
    audit_hex = [s.hex() for s in secrets]
    bad = 0
    exported = []
    for k in a.keylog:
        for m in re.finditer(r"(?:0x)?([0-9a-fA-F]{32,})", open(k).read()):
            exported.append(m.group(1).lower())
    covered = sum(1 for h in exported if any(h in s for s in audit_hex))
    print(f"audit: {len(secrets)} secrets; {covered} of {len(exported)} exported keys are among them")
    if covered != len(exported) or not exported:
        print("FAIL: the audit misses exported keys (or there are none)")
        bad += 1
    needles = {a.psk.encode(): "the PSK"}
    for i, s in enumerate(secrets):
        for off in range(0, len(s) - WINDOW + 1):
            piece = s[off:off + WINDOW]
            needles[piece] = f"secret #{i} ({len(s)} bytes) at {off}"
            needles[piece.hex().encode()] = f"secret #{i} in hex at {off}"
            needles[piece.hex().upper().encode()] = f"secret #{i} in HEX at {off}"
    for f in a.files:
        data = open(f, "rb").read()
        hits = [what for n, what in needles.items() if n in data]
        print(f"{f}: {len(data)} bytes, {'CLEAN' if not hits else 'FOUND ' + '; '.join(sorted(set(hits))[:5])}")
        bad += bool(hits)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
