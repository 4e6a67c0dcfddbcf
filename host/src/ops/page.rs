//! Pages of the admin API's SA lists (`/v1/sas`, `/v1/status`).
//!
//! A PoP holds 100,000 CHILD SAs. Answering all of them at once made the
//! IKE thread build the whole list as JSON while every handshake waited,
//! and one `status` took the daemon from 427 MiB to about 1 GiB (#16,
//! `cargo xtask bench-memory`). So an answer holds at most `limit` SAs
//! (IKE SAs by our SPI first, then CHILD SAs in the order they were
//! installed) and, when more are left, a `next` cursor to ask for the rest
//! with `after`. The CLI follows the cursors.
//!
//! Cursors name the last SA shown, not a position, so that SAs deleted
//! between two pages do not shift the rest. A listing over several pages
//! is not a snapshot: an SA installed meanwhile is shown on a later page,
//! one deleted meanwhile may have been shown already.
use std::collections::BTreeMap;
use std::ops::Bound;

use crate::by_spi::BySpi;

/// SAs per answer when the request does not say.
pub const DEFAULT_LIMIT: usize = 1000;
/// The most SAs one answer holds.
pub const MAX_LIMIT: usize = 10_000;

/// The last SA a page showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    /// An IKE SA, by our SPI.
    Ike(u64),
    /// A CHILD SA, by its number of installation.
    Child(u64),
}

impl Cursor {
    /// `ike-<16 hex digits>` or `child-<number>`, as [`Cursor::show`] writes them.
    pub fn parse(s: &str) -> Option<Cursor> {
        if let Some(h) = s.strip_prefix("ike-") {
            return (h.len() == 16).then(|| u64::from_str_radix(h, 16).ok()).flatten().map(Cursor::Ike);
        }
        let n = s.strip_prefix("child-")?;
        // Digits only: `parse` would take a leading `+`.
        (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())).then(|| n.parse().ok()).flatten().map(Cursor::Child)
    }

    pub fn show(self) -> String {
        match self {
            Cursor::Ike(spi) => format!("ike-{spi:016x}"),
            Cursor::Child(n) => format!("child-{n}"),
        }
    }
}

/// Which SAs an answer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// Start after this SA (none: from the first).
    pub after: Option<Cursor>,
    /// At most this many SAs, IKE and CHILD together (1 to [`MAX_LIMIT`]).
    pub limit: usize,
}

impl Default for Page {
    fn default() -> Self {
        Page { after: None, limit: DEFAULT_LIMIT }
    }
}

/// The SAs of one page, and the cursor of the next if any are left.
pub struct Selected<'a, I, C> {
    pub ike: Vec<&'a I>,
    pub children: Vec<&'a C>,
    pub next: Option<Cursor>,
}

