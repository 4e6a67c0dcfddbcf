#!/usr/bin/env python3
"""Seed corpus from a capture: every IKE message in PCAP (UDP 500, and UDP
4500 behind the non-ESP marker) from SOURCE becomes a file OUTDIR/PREFIX-NN.

usage: fuzz/extract-ike.py PCAP SOURCE OUTDIR PREFIX
  e.g. fuzz/extract-ike.py cap-b-wan.pcap 198.18.0.1 fuzz/corpus/ike_message sswan
"""
import ipaddress
import os
import struct
import sys


def packets(path):
    data = open(path, "rb").read()
    link = struct.unpack_from("<I", data, 20)[0]
    off = 24
    while off + 16 <= len(data):
        incl = struct.unpack_from("<I", data, off + 8)[0]
        frame = data[off + 16: off + 16 + incl]
        off += 16 + incl
        yield frame[14:] if link == 1 else frame[16:] if link == 113 else frame


def main(pcap, source, outdir, prefix):
    src = ipaddress.IPv4Address(source).packed
    os.makedirs(outdir, exist_ok=True)
    n = 0
    for ip in packets(pcap):
        if len(ip) < 28 or ip[0] >> 4 != 4 or ip[9] != 17 or ip[12:16] != src:
            continue
        udp = ip[(ip[0] & 15) * 4:]
        dport = struct.unpack_from(">H", udp, 2)[0]
        payload = udp[8:]
        if dport == 4500:
            if payload[:4] != b"\0\0\0\0":
                continue  # ESP
            payload = payload[4:]
        elif dport != 500:
            continue
        if len(payload) < 28:
            continue
        with open(os.path.join(outdir, f"{prefix}-{n:02d}"), "wb") as f:
            f.write(payload)
        n += 1
    print(f"{n} IKE messages from {source} written to {outdir}")


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    main(*sys.argv[1:])
