//! Pages of the admin API's lists: the SAs (`/v1/sas`, `/v1/status`) and
//! the loaded connections (`/v1/connections`).
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
//!
//! A page may hold only one connection's SAs (`connection=NAME`, as
//! swanctl's `--list-sas --ike NAME`) or one tenant's (`tenant=NAME`): on
//! a PoP the operator looking for one peer's tunnel should not have to
//! page through every tenant's. The cursors are the same; a filtered page
//! skips the SAs it does not hold.
//!
//! The connections come in pages too ([`ConnectionPage`]): a PoP loads
//! thousands of tenants' connections, each with its traffic selectors and
//! proposals. They come by name, and the cursor is the last name shown,
//! so that a reload between pages (which removes, adds and changes
//! connections) neither shifts nor repeats the rest.
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use crate::by_spi::BySpi;

/// SAs (or connections) per answer when the request does not say.
pub const DEFAULT_LIMIT: usize = 1000;
/// The most SAs (or connections) one answer holds.
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Start after this SA (none: from the first).
    pub after: Option<Cursor>,
    /// At most this many SAs, IKE and CHILD together (1 to [`MAX_LIMIT`]).
    pub limit: usize,
    /// Only these SAs (none: all).
    pub only: Option<Only>,
}

/// The SAs a filtered page holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Only {
    /// Those of the connection of this name.
    Connection(String),
    /// Those of the connections of this tenant.
    Tenant(String),
}

impl Default for Page {
    fn default() -> Self {
        Page { after: None, limit: DEFAULT_LIMIT, only: None }
    }
}

/// The SAs of one page, and the cursor of the next if any are left.
pub struct Selected<'a, I, C> {
    pub ike: Vec<&'a I>,
    pub children: Vec<&'a C>,
    pub next: Option<Cursor>,
}

impl Page {
    /// The page a request's query asks for: `limit=N`, `after=CURSOR` and
    /// one of `connection=NAME` and `tenant=NAME` (percent-encoded), each
    /// at most once; anything else is refused with the reason.
    pub fn from_query(query: Option<&str>) -> Result<Page, String> {
        let p = parameters(query, &["limit", "after", "connection", "tenant"])?;
        let mut page = Page { only: Only::of(&p)?, limit: limit_of(&p, "SAs")?, ..Page::default() };
        if let Some(v) = p.get("after") {
            let c = Cursor::parse(v).ok_or_else(|| format!("after is a previous answer's \"next\", not {v:?}"))?;
            page.after = Some(c);
        }
        Ok(page)
    }

    /// The query that asks for this page.
    pub fn query(&self) -> String {
        let mut q = format!("limit={}", self.limit);
        if let Some(c) = self.after {
            q += &format!("&after={}", c.show());
        }
        if let Some(o) = &self.only {
            q += &format!("&{}", o.query());
        }
        q
    }

    /// This page's SAs: IKE SAs by SPI, then CHILD SAs by installation,
    /// of those that `keep_ike` and `keep_child` hold (what [`Page::only`]
    /// asks, which the caller knows how to tell).
    pub fn select<'a, I, C>(
        &self,
        ike: &'a BTreeMap<u64, I>,
        children: &'a BySpi<C>,
        keep_ike: impl Fn(&I) -> bool,
        keep_child: impl Fn(&C) -> bool,
    ) -> Selected<'a, I, C> {
        let mut out = Selected { ike: Vec::new(), children: Vec::new(), next: None };
        let limit = self.limit.max(1);
        let child_from = match self.after {
            Some(Cursor::Child(n)) => Bound::Excluded(n),
            after => {
                let from = match after {
                    Some(Cursor::Ike(spi)) => Bound::Excluded(spi),
                    _ => Bound::Unbounded,
                };
                let mut it = ike.range((from, Bound::Unbounded)).filter(|(_, sa)| keep_ike(sa));
                let mut last = None;
                for (&spi, sa) in it.by_ref().take(limit) {
                    out.ike.push(sa);
                    last = Some(Cursor::Ike(spi));
                }
                if out.ike.len() == limit {
                    let more = it.next().is_some() || children.numbered(Bound::Unbounded).any(|(_, c)| keep_child(c));
                    out.next = last.filter(|_| more);
                    return out;
                }
                Bound::Unbounded
            }
        };
        let room = limit - out.ike.len();
        let mut it = children.numbered(child_from).filter(|(_, c)| keep_child(c));
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

