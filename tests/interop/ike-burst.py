#!/usr/bin/env python3
"""A burst of IKE_SA_INIT requests that the responder reads in one go.

    ike-burst.py DST_IP PID COUNT MARKED_AT

Stops process PID (SIGSTOP), sends COUNT well-formed IKE_SA_INIT requests
to DST_IP:500 from one UDP socket, the one at index MARKED_AT with the
initiator SPI "TRAPTRAP" (hostile-ike.wasm's trap marker) and the others
with SPIs 1..COUNT-1, then lets PID go on (SIGCONT): all of them wait in
its socket and come out of one read. Waits up to 5 s for the answers and
prints one JSON line: the SPIs answered, the SPIs not answered, and
whether the marked one was answered.
"""
import json
import os
import signal
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from flood import ike_sa_init  # noqa: E402

MARKER = struct.unpack(">Q", b"TRAPTRAP")[0]


def main():
    dst, pid, count, marked_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    spis = [MARKER if i == marked_at else i + 1 for i in range(count)]
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(0.2)
        for spi in spis:
            s.sendto(ike_sa_init(spi), (dst, 500))
        # Let the datagrams reach the responder's socket before it runs.
        time.sleep(0.2)
    finally:
        os.kill(pid, signal.SIGCONT)
    want = {spi for spi in spis if spi != MARKER}
    answered = set()
    deadline = time.monotonic() + 5
    while want - answered and time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            msg = s.recv(65535)
        except socket.timeout:
            break
        if len(msg) < 28:
            continue
        spi_i, _, _, _, exchange, flags = struct.unpack(">QQBBBB", msg[:20])
        if exchange == 34 and flags & 0x20:
            answered.add(spi_i)
    print(json.dumps({
        "answered": sorted(x for x in answered if x != MARKER),
        "unanswered": sorted(want - answered),
        "marked_answered": MARKER in answered,
    }))


if __name__ == "__main__":
    main()