impl Page {
    /// The page a request's query asks for: `limit=N` and `after=CURSOR`,
    /// each at most once; anything else is refused with the reason.
    pub fn from_query(query: Option<&str>) -> Result<Page, String> {
        let mut page = Page::default();
        let (mut limit, mut after) = (None, None);
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match k {
                "limit" => &mut limit,
                "after" => &mut after,
                _ => return Err(format!("unknown query parameter {k:?} (limit, after)")),
            };
            if slot.replace(v).is_some() {
                return Err(format!("query parameter {k:?} given twice"));
            }
        }
        if let Some(v) = limit {
            page.limit = v
                .parse()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| format!("limit is a number of SAs, 1 to {MAX_LIMIT}, not {v:?}"))?;
        }
        if let Some(v) = after {
            let c = Cursor::parse(v).ok_or_else(|| format!("after is a previous answer's \"next\", not {v:?}"))?;
            page.after = Some(c);
        }
        Ok(page)
    }

    /// The query that asks for this page.
    pub fn query(&self) -> String {
        match self.after {
            Some(c) => format!("limit={}&after={}", self.limit, c.show()),
            None => format!("limit={}", self.limit),
        }
    }

    /// This page's SAs: IKE SAs by SPI, then CHILD SAs by installation.
    pub fn select<'a, I, C>(&self, ike: &'a BTreeMap<u64, I>, children: &'a BySpi<C>) -> Selected<'a, I, C> {
        let mut out = Selected { ike: Vec::new(), children: Vec::new(), next: None };
        let limit = self.limit.max(1);
        let child_from = match self.after {
            Some(Cursor::Child(n)) => Bound::Excluded(n),
            after => {
                let from = match after {
                    Some(Cursor::Ike(spi)) => Bound::Excluded(spi),
                    _ => Bound::Unbounded,
                };
                let mut it = ike.range((from, Bound::Unbounded));
                let mut last = None;
                for (&spi, sa) in it.by_ref().take(limit) {
                    out.ike.push(sa);
                    last = Some(Cursor::Ike(spi));
                }
                if out.ike.len() == limit {
                    let more = it.next().is_some() || !children.is_empty();
                    out.next = last.filter(|_| more);
                    return out;
                }
                Bound::Unbounded
            }
        };
        let room = limit - out.ike.len();
        let mut it = children.numbered(child_from);
        let mut last = None;
        for (n, c) in it.by_ref().take(room) {
            out.children.push(c);
            last = Some(Cursor::Child(n));
        }
        if out.children.len() == room && it.next().is_some() {
            out.next = last;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_read_back_what_they_write() {
        for c in [Cursor::Ike(0), Cursor::Ike(u64::MAX), Cursor::Ike(0x0123_4567_89ab_cdef), Cursor::Child(0)] {
            assert_eq!(Cursor::parse(&c.show()), Some(c));
        }
        assert_eq!(Cursor::parse("child-18446744073709551615"), Some(Cursor::Child(u64::MAX)));
        for bad in [
            "",
            "ike-",
            "ike-12",
            "ike-0123456789abcdeg",
            "child-",
            "child-+1",
            "child-1x",
            "child-99999999999999999999",
            "12",
        ] {
            assert_eq!(Cursor::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn queries_are_checked() {
        assert_eq!(Page::from_query(None), Ok(Page::default()));
        assert_eq!(Page::from_query(Some("")), Ok(Page::default()));
        let p = Page::from_query(Some("limit=5&after=child-7")).unwrap();
        assert_eq!(p, Page { after: Some(Cursor::Child(7)), limit: 5 });
        assert_eq!(Page::from_query(Some(&p.query())), Ok(p));
        for bad in ["limit=0", "limit=10001", "limit=x", "limit", "after=7", "after=", "page=2", "limit=1&limit=2"] {
            assert!(Page::from_query(Some(bad)).is_err(), "{bad:?}");
        }
    }

    /// The SAs of `page` and of every page after it, and how many pages.
    fn walk_from(mut page: Page, ike: &BTreeMap<u64, u64>, children: &BySpi<u32>) -> (Vec<u64>, Vec<u32>, usize) {
        let (mut i, mut c, mut pages) = (Vec::new(), Vec::new(), 0);
        loop {
            let s = page.select(ike, children);
            assert!(s.ike.len() + s.children.len() <= page.limit);
            i.extend(s.ike.iter().copied());
            c.extend(s.children.iter().copied());
            pages += 1;
            match s.next {
                Some(n) => page.after = Some(n),
                None => return (i, c, pages),
            }
        }
    }

    fn walk(ike: &BTreeMap<u64, u64>, children: &BySpi<u32>, limit: usize) -> (Vec<u64>, Vec<u32>, usize) {
        walk_from(Page { after: None, limit }, ike, children)
    }

    #[test]
    fn pages_show_every_sa_once() {
        let ike: BTreeMap<u64, u64> = [30, 10, 20].into_iter().map(|s| (s, s)).collect();
        let mut children = BySpi::default();
        for spi in [7u32, 3, 9, 1] {
            children.insert(spi, spi);
        }
        for limit in 1..=9 {
            let (i, c, pages) = walk(&ike, &children, limit);
            assert_eq!(i, [10, 20, 30], "limit {limit}");
            assert_eq!(c, [7, 3, 9, 1], "limit {limit}: installation order");
            assert_eq!(pages, 7usize.div_ceil(limit), "limit {limit}: no empty last page");
        }
        // Only IKE SAs, exactly a page of them: no cursor to an empty page.
        assert!(Page { after: None, limit: 3 }.select(&ike, &BySpi::<u32>::default()).next.is_none());
        let none: BTreeMap<u64, u64> = BTreeMap::new();
        assert_eq!(walk(&none, &children, 2), (vec![], vec![7, 3, 9, 1], 2));
        assert_eq!(walk(&none, &BySpi::default(), 2), (vec![], vec![], 1));
    }

    #[test]
    fn a_cursor_survives_deletes_and_installs_between_pages() {
        let ike = BTreeMap::new();
        let mut children = BySpi::default();
        for spi in 1..=6u32 {
            children.insert(spi, spi);
        }
        let first = Page { after: None, limit: 2 }.select(&ike, &children);
        assert_eq!(first.children, [&1, &2]);
        let next = first.next;
        // The SA the cursor names and the next one go, a new one comes.
        children.remove(2, |_| true);
        children.remove(3, |_| true);
        children.insert(7, 7);
        let (_, rest, _) = walk_from(Page { after: next, limit: 2 }, &ike, &children);
        assert_eq!(rest, [4, 5, 6, 7], "nothing skipped, nothing twice");
    }
}
