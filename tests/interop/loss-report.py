#!/usr/bin/env python3
"""Where did each lost ping die?

Reads what tests/interop/peer-wasmsec.sh leaves in its work directory:

  cap-b-wan.pcap            wasmsec's WAN (ESP and IKE both ways)
  cap-b-lan.pcap            wasmsec's LAN (the pings as host B sees them)
  cap-a-host.pcap           host A's LAN (optional: which pings were answered)
  esp_sa                    Wireshark esp_sa lines of every CHILD SA (wasmsec's export)
  ikev2_decryption_table    Wireshark IKEv2 key lines of every IKE SA
  wasmsec.log               wasmsec's log (data path SA changes, with microseconds)
  stats.json                wasmsec's counters (drops by reason)

and prints, for the echo requests of the busiest ping (by ICMP identifier),
each one that got no reply: the ESP SPI and sequence number it and its reply
travelled under, the stage it reached (on the wire towards us, delivered to
host B, answered, on the wire back), where it died (the peer's outbound
path, wasmsec inbound, wasmsec outbound, or the peer's inbound path), and the
IKE exchanges and data-path SA changes around that moment. The IKE and ESP
traffic is decrypted with the exported keys, so DELETE and REKEY_SA notifies
show which SPIs they name.

usage: loss-report.py --dir DIR [--peer-log charon.log] [--window-ms 30]
"""
import argparse
import datetime
import json
import os
import re
import subprocess
import sys

EXCHANGES = {34: "IKE_SA_INIT", 35: "IKE_AUTH", 36: "CREATE_CHILD_SA", 37: "INFORMATIONAL"}
REKEY_SA = 16393


def tshark(pcap, fields, opts=(), display=None):
    cmd = ["tshark", "-n", "-r", pcap, *opts, "-T", "fields", "-E", "occurrence=a", "-E", "aggregator=,"]
    if display:
        cmd += ["-Y", display]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"tshark failed on {pcap}: {out.stderr.strip()}")
    rows = []
    for line in out.stdout.splitlines():
        cols = line.split("\t")
        cols += [""] * (len(fields) - len(cols))
        rows.append(dict(zip(fields, cols)))
    return rows


def key_opts(d):
    opts = ["-o", "esp.enable_encryption_decode:TRUE"]
    for name, uat in (("esp_sa", "esp_sa"), ("ikev2_decryption_table", "ikev2_decryption_table")):
        p = os.path.join(d, name)
        if os.path.exists(p):
            for line in open(p):
                if line.strip():
                    opts += ["-o", f"uat:{uat}:{line.strip()}"]
    return opts


def pings(pcap):
    """(ident, seq) -> {"req": t, "rep": t} from a plain LAN capture."""
    seen = {}
    for r in tshark(pcap, ["frame.time_epoch", "icmp.type", "icmp.ident", "icmp.seq"], display="icmp"):
        if not r["icmp.ident"] or r["icmp.type"] not in ("0", "8"):
            continue
        key = (r["icmp.ident"].split(",")[-1], int(r["icmp.seq"].split(",")[-1]))
        seen.setdefault(key, {})["req" if r["icmp.type"] == "8" else "rep"] = float(r["frame.time_epoch"])
    return seen


def wan(pcap, opts):
    """ESP packets (with the inner ping, if decrypted) and IKE messages."""
    fields = ["frame.time_epoch", "ip.src", "esp.spi", "esp.sequence", "icmp.type", "icmp.ident", "icmp.seq",
              "isakmp.exchangetype", "isakmp.flags", "isakmp.messageid", "isakmp.notify.msgtype",
              "isakmp.delete.spi", "isakmp.spi", "isakmp.ispi"]
    esp, ike = [], []
    for r in tshark(pcap, fields, opts):
        t = float(r["frame.time_epoch"])
        src = r["ip.src"].split(",")[0]
        if r["esp.spi"]:
            e = {"t": t, "src": src, "spi": r["esp.spi"].split(",")[0].replace("0x", ""),
                 "seq": r["esp.sequence"].split(",")[0]}
            if r["icmp.seq"]:
                e["icmp"] = (r["icmp.type"].split(",")[-1], r["icmp.ident"].split(",")[-1],
                             int(r["icmp.seq"].split(",")[-1]))
            esp.append(e)
        elif r["isakmp.exchangetype"]:
            flags = int(r["isakmp.flags"].split(",")[0] or "0", 16)
            notifies = [int(n) for n in r["isakmp.notify.msgtype"].split(",") if n]
            ike.append({
                "t": t, "src": src,
                "exchange": EXCHANGES.get(int(r["isakmp.exchangetype"].split(",")[0]), r["isakmp.exchangetype"]),
                "response": bool(flags & 0x20), "mid": int(r["isakmp.messageid"].split(",")[0], 16),
                "delete": [s.replace("0x", "") for s in r["isakmp.delete.spi"].split(",") if s],
                "rekey": REKEY_SA in notifies,
                "spis": [s.replace("0x", "") for s in r["isakmp.spi"].split(",") if s],
            })
    return esp, ike


