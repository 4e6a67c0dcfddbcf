//! Config parsing: defaults, typed values, and errors that name the file,
//! the line and the key.
use super::*;

const GOOD: &str = r#"
[tunnel]
name = "wsec0"
[[manual]]
name = "t"
remote_address = "198.18.0.1"
local_ts = ["198.18.2.0/24"]
remote_ts = ["198.18.1.0/24"]
out_spi = "0x1001"
out_key = "env:K1"
in_spi = 4098
in_key = "file:k2"
"#;

const IKE: &str = r#"
[[connection]]
name = "s2s"
local_addrs = ["198.18.0.2"]
remote_addrs = ["198.18.0.1"]
local_id = "gwb.interop.test"
remote_id = "gwa.interop.test"
psk = "env:PSK"
start_action = "start"
[[connection.children]]
name = "net"
local_ts = ["198.18.2.0/24"]
remote_ts = ["198.18.1.0/24"]
"#;

#[test]
fn ike_connection_parses_and_validates() {
    let c = Config::parse(IKE, "i.toml").unwrap();
    assert_eq!(c.connection[0].proposals.0, DEFAULT_IKE_PROPOSALS);
    assert_eq!(c.connection[0].start_action, StartAction::Start);
    refused(
        IKE,
        &[
            ("remote_addrs = [\"198.18.0.1\"]", "remote_addrs = [\"%any\"]", "needs a remote address"),
            (
                "local_id = \"gwb.interop.test\"",
                "local_id = \"gwb\"\nproposals = \"aes256gcm16-bogus\"",
                "unknown algorithm",
            ),
            ("name = \"net\"", "name = \"net\"\nesp_proposals = \"aes256-sha1\"", "no usable proposal"),
            ("local_ts = [\"198.18.2.0/24\"]", "local_ts = []", "at least one subnet"),
        ],
    );
}

/// Each change (`from` replaced by `to` in `base`) is refused with an
/// error that says `want`.
fn refused(base: &str, changes: &[(&str, &str, &str)]) {
    for (from, to, want) in changes {
        let e = Config::parse(&base.replace(from, to), "x.toml").unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
    }
}

#[test]
fn manual_in_spi_stays_out_of_the_ike_range_beside_connections() {
    let both = format!("{GOOD}{IKE}");
    Config::parse(&both, "b.toml").unwrap();
    // The IKE engine's range is only refused where the IKE engine runs.
    Config::parse(&GOOD.replace("in_spi = 4098", "in_spi = \"0xc0000001\""), "m.toml").unwrap();
    refused(
        &both,
        &[
            ("in_spi = 4098", "in_spi = \"0xc0000001\"", "in_spi 0xc0000001 is in 0xc0000000-0xffffffff"),
            ("in_spi = 4098", "in_spi = \"0xffffffff\"", "must be below 0xc0000000"),
        ],
    );
    // Only the inbound SPI: the outbound one is the peer's choice.
    Config::parse(&both.replace("out_spi = \"0x1001\"", "out_spi = \"0xc0000001\""), "o.toml").unwrap();
    Config::parse(&both.replace("in_spi = 4098", "in_spi = \"0xbfffffff\""), "l.toml").unwrap();
}

#[test]
fn a_connections_child_names_are_its_own() {
    let two = format!(
        "{IKE}[[connection.children]]\nname = \"net\"\nlocal_ts = [\"10.1.0.0/24\"]\nremote_ts = [\"10.2.0.0/24\"]\n"
    );
    let e = Config::parse(&two, "c.toml").unwrap_err().to_string();
    assert!(e.contains("connection \"s2s\": child name \"net\" used twice"), "{e}");
    Config::parse(&two.replace("name = \"net\"\nlocal_ts = [\"10.1", "name = \"db\"\nlocal_ts = [\"10.1"), "d.toml")
        .unwrap();
}

