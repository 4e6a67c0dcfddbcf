//! Duplicate IKE SAs: two we authenticated with the same peer for the same
//! connection, each with its CHILD SAs.
//!
//! RFC 7296 allows them (section 2.4 leaves it to INITIAL_CONTACT and
//! local policy), but they double every rekey and split a tunnel's traffic
//! over two sets of SAs. A reauthentication makes one on purpose and
//! deletes the old one once the new one's CHILD SAs are up. One also comes
//! from `initiate` on a connection that is up, and from races the
//! reauthentication's own bookkeeping does not see (a reauthentication
//! crossing a rekey or a DPD restart under loss). So the end that
//! authenticated both keeps the later one and deletes the other, once the
//! later one has a CHILD SA for every CHILD config the other has: a
//! make-before-break replacement, as strongSwan's `unique = replace` does
//! for a peer's identity.
//!
//! Only the end that sent both IKE_AUTH requests decides: it is one end,
//! so the two never delete both. IKE SAs the peer authenticated are the
//! peer's to judge (two ends initiating at once make one of each; that
//! case is left as it is).

use super::lifecycle;
use super::state::IkeSa;
use crate::ctx::Ctx;

/// An IKE SA that may be compared: established, ours, not closing, not in
/// a reauthentication (as new or as old: that one ends by itself), and not
/// the loser of a simultaneous rekey waiting for its DELETE.
fn comparable(sa: &IkeSa) -> bool {
    sa.established() && sa.auth_initiator && !sa.owed.close && sa.replaces.is_none() && sa.redundant_at == 0
}

/// `a` was authenticated later than `b` (the greater SPI breaks a tie).
fn later(a: &IkeSa, b: &IkeSa) -> bool {
    (a.authenticated_at, a.our_spi()) > (b.authenticated_at, b.our_spi())
}

/// `newer` has a CHILD SA of each CHILD config `older` has one of.
fn covers(newer: &IkeSa, older: &IkeSa) -> bool {
    older.children.iter().all(|o| newer.children.iter().any(|n| n.cfg == o.cfg))
}

/// Compare `sa` (out of the table: the SA being worked on) with the other
/// IKE SAs of its connection and peer, keep the latest, and retire each
/// other that it covers (`sa` itself included).
pub(crate) fn retire_duplicates(sa: &mut IkeSa, ctx: &mut Ctx) {
    if !comparable(sa) {
        return;
    }
    let me = sa.our_spi();
    let mut others = ctx.sas.with_peer(sa.conn, sa.remote.addr, comparable);
    others.retain(|&k| k != me);
    if others.is_empty() {
        return;
    }
    // Not an IKE SA a reauthentication under way replaces.
    let replaced: Vec<u64> =
        ctx.sas.of_connection(sa.conn).iter().filter_map(|k| ctx.sas.get(k).and_then(|s| s.replaces)).collect();
    if replaced.contains(&me) {
        return;
    }
    others.retain(|k| !replaced.contains(k));
    let latest = others.iter().copied().reduce(|b, k| if later(&ctx.sas[&k], &ctx.sas[&b]) { k } else { b });
    match latest.filter(|k| later(&ctx.sas[k], sa)) {
        None => retire_covered(sa, &others, ctx),
        Some(k) => {
            let Some(keep) = ctx.sas.remove(&k) else { return };
            if covers(&keep, sa) {
                retire_one(sa, &keep, ctx);
            }
            others.retain(|&o| o != k);
            retire_covered(&keep, &others, ctx);
            ctx.sas.insert(k, keep);
        }
    }
}

/// Retire each of the IKE SAs `olders` (in the table) that `keep` covers.
fn retire_covered(keep: &IkeSa, olders: &[u64], ctx: &mut Ctx) {
    for &k in olders {
        let Some(mut o) = ctx.sas.remove(&k) else { continue };
        if covers(keep, &o) {
            retire_one(&mut o, keep, ctx);
        }
        ctx.sas.insert(k, o);
    }
}

fn retire_one(old: &mut IkeSa, keep: &IkeSa, ctx: &mut Ctx) {
    let msg = format!(
        "IKE_SA {:016x} duplicates IKE_SA {:016x} with {}, which we authenticated later: deleting it",
        old.our_spi(),
        keep.our_spi(),
        old.remote.addr
    );
    ctx.warn(old.conn, msg);
    ctx.count(old.conn, |s| &mut s.duplicates_deleted);
    lifecycle::retire(old, ctx);
}
