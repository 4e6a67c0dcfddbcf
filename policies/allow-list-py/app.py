"""Example policy module in Python: the allow-list of policies/allow-list,
written without Rust. Admit a peer only if its identity is on a list and
the subnets it asks for (its traffic selectors) are within the ones listed
for it.

Build: `cargo xtask policy-py` (componentize-py against wit/, world
`policy`). The module runs under wasmtime-wasi with nothing granted: no
files, no sockets, no environment, a clock frozen at zero. It sees the
authenticated identity, the addresses and the selectors, and answers.
"""
import ipaddress

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports.types import (
    AuthMethod, AuthorizeRequest, Decision_Accept, Decision_Reject, Grant, IdKind, Identity,
)

# Who may connect: an identity ("*." matches a whole domain) and the
# subnets its side may use. Keep in step with policies/allow-list.
RULES = [
    ("*.interop.test", ["198.18.0.0/15"]),
    ("*.wasmsec.test", ["10.0.0.0/8", "192.168.0.0/16"]),
]


def id_matches(pattern, name):
    if pattern.startswith("*."):
        domain = pattern[2:]
        return name.endswith("." + domain) and len(name) > len(domain) + 1
    return name == pattern.lower()


def address_range(ts):
    """(first, last) addresses of `a.b.c.d/n` or `first..last`; a
    `[proto/ports]` suffix is ignored (ports do not widen a subnet)."""
    ts = ts.split("[", 1)[0]
    try:
        if ".." in ts:
            a, b = ts.split("..", 1)
            return ipaddress.ip_address(a), ipaddress.ip_address(b)
        net = ipaddress.ip_network(ts, strict=False)
        return net.network_address, net.broadcast_address
    except ValueError:
        return None


def within(ts, subnets):
    r = address_range(ts)
    if r is None:
        return False
    lo, hi = r
    for s in subnets:
        net = ipaddress.ip_network(s)
        if lo.version == net.version and net.network_address <= lo and hi <= net.broadcast_address:
            return True
    return False


def decide(r):
    if r.peer.kind not in (IdKind.FQDN, IdKind.RFC822):
        return Decision_Reject(f"identity kind {r.peer.kind.name} is not allowed by this policy")
    name = r.peer.value.lower()
    rule = next((subnets for pattern, subnets in RULES if id_matches(pattern, name)), None)
    if rule is None:
        return Decision_Reject(f'identity "{name}" is not on the allow list')
    for ts in r.peer_ts:
        if not within(ts, rule):
            return Decision_Reject(f"{name} may not use {ts} (allowed: {', '.join(rule)})")
    # Accepted: its CHILD SAs are also narrowed to its subnets (what it
    # proposed is within them; a later CREATE_CHILD_SA stays so).
    return Decision_Accept(Grant(tenant="", peer_subnets=list(rule), local_subnets=[], esp_proposals="",
                                 child_rekey_time_s=0, child_life_time_s=0))


CASES = [
    ("gwa.interop.test", "198.18.1.0/24", True),
    ("GWA.Interop.Test", "198.18.1.0..198.18.1.9[6/443-443]", True),
    ("gwa.interop.test", "10.1.0.0/16", False),
    ("interop.test", "198.18.1.0/24", False),
    ("evil.example", "198.18.1.0/24", False),
    ("a.wasmsec.test", "192.168.7.0/24", True),
]


class Decide(exports.Decide):
    def authorize(self, request: AuthorizeRequest):
        return decide(request)

    def on_event(self, event):
        pass

    def self_test(self):
        for peer, ts, want in CASES:
            r = AuthorizeRequest(
                connection="self-test", peer=Identity(kind=IdKind.FQDN, value=peer), auth=AuthMethod.PSK,
                peer_address="192.0.2.1:500", local_address="192.0.2.2:500", peer_ts=[ts], local_ts=[],
            )
            got = isinstance(decide(r), Decision_Accept)
            if got != want:
                raise Err(f"{peer} asking for {ts}: expected {'accept' if want else 'reject'}")
