//! Traffic selector narrowing (RFC 7296 section 2.9).
use wasmsec_wire::ike::{TrafficSelector as Ts, TsType};

/// A CIDR prefix as a selector, any protocol and port.
pub fn from_cidr(s: &str) -> Result<Ts, String> {
    let (a, l) = s.split_once('/').map_or((s, None), |(a, l)| (a, Some(l)));
    let addr: std::net::IpAddr = a.trim().parse().map_err(|_| format!("{s:?} is not an address or CIDR prefix"))?;
    let (bytes, max, ty) = match addr {
        std::net::IpAddr::V4(v) => (v.octets().to_vec(), 32u32, TsType::Ipv4AddrRange),
        std::net::IpAddr::V6(v) => (v.octets().to_vec(), 128, TsType::Ipv6AddrRange),
    };
    let len = match l {
        Some(l) => l.trim().parse::<u32>().ok().filter(|n| *n <= max).ok_or(format!("{s:?}: bad prefix length"))?,
        None => max,
    };
    let mut start = bytes.clone();
    let mut end = bytes;
    for i in 0..max {
        if i >= len {
            let (byte, bit) = ((i / 8) as usize, 7 - (i % 8));
            start[byte] &= !(1 << bit);
            end[byte] |= 1 << bit;
        }
    }
    Ok(Ts { ts_type: ty, ip_protocol: 0, start_port: 0, end_port: 65535, start, end })
}

/// The intersection of two selectors, if not empty.
pub fn intersect(a: &Ts, b: &Ts) -> Option<Ts> {
    if a.ts_type != b.ts_type
        || a.start.len() != b.start.len()
        || a.end.len() != a.start.len()
        || b.end.len() != b.start.len()
    {
        return None;
    }
    let ip_protocol = match (a.ip_protocol, b.ip_protocol) {
        (0, p) | (p, 0) => p,
        (p, q) if p == q => p,
        _ => return None,
    };
    let start_port = a.start_port.max(b.start_port);
    let end_port = a.end_port.min(b.end_port);
    let start = a.start.clone().max(b.start.clone());
    let end = a.end.clone().min(b.end.clone());
    if start_port > end_port || start > end {
        return None;
    }
    Some(Ts { ts_type: a.ts_type, ip_protocol, start_port, end_port, start, end })
}

/// Narrow the peer's proposed selectors to what our configuration allows:
/// every non-empty intersection, without duplicates.
pub fn narrow(proposed: &[Ts], allowed: &[Ts]) -> Vec<Ts> {
    let mut out: Vec<Ts> = Vec::new();
    for p in proposed {
        for a in allowed {
            if let Some(x) = intersect(p, a)
                && !out.contains(&x)
            {
                out.push(x);
            }
        }
    }
    out
}

/// True if every selector of `got` lies within one of `offered`.
pub fn within(got: &[Ts], offered: &[Ts]) -> bool {
    !got.is_empty() && got.iter().all(|g| offered.iter().any(|o| intersect(g, o).as_ref() == Some(g)))
}

/// A selector in strongSwan's notation (`198.18.1.0/24`, `10.0.0.1..10.0.0.9[tcp/443]`).
pub fn show(t: &Ts) -> String {
    let addr = |b: &[u8]| match b.len() {
        4 => std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string(),
        16 => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(b).unwrap_or([0; 16])).to_string(),
        _ => format!("{b:02x?}"),
    };
    let prefix = prefix_len(&t.start, &t.end);
    let mut s = match prefix {
        Some(l) => format!("{}/{l}", addr(&t.start)),
        None => format!("{}..{}", addr(&t.start), addr(&t.end)),
    };
    if t.ip_protocol != 0 || t.start_port != 0 || t.end_port != 65535 {
        s.push_str(&format!("[{}/{}-{}]", t.ip_protocol, t.start_port, t.end_port));
    }
    s
}

/// The length of the CIDR prefix that is exactly `start..=end`, if one
/// is: equal leading bits, then only zeros in `start` and only ones in
/// `end`. (Arithmetic, not a parse of each candidate: `show` runs for
/// every CHILD SA's log line.)
pub fn prefix_len(start: &[u8], end: &[u8]) -> Option<usize> {
    if start.len() != end.len() {
        return None;
    }
    let bit = |b: &[u8], i: usize| b[i / 8] >> (7 - i % 8) & 1;
    let bits = start.len() * 8;
    let len = (0..bits).find(|&i| bit(start, i) != bit(end, i)).unwrap_or(bits);
    (len..bits).all(|i| bit(start, i) == 0 && bit(end, i) == 1).then_some(len)
}

pub fn show_all(ts: &[Ts]) -> String {
    ts.iter().map(show).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrowing() {
        let wide = from_cidr("198.18.0.0/16").unwrap();
        let lan = from_cidr("198.18.1.0/24").unwrap();
        let other = from_cidr("10.0.0.0/8").unwrap();
        assert_eq!(narrow(std::slice::from_ref(&wide), std::slice::from_ref(&lan)), vec![lan.clone()]);
        assert_eq!(narrow(std::slice::from_ref(&lan), std::slice::from_ref(&wide)), vec![lan.clone()]);
        assert!(narrow(std::slice::from_ref(&other), std::slice::from_ref(&lan)).is_empty());
        let https = Ts { ip_protocol: 6, start_port: 443, end_port: 443, ..wide.clone() };
        assert_eq!(intersect(&https, &lan), Some(Ts { ip_protocol: 6, start_port: 443, end_port: 443, ..lan.clone() }));
        let udp = Ts { ip_protocol: 17, ..wide.clone() };
        assert_eq!(intersect(&https, &udp), None);
        assert!(within(std::slice::from_ref(&lan), std::slice::from_ref(&wide)));
        assert!(!within(std::slice::from_ref(&wide), std::slice::from_ref(&lan)));
        assert_eq!(show(&lan), "198.18.1.0/24");
        assert_eq!(show(&https), "198.18.0.0/16[6/443-443]");
        assert!(from_cidr("1.2.3.4/33").is_err());
        for p in ["0.0.0.0/0", "10.0.0.0/8", "198.18.1.128/25", "198.18.1.7/32", "2001:db8::/32", "::/0", "::1/128"] {
            let t = from_cidr(p).unwrap();
            assert_eq!(show(&t), p);
        }
        let range = |a: [u8; 4], b: [u8; 4]| prefix_len(&a, &b);
        assert_eq!(range([10, 0, 0, 1], [10, 0, 0, 9]), None);
        assert_eq!(range([10, 0, 0, 0], [10, 0, 1, 254]), None);
        assert_eq!(range([10, 0, 0, 1], [10, 0, 0, 0]), None);
        assert_eq!(from_cidr("2001:db8::/32").unwrap().end[4], 0xff);
    }
}
