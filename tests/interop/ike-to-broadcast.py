#!/usr/bin/env python3
"""IKE_SA_INIT requests to broadcast addresses, and one to the responder.

    ike-to-broadcast.py DEV UNICAST_IP SUBNET_BROADCAST_IP

From one UDP socket bound to DEV (run inside a test namespace), sends
well-formed IKE_SA_INIT requests: SPI 1 to SUBNET_BROADCAST_IP:500, SPI 2
to 255.255.255.255:500, SPI 3 to SUBNET_BROADCAST_IP:4500 behind the
non-ESP marker (RFC 3948 section 2.2), and SPI 4 to UNICAST_IP:500, the
one a responder should answer. Waits up to 3 s and prints one JSON line:
the SPIs answered.
"""
import json
import os
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from flood import ike_sa_init  # noqa: E402


def main():
    dev, unicast, subnet_bcast = sys.argv[1], sys.argv[2], sys.argv[3]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode())
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    s.bind(("0.0.0.0", 0))
    s.sendto(ike_sa_init(1), (subnet_bcast, 500))
    s.sendto(ike_sa_init(2), ("255.255.255.255", 500))
    s.sendto(b"\0\0\0\0" + ike_sa_init(3), (subnet_bcast, 4500))
    s.sendto(ike_sa_init(4), (unicast, 500))
    answered = set()
    # Answers to the broadcasts would come about when the unicast one's
    # does: after that, wait a little longer for them.
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            msg, (_, port) = s.recvfrom(65535)
        except socket.timeout:
            break
        if port == 4500:
            # Behind the non-ESP marker.
            msg = msg[4:]
        if len(msg) < 28:
            continue
        spi_i, _, _, _, exchange, flags = struct.unpack(">QQBBBB", msg[:20])
        if exchange == 34 and flags & 0x20:
            answered.add(spi_i)
            deadline = min(deadline, time.monotonic() + 0.5)
    print(json.dumps({"answered": sorted(answered)}))


if __name__ == "__main__":
    main()
