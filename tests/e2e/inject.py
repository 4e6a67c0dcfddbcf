#!/usr/bin/env python3
"""Send hostile ESP-in-UDP datagrams at a wasmsec gateway.

Reads a capture of real ESP-in-UDP traffic (pcap), picks an ESP packet the
receiver already accepted, and derives from it the attack the first argument
names. Run inside the sender's network namespace:

    inject.py KIND PCAP SRC_IP DST_IP [COUNT]

KIND: replay | replay-first | replay-last | wrong-spi | bad-icv | truncated |
runt | keepalive
(replay sends the capture's first ESP packet COUNT times; replay-first sends
its first COUNT ESP packets once each, the oldest numbers in it;
replay-last its last COUNT once each, numbers the receiver authenticated
most recently)
"""
import socket
import struct
import sys


def esp_packets(path, src, dst):
    """ESP payloads of UDP/4500 datagrams from src to dst, in capture order."""
    data = open(path, "rb").read()
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        end = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        end = ">"
    else:
        raise SystemExit("not a pcap file")
    linktype = struct.unpack(end + "I", data[20:24])[0]
    at, out = 24, []
    while at + 16 <= len(data):
        caplen = struct.unpack(end + "I", data[at + 8:at + 12])[0]
        frame = data[at + 16:at + 16 + caplen]
        at += 16 + caplen
        if linktype == 1:
            if frame[12:14] != b"\x08\x00":
                continue
            frame = frame[14:]
        if len(frame) < 28 or frame[0] >> 4 != 4 or frame[9] != 17:
            continue
        ihl = (frame[0] & 15) * 4
        if socket.inet_ntoa(frame[12:16]) != src or socket.inet_ntoa(frame[16:20]) != dst:
            continue
        udp = frame[ihl:]
        if struct.unpack(">H", udp[2:4])[0] != 4500:
            continue
        payload = udp[8:]
        if len(payload) > 8 and payload[:4] != b"\0\0\0\0":
            out.append(payload)
    return out


def main():
    kind, pcap, src, dst = sys.argv[1:5]
    count = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    pkts = esp_packets(pcap, src, dst)
    if not pkts:
        raise SystemExit("no ESP-in-UDP packets from %s to %s in %s" % (src, dst, pcap))
    good = pkts[0]
    spi, seq = struct.unpack(">II", good[:8])
    fresh = 0x7FFF0000  # a sequence number the receiver has not seen
    if kind == "replay":
        dgrams = [good] * count
    elif kind == "replay-first":
        dgrams = pkts[:count]
    elif kind == "replay-last":
        dgrams = pkts[-count:]
    elif kind == "wrong-spi":
        dgrams = [struct.pack(">II", spi ^ 0x5A5A5A5A, seq) + good[8:]] * count
    elif kind == "bad-icv":
        # A fresh sequence number passes the replay check, so the ICV is what fails.
        body = bytearray(struct.pack(">II", spi, fresh) + good[8:])
        body[-1] ^= 0x01
        dgrams = [bytes(body)] * count
    elif kind == "truncated":
        dgrams = [struct.pack(">II", spi, fresh + 1) + good[8:20]] * count
    elif kind == "runt":
        dgrams = [good[:3]] * count
    elif kind == "keepalive":
        dgrams = [b"\xff"] * count
    else:
        raise SystemExit("unknown kind " + kind)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((src, 0))
    for d in dgrams:
        s.sendto(d, (dst, 4500))
    print("sent %d %s datagram(s) to %s:4500" % (len(dgrams), kind, dst))


if __name__ == "__main__":
    main()
