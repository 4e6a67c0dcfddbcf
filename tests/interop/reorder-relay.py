#!/usr/bin/env python3
"""A UDP relay between two IKE peers that reorders and replays ESP.

Stands where a NAT would (tests/interop/test-esp-reorder.sh): the outside
peer talks to OUTSIDE_ADDR:500/4500, the relay forwards from INSIDE_ADDR
to INSIDE_PEER on the same port and back, so to both gateways it looks
like a NAT. IKE (port 500, and 4500 behind the non-ESP marker) and NAT
keepalives pass in order. ESP (port 4500, a non-zero SPI) is disturbed in
both directions: one datagram in REORDER_EVERY is held back and sent after
the next 1-3 (reordered, within any anti-replay window); one in
DUPLICATE_EVERY of the others is sent twice (a replay, which the receiver
must drop). Counts go to STATS_FILE on SIGTERM, as JSON.

usage: reorder-relay.py OUTSIDE_ADDR INSIDE_ADDR INSIDE_PEER STATS_FILE
"""
import json
import random
import select
import signal
import socket
import sys

REORDER_EVERY = 5
DUPLICATE_EVERY = 50

outside_addr, inside_addr, inside_peer, stats_file = sys.argv[1:5]
rng = random.Random(4303)
stats = {"forwarded": 0, "esp": 0, "reordered": 0, "released_idle": 0, "duplicated": 0}
socks = {}
for side, addr in (("out", outside_addr), ("in", inside_addr)):
    for port in (500, 4500):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.bind((addr, port))
        socks[(side, port)] = s
outside_peer = {}  # port -> (addr, port) of the outside gateway, learnt
# Per direction and port: (datagram, sends left until it goes) held back.
held = {}


def finish(*_):
    with open(stats_file, "w") as f:
        json.dump(stats, f)
    sys.exit(0)


signal.signal(signal.SIGTERM, finish)


def send(side, port, data):
    if side == "in":
        socks[("in", port)].sendto(data, (inside_peer, port))
    elif port in outside_peer:
        socks[("out", port)].sendto(data, outside_peer[port])
    stats["forwarded"] += 1


def relay(to, port, data):
    is_esp = port == 4500 and len(data) > 8 and data[:4] != b"\0\0\0\0"
    if not is_esp:
        send(to, port, data)
        return
    stats["esp"] += 1
    key = (to, port)
    h = held.get(key)
    if h is None and rng.randrange(REORDER_EVERY) == 0:
        held[key] = [data, rng.randint(1, 3)]
        return
    send(to, port, data)
    if h is None and rng.randrange(DUPLICATE_EVERY) == 0:
        send(to, port, data)
        stats["duplicated"] += 1
    if h is not None:
        h[1] -= 1
        if h[1] == 0:
            send(to, port, h[0])
            stats["reordered"] += 1
            del held[key]


by_fd = {s.fileno(): k for k, s in socks.items()}
while True:
    ready, _, _ = select.select(list(socks.values()), [], [], 0.05)
    if not ready:
        # Nothing came for 50 ms: let what is held go (a lone packet must
        # not wait for a successor that never comes).
        for (to, port), (data, _) in list(held.items()):
            send(to, port, data)
            stats["released_idle"] += 1
            del held[(to, port)]
        continue
    for s in ready:
        side, port = by_fd[s.fileno()]
        data, src = s.recvfrom(65535)
        if side == "out":
            outside_peer[port] = src
            relay("in", port, data)
        else:
            relay("out", port, data)