#[test]
fn parses_with_defaults() {
    let c = Config::parse(GOOD, "t.toml").unwrap();
    assert_eq!(c.tunnel.mtu, 1400);
    assert_eq!(c.manual[0].out_spi, Spi(0x1001));
    assert_eq!(c.manual[0].in_spi, Spi(4098));
    assert_eq!(c.manual[0].encapsulation, Encapsulation::Udp);
    assert_eq!(c.manual[0].in_key, KeySource::File("k2".into()));
}

#[test]
fn copy_dscp_defaults_to_out_and_takes_strongswans_values() {
    let net = |v: &str| Config::parse(&format!("{GOOD}\n[network]\n{v}\n"), "t.toml").map(|c| c.network);
    let d = Config::parse(GOOD, "t.toml").unwrap().network;
    assert_eq!((d.copy_dscp, d.copy_ecn), (CopyDscp::Out, true));
    for (v, out, into) in [("out", true, false), ("in", false, true), ("yes", true, true), ("no", false, false)] {
        let c = crate::datapath::tos::Copy::of(&net(&format!("copy_dscp = \"{v}\"\ncopy_ecn = false")).unwrap());
        assert_eq!((c.dscp_out, c.dscp_in, c.ecn_out), (out, into, false), "{v}");
    }
    let e = net("copy_dscp = \"both\"").unwrap_err().to_string();
    assert!(e.contains("unknown variant `both`"), "{e}");
}

#[test]
fn a_child_may_set_its_own_copy_dscp_and_copy_ecn() {
    use crate::datapath::tos::Override;
    let net = "name = \"net\"";
    let child = |v: &str| Config::parse(&IKE.replace(net, &format!("{net}\n{v}")), "c.toml");
    assert_eq!(Config::parse(IKE, "c.toml").unwrap().connection[0].children[0].tos(), Override::default());
    let c = child("copy_dscp = \"in\"\ncopy_ecn = false").unwrap();
    assert_eq!(c.connection[0].children[0].tos(), Override { dscp: Some(CopyDscp::In), ecn: Some(false) });
    let c = child("copy_ecn = true").unwrap();
    assert_eq!(
        c.connection[0].children[0].tos(),
        Override { dscp: None, ecn: Some(true) },
        "the DSCP stays [network]'s"
    );
    let e = child("copy_dscp = \"inside\"").unwrap_err().to_string();
    assert!(e.contains("unknown variant `inside`"), "{e}");
}

#[test]
fn a_manual_tunnel_may_set_its_own_copy_dscp_and_copy_ecn() {
    use crate::datapath::tos::Override;
    let manual = |v: &str| Config::parse(&format!("{GOOD}{v}\n"), "t.toml").map(|c| c.manual[0].tos());
    assert_eq!(manual("").unwrap(), Override::default(), "[network]'s unless it says otherwise");
    let o = manual("copy_dscp = \"no\"\ncopy_ecn = false").unwrap();
    assert_eq!(o, Override { dscp: Some(CopyDscp::No), ecn: Some(false) });
    let e = manual("copy_ecn = \"no\"").unwrap_err().to_string();
    assert!(e.contains("line 13") && e.contains("expected a boolean"), "{e}");
}

#[test]
fn raw_esp_send_defaults_to_auto() {
    let net = |v: &str| Config::parse(&format!("{GOOD}\n[network]\n{v}\n"), "t.toml").map(|c| c.network);
    assert_eq!(Config::parse(GOOD, "t.toml").unwrap().network.raw_esp_send, RawEspSend::Auto);
    for (v, want) in [("auto", RawEspSend::Auto), ("ip", RawEspSend::Ip), ("link", RawEspSend::Link)] {
        assert_eq!(net(&format!("raw_esp_send = \"{v}\"")).unwrap().raw_esp_send, want);
    }
    let e = net("raw_esp_send = \"packet\"").unwrap_err().to_string();
    assert!(e.contains("unknown variant `packet`"), "{e}");
}

