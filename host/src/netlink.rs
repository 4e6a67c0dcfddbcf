//! Netlink messages as bytes: requests built, answers taken apart. The
//! socket is `sys::Netlink`; the questions are `nexthop` (routes and
//! neighbours) and `output_hooks` (netfilter chains, routing rules).
use std::io;
use std::ops::Range;

use crate::sys::Netlink;

/// nlmsghdr.
pub const HDR: usize = 16;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 1;
/// NLM_F_ROOT | NLM_F_MATCH: every object of the kind.
pub const NLM_F_DUMP: u16 = 0x300;
/// The attribute type's flag bits (nested, network byte order).
const TYPE_MASK: u16 = 0x3fff;

/// A request's nlmsghdr; its length and sequence number are set by
/// [`Asker::send`].
pub fn request(kind: u16, flags: u16) -> Vec<u8> {
    let mut m = Vec::with_capacity(64);
    m.extend_from_slice(&[0; 4]);
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&[0; 8]);
    m
}

/// Append an attribute, padded to 4 bytes.
pub fn attr(m: &mut Vec<u8>, kind: u16, data: &[u8]) {
    m.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(data);
    m.resize(m.len().next_multiple_of(4), 0);
}

/// The attributes in `bytes`, as (type, data); one that runs past the end
/// ends them.
pub fn attrs(bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        let len = u16::from_ne_bytes([*rest.first()?, *rest.get(1)?]) as usize;
        let kind = u16::from_ne_bytes([*rest.get(2)?, *rest.get(3)?]) & TYPE_MASK;
        let data = rest.get(4..len)?;
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
        Some((kind, data))
    })
}

/// The messages of one datagram from the kernel, as (type, sequence
/// number, where the payload after nlmsghdr lies in the datagram).
pub fn messages(datagram: &[u8]) -> impl Iterator<Item = (u16, u32, Range<usize>)> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        let rest = datagram.get(at..)?;
        let word = |i: usize| rest.get(i..i + 4).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
        let len = word(0)? as usize;
        let kind = u16::from_ne_bytes([*rest.get(4)?, *rest.get(5)?]);
        let seq = word(8)?;
        rest.get(HDR..len)?;
        let payload = at + HDR..at + len;
        at += len.next_multiple_of(4);
        Some((kind, seq, payload))
    })
}

/// The error an NLMSG_ERROR payload carries (0: an acknowledgement).
pub fn error_of(payload: &[u8]) -> i32 {
    payload.get(..4).map_or(0, |b| -i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

/// A netlink socket and the sequence numbers of its questions.
pub struct Asker {
    pub sock: Netlink,
    seq: u32,
    pub buf: Vec<u8>,
}

impl Asker {
    pub fn open(protocol: i32) -> io::Result<Asker> {
        Ok(Asker { sock: Netlink::open(protocol)?, seq: 0, buf: vec![0; 32 * 1024] })
    }

    /// Send a request made by [`request`]; its sequence number.
    pub fn send(&mut self, mut m: Vec<u8>) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let len = m.len() as u32;
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        m[8..12].copy_from_slice(&self.seq.to_ne_bytes());
        self.sock.send(&m)?;
        Ok(self.seq)
    }

    /// Send a request that has one answer; the payload (after nlmsghdr)
    /// of that answer if it is of type `want`, `None` if it is an error
    /// (no route, no such neighbour).
    pub fn ask(&mut self, m: Vec<u8>, want: u16) -> io::Result<Option<&[u8]>> {
        let seq = self.send(m)?;
        let (kind, payload) = self.answers(seq, |kind, payload, _| Some((kind, payload)))?;
        match kind {
            k if k == want => Ok(Some(&self.buf[payload])),
            NLMSG_ERROR => Ok(None),
            _ => Err(io::Error::other(format!("unexpected netlink answer type {kind}"))),
        }
    }

    /// Send a dump request and hand each answer's (type, payload) to
    /// `each`, until the kernel says it is done.
    pub fn dump(&mut self, m: Vec<u8>, mut each: impl FnMut(u16, &[u8])) -> io::Result<()> {
        let seq = self.send(m)?;
        self.answers(seq, |kind, payload, buf| match kind {
            NLMSG_DONE => Some(Ok(())),
            NLMSG_ERROR => Some(Err(io::Error::from_raw_os_error(error_of(&buf[payload])))),
            _ => {
                each(kind, &buf[payload]);
                None
            }
        })?
    }

    /// Receive the answers to question `seq`, each (type, where its
    /// payload lies, the datagram) to `done`, until `done` returns what
    /// they came to. Answers to questions that timed out are passed over.
    fn answers<R>(&mut self, seq: u32, mut done: impl FnMut(u16, Range<usize>, &[u8]) -> Option<R>) -> io::Result<R> {
        loop {
            let n = self.sock.recv(&mut self.buf)?;
            let datagram = &self.buf[..n];
            for (kind, s, payload) in messages(datagram) {
                if s == seq
                    && let Some(r) = done(kind, payload, datagram)
                {
                    return Ok(r);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_attributes_are_taken_apart_within_their_bounds() {
        let mut m = request(24, NLM_F_REQUEST);
        attr(&mut m, 1, &[1, 2, 3]);
        attr(&mut m, 0x8004, &[9, 9, 9, 9]);
        let len = m.len() as u32;
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        m[8..12].copy_from_slice(&7u32.to_ne_bytes());
        let two = [m.clone(), m.clone()].concat();
        let got: Vec<_> = messages(&two).collect();
        assert_eq!(got.len(), 2);
        let (kind, seq, at) = got[0].clone();
        assert_eq!((kind, seq), (24, 7));
        assert_eq!(got[1].2.start, m.len() + HDR, "the second message's payload, in the datagram");
        let payload = &two[at];
        // Padding skipped, the nested flag masked off.
        let a: Vec<_> = attrs(payload).collect();
        assert_eq!(a, vec![(1, &[1u8, 2, 3][..]), (4, &[9u8, 9, 9, 9][..])]);
        // A message whose length runs past the datagram is not read.
        assert_eq!(messages(&m[..m.len() - 1]).count(), 0);
        assert_eq!(attrs(&payload[..payload.len() - 1]).count(), 1);
        assert_eq!(error_of(&(-13i32).to_ne_bytes()), 13);
    }
}
