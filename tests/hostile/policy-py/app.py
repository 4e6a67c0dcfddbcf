"""Test-only policy module in Python (componentize-py): it tries what a
policy must not be able to do, and reports what happened in its reject
reason, which the host logs and the tests read:
  file.*    open and list files (/etc/passwd, /, the current directory)
  socket.*  open a TCP connection and a UDP socket
  env.*     read the environment and the arguments
  clock.*   read the wall clock and the monotonic clock
  sleep.*   sleep for 30 seconds (its clock is frozen: no time passes)
Anyone else is accepted.
"""
import os
import sys
import time

from wit_world import exports
from wit_world.imports.types import Decision_Accept, Decision_Reject, Grant


def attempt(what, f):
    """What happened, briefly: the host keeps 200 characters of a reason."""
    try:
        return f"{what}: succeeded: {f()!r}"[:60]
    except BaseException as e:  # noqa: BLE001 - every failure is the answer
        return f"{what}: {type(e).__name__} {getattr(e, 'errno', '') or ''}".strip()


def tcp():
    import socket
    s = socket.create_connection(("127.0.0.1", 22), timeout=1)
    return s.getpeername()


def udp():
    import socket
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"x", ("127.0.0.1", 9))
    return "sent"


def probe(kind):
    if kind == "file":
        return [attempt("open /etc/passwd", lambda: open("/etc/passwd").read(40)),
                attempt("list /", lambda: os.listdir("/")),
                attempt("list .", lambda: os.listdir(".")),
                attempt("write /tmp", lambda: open("/tmp/wasmsec-policy-escape", "w").write("x"))]
    if kind == "socket":
        return [attempt("tcp", tcp), attempt("udp", udp)]
    if kind == "env":
        return [f"environ: {dict(os.environ)!r}"[:80], f"argv: {sys.argv!r}"[:80]]
    if kind == "clock":
        return [f"time: {time.time()}", f"monotonic: {time.monotonic()}"]
    if kind == "sleep":
        time.sleep(30)
        return [f"slept, monotonic: {time.monotonic()}"]
    return None


class Decide(exports.Decide):
    def authorize(self, request):
        results = probe(request.peer.value.split(".", 1)[0])
        if results is None:
            return Decision_Accept(Grant(tenant="", peer_subnets=[], local_subnets=[], esp_proposals="",
                                         child_rekey_time_s=0, child_life_time_s=0))
        return Decision_Reject("; ".join(results))

    def on_event(self, event):
        pass

    def self_test(self):
        pass