#[test]
fn a_replay_window_the_engine_cannot_keep_is_refused() {
    let c = Config::parse(&GOOD.replace("in_spi = 4098", "in_spi = 4098\nreplay_window = 65536"), "w.toml").unwrap();
    assert_eq!(c.manual[0].replay_window, MAX_REPLAY_WINDOW);
    assert_eq!(MAX_REPLAY_WINDOW, wasmsec_esp::replay::MAX_WINDOW, "the config's limit is the engine's");
    refused(
        GOOD,
        &[("in_spi = 4098", "in_spi = 4098\nreplay_window = 65537", "replay_window 65537 is more than 65536")],
    );
    // A connection's child names its own (strongSwan's `replay_window`).
    let net = "name = \"net\"";
    let c = Config::parse(&IKE.replace(net, &format!("{net}\nreplay_window = 0")), "w.toml").unwrap();
    assert_eq!(c.connection[0].children[0].replay_window, 0, "off, as the operator asked");
    let c = Config::parse(IKE, "w.toml").unwrap();
    assert_eq!(c.connection[0].children[0].replay_window, DEFAULT_REPLAY_WINDOW);
    let e = "child \"net\": replay_window 65537 is more than 65536";
    refused(IKE, &[(net, &format!("{net}\nreplay_window = 65537"), e)]);
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let e = Config::parse(&GOOD.replace("name = \"t\"", "name = \"t\"\nbogus = 1"), "gw.toml").unwrap_err();
    let s = e.to_string();
    assert!(s.starts_with("gw.toml: line "), "{s}");
    assert!(s.contains("bogus"), "{s}");
}

#[test]
fn inline_keys_are_refused_without_echo() {
    let e = Config::parse(&GOOD.replace("env:K1", "00112233445566778899"), "gw.toml").unwrap_err();
    assert!(e.to_string().contains("file:PATH"));
    assert!(!e.to_string().contains("00112233"));
}

#[test]
fn bad_values_are_explained() {
    refused(
        GOOD,
        &[
            ("0x1001", "0x10", "reserved"),
            ("198.18.2.0/24", "198.18.2.0/33", "bad prefix length"),
            ("in_spi = 4098", "in_spi = 4098\nalgorithm = \"des\"", "not supported"),
        ],
    );
}

#[test]
fn checks_across_values_name_the_line() {
    let twice = format!("{IKE}{}", IKE.replace("name = \"net\"", "name = \"net2\""));
    let e = Config::parse(&twice, "i.toml").unwrap_err().to_string();
    assert!(e.starts_with("i.toml: line 16: connection \"s2s\": name used twice"), "{e}");
    let e = Config::parse(&IKE.replace("remote_addrs = [\"198.18.0.1\"]", "remote_addrs = [\"%any\"]"), "i.toml")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("i.toml: line 3: "), "{e}");
}

#[test]
fn values_are_typed_once() {
    let c = Config::parse(GOOD, "t.toml").unwrap();
    assert_eq!(c.manual[0].local_ts, vec![Prefix::parse("198.18.2.0/24").unwrap()]);
    assert_eq!(c.manual[0].algorithm, crate::keys::EspAlgorithm::Aes256Gcm16);
    let c = Config::parse(IKE, "i.toml").unwrap();
    assert_eq!(c.connection[0].remote_addrs, vec!["198.18.0.1".parse::<std::net::IpAddr>().unwrap()]);
    assert_eq!(c.connection[0].remote_id.0, "gwa.interop.test");
    let e = Config::parse(&IKE.replace("remote_id = \"gwa.interop.test\"", "remote_id = \"C=CH, X=1\""), "i.toml");
    let e = e.unwrap_err().to_string();
    assert!(e.contains("line 7") && e.contains("not a DN"), "{e}");
}