def log_events(path):
    """wasmsec's data-path SA changes and CHILD SA events, with their times."""
    ev = []
    if not os.path.exists(path):
        return ev
    pat = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z\s+\w+\s+\S+: (.*)$")
    for line in open(path, errors="replace"):
        m = pat.match(line.strip())
        if not m or not re.search(r"data path:|CHILD_SA|IKE_SA .*rekeyed|deleted", m.group(2)):
            continue
        t = datetime.datetime.fromisoformat(m.group(1)).replace(tzinfo=datetime.timezone.utc).timestamp()
        ev.append((t, m.group(2)))
    return ev


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--peer-log", help="the peer's log (strongSwan's charon.log), quoted by second")
    ap.add_argument("--window-ms", type=float, default=30.0)
    a = ap.parse_args()
    d = a.dir
    opts = key_opts(d)
    esp, ike = wan(os.path.join(d, "cap-b-wan.pcap"), opts)
    b_lan = pings(os.path.join(d, "cap-b-lan.pcap"))
    host_a = os.path.join(d, "cap-a-host.pcap")
    a_host = pings(host_a) if os.path.exists(host_a) else None
    events = log_events(os.path.join(d, "wasmsec.log"))
    stats = {}
    try:
        stats = json.load(open(os.path.join(d, "stats.json")))
    except (OSError, ValueError):
        pass
    on_wire = {}
    for e in esp:
        if "icmp" in e:
            typ, ident, seq = e["icmp"]
            on_wire.setdefault((ident, seq), {})["req" if typ == "8" else "rep"] = e
    source = a_host if a_host is not None else b_lan
    idents = {}
    for (ident, _seq) in list(source) + list(on_wire):
        idents[ident] = idents.get(ident, 0) + 1
    if not idents:
        print("loss report: no pings seen")
        return 0
    ident = max(idents, key=idents.get)
    seqs = sorted({s for (i, s) in list(source) + list(on_wire) if i == ident})
    undecrypted = sum(1 for e in esp if "icmp" not in e)
    print(f"loss report for the ping with ICMP id {ident}: {len(seqs)} echo requests "
          f"({'host A' if a_host is not None else 'host B'} vantage), {len(esp)} ESP packets on the WAN "
          f"({undecrypted} not decrypted), {len(ike)} IKE messages")
    drops = {k: v for side in ("inbound_drops", "outbound_drops") for k, v in stats.get(side, {}).items() if v}
    if drops:
        print(f"wasmsec drops: {json.dumps({s: {k: v for k, v in stats[s].items() if v} for s in ('inbound_drops', 'outbound_drops')})}")
    lost = []
    for s in seqs:
        w = on_wire.get((ident, s), {})
        bl = b_lan.get((ident, s), {})
        if a_host is not None:
            ah = a_host.get((ident, s), {})
            if "req" in ah and "rep" in ah:
                continue
            if "req" not in ah:
                continue  # not sent by host A within the capture
        elif "rep" in w:
            continue
        if "req" not in w:
            where = "the peer's outbound path: the request never reached our WAN"
        elif "req" not in bl:
            where = "wasmsec inbound: the request reached our WAN but not host B"
        elif "rep" not in bl:
            where = "host B: it did not answer"
        elif "rep" not in w:
            where = "wasmsec outbound: host B answered but the reply never left our WAN"
        else:
            where = "the peer's inbound path: the reply left our WAN and never reached host A"
        t = (w.get("req") or w.get("rep") or {}).get("t") or bl.get("req") or (a_host or {}).get((ident, s), {}).get("req")
        lost.append((s, t, w, where))
    print(f"lost: {len(lost)}")
    t0 = min([e["t"] for e in esp] + [i["t"] for i in ike] or [0])
    spi_first = {}
    for e in esp:
        spi_first.setdefault(e["spi"], e["t"])
    peer_log = open(a.peer_log, errors="replace").read().splitlines() if a.peer_log and os.path.exists(a.peer_log) else []
    for s, t, w, where in lost:
        print(f"\nicmp_seq {s}: died in {where}")
        for k, what in (("req", "request"), ("rep", "reply")):
            if k in w:
                e = w[k]
                print(f"  {what} under SPI {e['spi']} seq {e['seq']} at +{e['t'] - t0:.4f} s "
                      f"(SPI first seen +{spi_first[e['spi']] - t0:.4f} s)")
        if t is None:
            continue
        win = a.window_ms / 1000
        print(f"  around +{t - t0:.4f} s:")
        rows = []
        for m in ike:
            if abs(m["t"] - t) <= max(win, 0.2):
                extra = []
                if m["delete"]:
                    extra.append("DELETE " + ",".join(m["delete"]))
                if m["rekey"]:
                    extra.append("REKEY_SA")
                if m["spis"] and m["exchange"] in ("CREATE_CHILD_SA", "INFORMATIONAL"):
                    extra.append("SPIs " + ",".join(m["spis"]))
                rows.append((m["t"], f"IKE {m['exchange']} {'response' if m['response'] else 'request'} "
                                     f"MID {m['mid']} from {m['src']} {' '.join(extra)}"))
        for e in esp:
            if abs(e["t"] - t) <= win and "icmp" not in e:
                rows.append((e["t"], f"ESP {e['spi']}#{e['seq']} from {e['src']} (not decrypted)"))
        for (tt, msg) in events:
            if abs(tt - t) <= max(win, 0.2):
                rows.append((tt, f"wasmsec: {msg}"))
        for tt, msg in sorted(rows):
            print(f"    +{tt - t0:.4f} {msg}")
        if peer_log:
            sec = datetime.datetime.fromtimestamp(t).strftime("%H:%M:%S")
            quoted = [l for l in peer_log if l.startswith(sec) and re.search(r"CHILD_SA|DELETE|expire|rekey", l)]
            for l in quoted[:12]:
                print(f"    peer: {l}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
