//! Duplicate IKE SAs: two with the same peer for the same connection,
//! each with its CHILD SAs. The peer is the identity IKE_AUTH verified,
//! not an address (section 2.4 speaks of the authenticated identities): a
//! peer with two addresses (one it initiates from, another we initiate
//! to, as behind a cloud NAT that maps outbound and inbound traffic to
//! different public addresses) makes the same pair, and several peers
//! behind one NAT address are no pair at all. The lookup is by the
//! identity index, so a remote-access server with thousands of clients
//! behind one address pays no more per CHILD SA than with one.
//!
//! RFC 7296 allows them (section 2.4 leaves it to INITIAL_CONTACT and
//! local policy), but they double every rekey and split a tunnel's traffic
//! over two sets of SAs. A reauthentication makes one on purpose and
//! deletes the old one once the new one's CHILD SAs are up. One also comes
//! from `initiate` on a connection that is up, from both ends initiating
//! at once, and from races the reauthentication's own bookkeeping does not
//! see (a reauthentication crossing a rekey or a DPD restart under loss).
//! Of two IKE SAs we initiated, the later one stays and the other goes
//! once the later one has a CHILD SA for every CHILD config the other has:
//! a make-before-break replacement, as strongSwan's `unique = replace`
//! does for a peer's identity.
//!
//! One end decides for each IKE SA, so the two never delete both: the end
//! that sent its IKE_AUTH request. When the two ends initiated one each at
//! once (both with `start_action = "start"`), the end whose own identity
//! is the lesser (as ID payload bodies, which both ends see alike, NAT or
//! not) deletes its own. The peer's is the one IKE_AUTH authenticated, so
//! an end with `remote_id = "%any"` decides as well (before 2026-12-07 it
//! compared the configured one and left such a pair alone).

use super::lifecycle;
use super::state::IkeSa;
use crate::ctx::Ctx;
use crate::identity::Identity;

/// An IKE SA that may be compared: established, not closing, not in a
/// reauthentication of ours (as new or as old: that one ends by itself),
/// and not the loser of a simultaneous rekey waiting for its DELETE.
fn comparable(sa: &IkeSa) -> bool {
    sa.established() && !sa.owed.close && sa.replaces.is_none() && sa.redundant_at == 0
}

/// Which of two IKE SAs stays: with `yields`, one the peer authenticated
/// before one of ours; then the later one (the greater SPI breaks a tie).
fn rank(sa: &IkeSa, yields: bool) -> (bool, u64, u64) {
    (sa.auth_initiator != yields, sa.authenticated_at, sa.our_spi())
}

/// Our identity is the lesser of the two of `sa`'s connection and
/// authenticated peer (a pair the two ends initiated at once keeps the
/// peer's IKE SA). The peer sees the same two bodies the other way round,
/// so exactly one end yields where they differ.
fn yields(ctx: &Ctx, sa: &IkeSa) -> bool {
    match &ctx.conns[sa.conn].local_id {
        Identity::Id(ours) => ours.body() < sa.peer_id,
        Identity::Any => false,
    }
}

/// `keep` has a CHILD SA of each CHILD config `other` has one of.
fn covers(keep: &IkeSa, other: &IkeSa) -> bool {
    other.children.iter().all(|o| keep.children.iter().any(|n| n.cfg == o.cfg))
}

/// Compare `sa` (out of the table: the SA being worked on) with the other
/// IKE SAs of its connection and peer, keep the one that ranks first, and
/// retire each other one of ours that it covers (`sa` itself included).
/// The peer's are the peer's to delete.
pub(crate) fn retire_duplicates(sa: &mut IkeSa, ctx: &mut Ctx) {
    if !comparable(sa) {
        return;
    }
    // Beside one the peer initiated, only ours may go: the peer's others
    // are not compared (a peer with many IKE SAs from one address costs
    // no more than the lookup).
    let (me, mine) = (sa.our_spi(), sa.auth_initiator);
    let mut others = ctx.sas.with_identity(sa.conn, &sa.peer_id, |s| comparable(s) && (mine || s.auth_initiator));
    others.retain(|&k| k != me);
    if others.is_empty() {
        return;
    }
    // Not an IKE SA a reauthentication under way replaces.
    if lifecycle::reauthenticating(ctx, me) {
        return;
    }
    others.retain(|&k| !lifecycle::reauthenticating(ctx, k));
    let y = yields(ctx, sa);
    let first = others.iter().copied().max_by_key(|k| rank(&ctx.sas[k], y));
    match first.filter(|k| rank(&ctx.sas[k], y) > rank(sa, y)) {
        None => retire_covered(sa, &others, ctx),
        Some(k) => {
            let Some(keep) = ctx.sas.remove(&k) else { return };
            if sa.auth_initiator && covers(&keep, sa) {
                retire_one(sa, &keep, ctx);
            }
            others.retain(|&o| o != k);
            retire_covered(&keep, &others, ctx);
            ctx.sas.insert(k, keep);
        }
    }
}

/// Retire each of our IKE SAs `others` (in the table) that `keep` covers.
fn retire_covered(keep: &IkeSa, others: &[u64], ctx: &mut Ctx) {
    for &k in others {
        let Some(mut o) = ctx.sas.remove(&k) else { continue };
        if o.auth_initiator && covers(keep, &o) {
            retire_one(&mut o, keep, ctx);
        }
        ctx.sas.insert(k, o);
    }
}

/// Close `old` at the next tick, once no exchange of ours is in flight on
/// it (it may be the SA whose message is being answered right now).
fn retire_one(old: &mut IkeSa, keep: &IkeSa, ctx: &mut Ctx) {
    let whose = if keep.auth_initiator { "we authenticated later" } else { "the peer initiated" };
    let peer = crate::identity::show_body(&old.peer_id);
    let (at, other) = (old.remote.addr, keep.remote.addr);
    let elsewhere = if at == other { String::new() } else { format!(", the other at {other}") };
    let msg = format!(
        "IKE_SA {:016x} duplicates IKE_SA {:016x} with {peer} at {at}{elsewhere}, which {whose}: deleting it",
        old.our_spi(),
        keep.our_spi(),
    );
    ctx.warn(old.conn, msg);
    ctx.count(old.conn, |s| &mut s.duplicates_deleted);
    lifecycle::wind_down(old);
    old.owed.close = true;
}