const TENANTS: &str = r#"
[[tenant]]
name = "blue"
netns = "blue-ns"
source = "10.1.0.1"
policy = "policies/blue.wasm"
[[tenant]]
name = "red"
netns = "red-ns"
[[connection]]
name = "blue-s2s"
tenant = "blue"
local_id = "pop.example"
psk = "env:PSK"
[[connection.children]]
name = "net"
local_ts = ["10.1.0.0/24"]
remote_ts = ["10.0.0.0/24"]
[[connection]]
name = "red-s2s"
tenant = "red"
local_id = "pop.example"
psk = "env:PSK"
[[connection.children]]
name = "net"
local_ts = ["10.1.0.0/24"]
remote_ts = ["10.0.0.0/24"]
"#;

#[test]
fn tenants_parse_with_their_domains_and_validate() {
    let c = Config::parse(TENANTS, "t.toml").unwrap();
    assert_eq!(c.tenant[0].tun_name(), "wst-blue");
    assert_eq!(c.domain_of(&c.connection[0]), 1);
    assert_eq!(c.domain_of(&c.connection[1]), 2);
    let long = TENANTS
        .replace("name = \"red\"", "name = \"a-very-long-tenant-name\"")
        .replace("\"red\"", "\"a-very-long-tenant-name\"");
    assert_eq!(Config::parse(&long, "t.toml").unwrap().tenant[1].tun_name().len(), 15);
    refused(
        TENANTS,
        &[
            ("tenant = \"red\"", "tenant = \"green\"", "tenant \"green\" is not a configured [[tenant]]"),
            ("name = \"red\"", "name = \"Red\"", "must be 1-32 of a-z"),
            ("name = \"red\"", "name = \"blue\"", "name used twice"),
            ("netns = \"red-ns\"", "netns = \"red-ns\"\ntun = \"wst-blue\"", "already used"),
            ("netns = \"red-ns\"", "netns = \"red-ns\"\ntun = \"wsec0\"", "already used"),
            ("netns = \"red-ns\"", "netns = \"../x\"", "must be a name"),
            ("netns = \"red-ns\"", "netns = \"red-ns\"\nmtu = 100", "576-9000"),
            ("netns = \"red-ns\"", "netns = \"red-ns\"\nvrf = \"x\"", "unknown field"),
        ],
    );
    // A tenant's connection may wait for its traffic, as the daemon's may.
    let trap = TENANTS
        .replace("tenant = \"red\"", "tenant = \"red\"\nremote_addrs = [\"192.0.2.1\"]\nstart_action = \"trap\"");
    assert_eq!(Config::parse(&trap, "t.toml").unwrap().connection[1].start_action, StartAction::Trap);
}

#[test]
fn the_tunnel_source_is_one_address_or_one_of_each_family() {
    let src = |v: &str| {
        let text = GOOD.replace("name = \"wsec0\"", &format!("name = \"wsec0\"\nsource = {v}"));
        Config::parse(&text, "t.toml").map(|c| c.tunnel.source)
    };
    let ip = |a: &str| Some(a.parse().unwrap());
    assert_eq!(Config::parse(GOOD, "t.toml").unwrap().tunnel.source, Sources::default());
    assert_eq!(src("\"198.18.2.1\"").unwrap(), Sources { v4: ip("198.18.2.1"), v6: None });
    assert_eq!(src("\"fd00:2::1\"").unwrap(), Sources { v4: None, v6: ip("fd00:2::1") });
    let both = src("[\"fd00:2::1\", \"198.18.2.1\"]").unwrap();
    assert_eq!(both, Sources { v4: ip("198.18.2.1"), v6: ip("fd00:2::1") });
    assert_eq!(both.of_family(&"fd00:1::5".parse().unwrap()), ip("fd00:2::1"));
    let e = src("[\"198.18.2.1\", \"198.18.2.2\"]").unwrap_err().to_string();
    assert!(e.contains("198.18.2.1 and 198.18.2.2 are of one family") && e.contains("line"), "{e}");
    let e = src("\"lan\"").unwrap_err().to_string();
    assert!(e.contains("source \"lan\" is not an address"), "{e}");
}