/// Which loaded connections an answer of `/v1/connections` holds: at most
/// `limit`, by name, of those named after `after` (the last page's `next`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionPage {
    /// Start after the connection of this name (none: from the first). It
    /// need not be loaded any more.
    pub after: Option<String>,
    /// At most this many connections (1 to [`MAX_LIMIT`]).
    pub limit: usize,
    /// Only this connection, or this tenant's (none: all).
    pub only: Option<Only>,
}

impl Default for ConnectionPage {
    fn default() -> Self {
        ConnectionPage { after: None, limit: DEFAULT_LIMIT, only: None }
    }
}

impl ConnectionPage {
    /// The page a query asks for: `limit=N`, `after=NAME` and one of
    /// `connection=NAME` and `tenant=NAME` (names percent-encoded), each
    /// at most once; anything else is refused with the reason.
    pub fn from_query(query: Option<&str>) -> Result<ConnectionPage, String> {
        let p = parameters(query, &["limit", "after", "connection", "tenant"])?;
        let after = match p.get("after") {
            None => None,
            Some(v) => Some(
                percent_decode(v)
                    .filter(|n| !n.is_empty())
                    .ok_or_else(|| format!("after is a previous answer's \"next\" (a name), not {v:?}"))?,
            ),
        };
        Ok(ConnectionPage { after, limit: limit_of(&p, "connections")?, only: Only::of(&p)? })
    }

    /// The query that asks for this page. Without `limit=` when it is
    /// the default, so that the first page of a plain listing is the
    /// request a daemon from before the pages answers too (with every
    /// connection, no `next`): a CLI upgraded before its daemon restarts
    /// still lists.
    pub fn query(&self) -> String {
        let mut q = Vec::new();
        if self.limit != DEFAULT_LIMIT {
            q.push(format!("limit={}", self.limit));
        }
        if let Some(a) = &self.after {
            q.push(format!("after={}", percent_encode(a)));
        }
        if let Some(o) = &self.only {
            q.push(o.query());
        }
        q.join("&")
    }

    /// This page's items out of `all` (in any order): those named after
    /// `after`, by name, at most `limit`; and the next page's cursor (the
    /// last name shown) if any are left.
    pub fn select<'a, T>(
        &self,
        all: impl IntoIterator<Item = &'a T>,
        name: impl Fn(&T) -> &str,
    ) -> (Vec<&'a T>, Option<String>) {
        let mut left: Vec<&T> = all.into_iter().filter(|t| self.after.as_deref().is_none_or(|a| name(t) > a)).collect();
        let limit = self.limit.max(1);
        // Only the page's names need sorting, not every one left.
        if left.len() > limit {
            left.select_nth_unstable_by(limit, |a, b| name(a).cmp(name(b)));
        }
        let more = left.len() > limit;
        left.truncate(limit);
        left.sort_unstable_by(|a, b| name(a).cmp(name(b)));
        let next = if more { left.last().map(|t| name(t).to_string()) } else { None };
        (left, next)
    }
}

/// A query's `limit` of `what` (default [`DEFAULT_LIMIT`]).
fn limit_of(p: &HashMap<&str, &str>, what: &str) -> Result<usize, String> {
    let Some(v) = p.get("limit") else { return Ok(DEFAULT_LIMIT) };
    v.parse()
        .ok()
        .filter(|n| (1..=MAX_LIMIT).contains(n))
        .ok_or_else(|| format!("limit is a number of {what}, 1 to {MAX_LIMIT}, not {v:?}"))
}

impl Only {
    fn of(p: &HashMap<&str, &str>) -> Result<Option<Only>, String> {
        let name = |k: &str, v: &str| match percent_decode(v) {
            Some(n) if !n.is_empty() => Ok(n),
            _ => Err(format!("{k} is a percent-encoded name, not {v:?}")),
        };
        Ok(match (p.get("connection"), p.get("tenant")) {
            (Some(_), Some(_)) => return Err("connection and tenant: one or the other".into()),
            (Some(v), None) => Some(Only::Connection(name("connection", v)?)),
            (None, Some(v)) => Some(Only::Tenant(name("tenant", v)?)),
            (None, None) => None,
        })
    }

    /// The query parameter that asks for it.
    pub fn query(&self) -> String {
        match self {
            Only::Connection(n) => format!("connection={}", percent_encode(n)),
            Only::Tenant(n) => format!("tenant={}", percent_encode(n)),
        }
    }
}

