//! Writes the generated part of the seed corpus into `fuzz/corpus/`:
//! a whole IKEv2 negotiation as the `ike_responder` target reads it (an
//! initiator on the same secret-free crypto, so every exchange the
//! responder sees is one it can decrypt), each of its messages for
//! `ike_message`, and well-formed ESP for `esp_decap`. The captured
//! strongSwan messages (`fuzz/corpus/ike_message/sswan-*`) and the config
//! seeds are kept in the repository as they are.
//!
//! Run from the workspace root: `cargo run -p wasmsec-fuzz-targets --bin make-seeds`.
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use wasmsec_fuzz_targets::ike_crypto::ClearCrypto;
use wasmsec_fuzz_targets::targets_support::{End, RESPONDER, engine, responder};
use wasmsec_ike::{Datagram, Endpoint, Engine, StartAction, Timing, Transmit};

const INITIATOR: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1));

fn initiator() -> Engine {
    let end = End {
        local: INITIATOR,
        remote: vec![RESPONDER],
        ids: ("initiator.fuzz", "responder.fuzz"),
        subnets: ("10.1.0.0/16", "10.2.0.0/16"),
        proposals: ("aes256gcm16-prfsha256-x25519", "aes128gcm16-x25519"),
        start: StartAction::Start,
    };
    engine(end, Timing::default())
}

/// Hand `data` from `from` to engine `to` on port 500.
fn deliver(to: &mut Engine, crypto: &mut ClearCrypto, now: u64, (from, at): (IpAddr, IpAddr), data: Vec<u8>) {
    let d = Datagram { local: Endpoint { addr: at, port: 500 }, remote: Endpoint { addr: from, port: 500 }, data };
    to.handle_datagram(now, d, crypto);
}

fn datagrams(e: &mut Engine) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(t) = e.poll_transmit() {
        if let Transmit::Datagram(d) = t {
            out.push(d.data);
        }
    }
    while e.poll_sa_change().is_some() {}
    while e.poll_event().is_some() {}
    out
}

fn record(ctl: u8, data: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&((data.len() + 1) as u16).to_be_bytes());
    out.push(ctl);
    out.extend_from_slice(data);
}

fn main() {
    let root = Path::new("fuzz/corpus");
    let (mut a, mut b) = (initiator(), responder());
    let (mut ca, mut cb) = (ClearCrypto::salted(0x80), ClearCrypto::default());
    a.initiate(0, "fuzz", &mut ca).expect("initiate");
    let mut seed = Vec::new();
    let mut messages = Vec::new();
    // Time runs past the CHILD and IKE rekeys and a liveness check.
    for step in 0..200u64 {
        let now = step * 500;
        a.tick(now, &mut ca);
        b.tick(now, &mut cb);
        for d in datagrams(&mut a) {
            // ctl: time step 2 (x250 ms = 500 ms), port 500, tick, source 1.
            record(0x24, &d, &mut seed);
            messages.push(d.clone());
            deliver(&mut b, &mut cb, now, (INITIATOR, RESPONDER), d);
        }
        for d in datagrams(&mut b) {
            messages.push(d.clone());
            deliver(&mut a, &mut ca, now, (RESPONDER, INITIATOR), d);
        }
    }
    let (ike, children) = b.established();
    assert!(ike >= 1 && children >= 1, "the seed negotiation must succeed ({ike} IKE, {children} CHILD SAs)");
    write(&root.join("ike_responder"), "negotiation", &seed);
    for (i, m) in messages.iter().enumerate().take(40) {
        write(&root.join("ike_message"), &format!("clear-{i:02}"), m);
    }
    // ESP: SPI, sequence number, 8-byte "IV", an IPv4 ICMP packet from
    // 10.1.0.1 to 10.2.0.1, padding, pad length and next header 4.
    let mut esp = Vec::new();
    for (spi, seq) in [(0x1001u32, 1u32), (0x1001, 2), (0x1002, 1), (0x1001, 2)] {
        let mut p = Vec::new();
        p.extend_from_slice(&spi.to_be_bytes());
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&[0; 8]);
        let mut ip = vec![0x45, 0, 0, 28, 0, 0, 0, 0, 64, 1, 0, 0, 10, 1, 0, 1, 10, 2, 0, 1];
        ip.extend_from_slice(&[8, 0, 0, 0, 0, 1, 0, seq as u8]);
        p.extend_from_slice(&ip);
        p.extend_from_slice(&[1, 2, 2, 4]);
        esp_record(&mut esp, &p);
    }
    write(&root.join("esp_decap"), "four-packets", &esp);
    // The same for SA 0x1003: a flow of IPv6 UDP packets from fd00:1::1 to
    // fd00:2::1 (next header 41), the third claiming more than it carries.
    let mut esp = Vec::new();
    for seq in 1..=4u32 {
        let mut p = Vec::new();
        p.extend_from_slice(&0x1003u32.to_be_bytes());
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&[0; 8]);
        let claimed: u8 = if seq == 3 { 200 } else { 8 };
        let mut ip = vec![0x60, 0, 0, 0, 0, claimed, 17, 64];
        ip.extend_from_slice(&[0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        ip.extend_from_slice(&[0xfd, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        ip.extend_from_slice(&[0x13, 0x88, 0, 53, 0, 8, 0, seq as u8]);
        p.extend_from_slice(&ip);
        p.extend_from_slice(&[1, 2, 2, 41]);
        esp_record(&mut esp, &p);
    }
    write(&root.join("esp_decap"), "ipv6-flow", &esp);
    println!("seeds written to {}", root.display());
}

/// Append `p` to `out` as one record of the targets' input (its 2-byte
/// length, then its bytes).
fn esp_record(out: &mut Vec<u8>, p: &[u8]) {
    out.extend_from_slice(&(p.len() as u16).to_be_bytes());
    out.extend_from_slice(p);
}

fn write(dir: &Path, name: &str, data: &[u8]) {
    std::fs::create_dir_all(dir).expect("corpus directory");
    std::fs::write(dir.join(name), data).expect("seed file");
}