/// A query's parameters, each one of `allowed` and given at most once.
fn parameters<'q>(query: Option<&'q str>, allowed: &[&str]) -> Result<HashMap<&'q str, &'q str>, String> {
    let mut p = HashMap::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if !allowed.contains(&k) {
            return Err(format!("unknown query parameter {k:?} ({})", allowed.join(", ")));
        }
        if p.insert(k, v).is_some() {
            return Err(format!("query parameter {k:?} given twice"));
        }
    }
    Ok(p)
}

/// `name` with every byte but RFC 3986's unreserved ones as `%XX`.
fn percent_encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out += &format!("%{b:02X}");
        }
    }
    out
}

/// `%XX` back to its byte; `None` for a `%` without two hex digits or
/// bytes that are not UTF-8.
fn percent_decode(v: &str) -> Option<String> {
    let mut out = Vec::with_capacity(v.len());
    let mut bytes = v.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            // Two hex digits, not `from_str_radix`'s leading `+`.
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
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
        assert_eq!(p, Page { after: Some(Cursor::Child(7)), limit: 5, only: None });
        assert_eq!(Page::from_query(Some(&p.query())), Ok(p));
        for bad in ["limit=0", "limit=10001", "limit=x", "limit", "after=7", "after=", "page=2", "limit=1&limit=2"] {
            assert!(Page::from_query(Some(bad)).is_err(), "{bad:?}");
        }
    }

    /// The SAs of `page` and of every page after it, and how many pages.
    fn walk_from(page: Page, ike: &BTreeMap<u64, u64>, children: &BySpi<u32>) -> (Vec<u64>, Vec<u32>, usize) {
        walk_only(page, ike, children, &|_| true)
    }

    /// As `walk_from`, of the SAs (IKE and CHILD) whose value `keep` holds.
    fn walk_only(
        mut page: Page,
        ike: &BTreeMap<u64, u64>,
        children: &BySpi<u32>,
        keep: &dyn Fn(u64) -> bool,
    ) -> (Vec<u64>, Vec<u32>, usize) {
        let (mut i, mut c, mut pages) = (Vec::new(), Vec::new(), 0);
        loop {
            let s = page.select(ike, children, |&v| keep(v), |&v| keep(u64::from(v)));
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
        walk_from(Page { limit, ..Page::default() }, ike, children)
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
        assert!(
            Page { limit: 3, ..Page::default() }
                .select(&ike, &BySpi::<u32>::default(), |_| true, |_| true)
                .next
                .is_none()
        );
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
        let first = Page { limit: 2, ..Page::default() }.select(&ike, &children, |_| true, |_| true);
        assert_eq!(first.children, [&1, &2]);
        let next = first.next;
        // The SA the cursor names and the next one go, a new one comes.
        children.remove(2, |_| true);
        children.remove(3, |_| true);
        children.insert(7, 7);
        let (_, rest, _) = walk_from(Page { after: next, limit: 2, only: None }, &ike, &children);
        assert_eq!(rest, [4, 5, 6, 7], "nothing skipped, nothing twice");
    }

    #[test]
    fn a_filtered_listing_shows_its_sas_once_and_no_other() {
        let ike: BTreeMap<u64, u64> = (1..=9).map(|s| (s, s)).collect();
        let mut children = BySpi::default();
        for spi in [12u32, 3, 8, 5, 10, 7] {
            children.insert(spi, spi);
        }
        let even = |v: u64| v.is_multiple_of(2);
        for limit in 1..=12 {
            let (i, c, pages) = walk_only(Page { limit, ..Page::default() }, &ike, &children, &even);
            assert_eq!(i, [2, 4, 6, 8], "limit {limit}");
            assert_eq!(c, [12, 8, 10], "limit {limit}: installation order");
            assert_eq!(pages, 7usize.div_ceil(limit), "limit {limit}: no empty last page");
        }
        // A page full of IKE SAs: a cursor only where CHILD SAs that match
        // are left, not to an empty page.
        let below_10 = |v: u64| v < 10;
        let (i, c, pages) = walk_only(Page { limit: 9, ..Page::default() }, &ike, &children, &below_10);
        assert_eq!((i.len(), c, pages), (9, vec![3, 8, 5, 7], 2));
        let mut big = BySpi::default();
        big.insert(12u32, 12);
        big.insert(10u32, 10);
        assert_eq!(walk_only(Page { limit: 9, ..Page::default() }, &ike, &big, &below_10).2, 1);
        // Nothing matches: one empty page.
        assert_eq!(walk_only(Page::default(), &ike, &children, &|_| false), (vec![], vec![], 1));
    }

    #[test]
    fn filters_go_through_the_query_whatever_the_name() {
        for name in ["s2s", "a b", "x&limit=1", "50%", "tenant=a", "gw-ü", "~._-"] {
            for only in [Only::Connection(name.into()), Only::Tenant(name.into())] {
                let p = Page { after: Some(Cursor::Ike(5)), limit: 7, only: Some(only) };
                assert_eq!(Page::from_query(Some(&p.query())), Ok(p.clone()), "{}", p.query());
            }
        }
        assert_eq!(
            Page::from_query(Some("connection=a%20b")).map(|p| p.only),
            Ok(Some(Only::Connection("a b".into())))
        );
        for bad in [
            "connection=",
            "tenant=",
            "connection=a&tenant=b",
            "connection=a&connection=b",
            "connection=%",
            "connection=%4",
            "connection=%zz",
            "connection=%+1",
            "connection=%ff",
        ] {
            assert!(Page::from_query(Some(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn connection_queries_are_checked_whatever_the_name() {
        assert_eq!(ConnectionPage::from_query(None), Ok(ConnectionPage::default()));
        // The default page asks as a daemon from before the pages understands.
        assert_eq!(ConnectionPage::default().query(), "");
        let only = ConnectionPage { only: Some(Only::Connection("s2s".into())), ..ConnectionPage::default() };
        assert_eq!(only.query(), "connection=s2s");
        for name in ["s2s", "a b", "x&limit=1", "50%", "tenant=a", "gw-ü", "~._-", "child-1"] {
            let only = Some(Only::Tenant("t 1".into()));
            let p = ConnectionPage { after: Some(name.into()), limit: 3, only };
            assert_eq!(ConnectionPage::from_query(Some(&p.query())), Ok(p.clone()), "{}", p.query());
        }
        assert_eq!(
            ConnectionPage::from_query(Some("after=a%20b&connection=c")),
            Ok(ConnectionPage {
                after: Some("a b".into()),
                limit: DEFAULT_LIMIT,
                only: Some(Only::Connection("c".into()))
            })
        );
        for bad in [
            "limit=0",
            "limit=10001",
            "after=",
            "after=%zz",
            "page=2",
            "tenant=",
            "tenant=a&connection=b",
            "after=a&after=b",
        ] {
            assert!(ConnectionPage::from_query(Some(bad)).is_err(), "{bad:?}");
        }
    }

    /// Every name of `all`, page by page from `page`, and how many pages.
    fn walk_names(mut page: ConnectionPage, all: &[String]) -> (Vec<String>, usize) {
        let (mut names, mut pages) = (Vec::new(), 0);
        loop {
            let (shown, next) = page.select(all, |n: &String| n.as_str());
            assert!(shown.len() <= page.limit);
            names.extend(shown.into_iter().cloned());
            pages += 1;
            match next {
                Some(n) => page.after = Some(n),
                None => return (names, pages),
            }
        }
    }

    #[test]
    fn connection_pages_show_every_name_once_in_order() {
        let all: Vec<String> = ["m", "b", "z", "a", "q", "c", "y"].map(String::from).to_vec();
        let mut sorted = all.clone();
        sorted.sort();
        for limit in 1..=8 {
            let (names, pages) = walk_names(ConnectionPage { limit, ..ConnectionPage::default() }, &all);
            assert_eq!(names, sorted, "limit {limit}");
            assert_eq!(pages, 7usize.div_ceil(limit), "limit {limit}: no empty last page");
        }
        assert_eq!(walk_names(ConnectionPage::default(), &[]), (vec![], 1));
        // The cursor's connection and the next one were removed, one added
        // before it and one after: nothing shown twice, nothing skipped of
        // what is still there after the cursor.
        let (first, next) = ConnectionPage { limit: 3, ..ConnectionPage::default() }.select(&all, |n| n.as_str());
        assert_eq!((first, next.as_deref()), (vec![&all[3], &all[1], &all[5]], Some("c")));
        let now: Vec<String> = ["m", "b", "z", "a", "q", "y", "aa", "n"].map(String::from).to_vec();
        let (rest, _) = walk_names(ConnectionPage { after: next, limit: 2, only: None }, &now);
        assert_eq!(rest, ["m", "n", "q", "y", "z"]);
    }
}
