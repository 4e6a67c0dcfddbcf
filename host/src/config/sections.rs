//! The config file's sections: tunnel, network, runtime, control, IKE
//! settings, manual tunnels and IKEv2 connections with their CHILD SAs.
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::values::{self, Identity, KeySource, Prefix, Proposals, Sources, Spi};
use crate::keys::EspAlgorithm;

/// The local admin socket (`wasmsec ctl`) and the metrics listener.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Control {
    /// Unix socket path; none by default.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// Accept `wasmsec ctl fault ike` (make the IKE guest trap on its next
    /// call, to prove that it is restarted from its checkpoints). Tests only.
    #[serde(default)]
    pub fault_injection: bool,
    /// `/metrics`, `/healthz` and `/readyz` over HTTP on this address and
    /// port (`"127.0.0.1:9469"`, or `"0.0.0.0:9469"` in a pod); off by
    /// default. Unauthenticated: bind it where only the scraper reaches.
    #[serde(default)]
    pub metrics: Option<std::net::SocketAddr>,
    /// The admin API on TCP as well (`"127.0.0.1:9470"`); requests need
    /// `Authorization: Bearer` with `api_token`. Off by default.
    #[serde(default)]
    pub api: Option<std::net::SocketAddr>,
    /// The TCP admin API's token: `file:PATH` (owner-only) or `env:NAME`,
    /// at least 16 characters.
    #[serde(default)]
    pub api_token: Option<KeySource>,
    /// Reload the config when the file changes (checked every second),
    /// as `wasmsec reload` and SIGHUP do. Off by default.
    #[serde(default)]
    pub watch_config: bool,
}

/// The policy module that authorizes peers (see the README's policy guide).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// A component of the `policy` world (relative to the config file's
    /// directory). None: every authenticated peer is accepted.
    #[serde(default)]
    pub module: Option<PathBuf>,
    /// Reload it when the file changes (inotify on its directory; a
    /// Kubernetes ConfigMap update counts). `wasmsec reload` reloads it too.
    #[serde(default = "yes")]
    pub watch: bool,
}

fn yes() -> bool {
    true
}

impl Default for Policy {
    fn default() -> Self {
        Policy { module: None, watch: true }
    }
}

/// IKE daemon settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ike {
    /// Append every IKE SA's keys to this file as Wireshark
    /// `ikev2_decryption_table` lines. This discloses secrets: debugging only.
    #[serde(default)]
    pub keylog: Option<PathBuf>,
    /// Append every CHILD SA's keys (both directions) to this file as
    /// Wireshark `esp_sa` lines. This discloses secrets: debugging only.
    #[serde(default)]
    pub esp_keylog: Option<PathBuf>,
    /// Tests only: at exit, write every secret the IKE key vault created
    /// (PSKs, DH values, g^ir, SKEYSEED, SK_*, CHILD SA keying material),
    /// one hex line each, so a test can look for them where they must not be.
    #[serde(default)]
    pub secret_audit: Option<PathBuf>,
    /// Tests only: at exit, write every byte string the host handed the
    /// IKE guest through its imports, one hex line each.
    #[serde(default)]
    pub guest_transcript: Option<PathBuf>,
}

/// When a connection comes up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StartAction {
    /// Wait for the peer or `wasmsec ctl initiate`.
    #[default]
    None,
    /// Initiate when the daemon starts.
    Start,
    /// Initiate when traffic for the connection's selectors arrives.
    Trap,
}

/// An IKEv2 connection with pre-shared-key authentication.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connection {
    /// Its name, unique among connections.
    pub name: Spanned<String>,
    /// Our addresses (default: any).
    #[serde(default)]
    pub local_addrs: Vec<IpAddr>,
    /// The peer's addresses; empty or `%any` means any (responder only).
    #[serde(default, deserialize_with = "values::any_or_addrs")]
    pub remote_addrs: Vec<IpAddr>,
    /// Our identity, strongSwan syntax (`gw.example.com`, `user@example.com`,
    /// an address, `keyid:#hex`, `keyid:text`, `C=.., O=.., CN=..`).
    pub local_id: Identity,
    /// The identity we require of the peer (default `%any`).
    #[serde(default = "Identity::any")]
    pub remote_id: Identity,
    /// The pre-shared key: `file:PATH` or `env:NAME`; the text is the key
    /// (a `0x` prefix means hex).
    pub psk: KeySource,
    /// IKE proposals, strongSwan syntax.
    #[serde(default = "default_ike_proposals")]
    pub proposals: Proposals<false>,
    /// When to initiate (default: wait for the peer); any but `none` needs `remote_addrs`.
    #[serde(default)]
    pub start_action: StartAction,
    /// Always encapsulate ESP in UDP, NAT or not.
    #[serde(default)]
    pub encap: bool,
    /// Seconds between NAT keepalives when we are behind a NAT (0: off).
    #[serde(default = "default_keepalive")]
    pub keepalive: u32,
    /// Seconds without hearing from the peer before a liveness check (0: off).
    #[serde(default)]
    pub dpd_delay: u32,
    /// What to do when the peer is found dead.
    #[serde(default)]
    pub dpd_action: DpdAction,
    /// The ESP component that serves this tunnel (relative to the config
    /// file; default: the project's `esp.wasm`). Tunnels naming the same
    /// file share a guest group; a misbehaving guest affects only its group.
    #[serde(default)]
    pub esp_component: Option<PathBuf>,
    /// The `[[tenant]]` this connection belongs to: its CHILD SAs carry
    /// traffic of that tenant's routing domain, and that tenant's policy
    /// module authorizes its peers. None: the daemon's own namespace.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Seconds after which we rekey the IKE SA (0: only answer the peer's rekeys).
    #[serde(default = "default_ike_rekey_time")]
    pub rekey_time: u32,
    /// Seconds after which we reauthenticate: a new IKE SA from scratch, new
    /// CHILD SAs, then the old IKE SA is deleted (0: never).
    #[serde(default)]
    pub reauth_time: u32,
    /// Its CHILD SAs (`[[connection.children]]`), at least one.
    pub children: Vec<Child>,
}

/// A CHILD SA of a connection.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Child {
    /// Its name within the connection.
    pub name: String,
    /// Our subnets (CIDR) the CHILD SA carries.
    #[serde(deserialize_with = "values::prefixes")]
    pub local_ts: Vec<Prefix>,
    /// The peer's subnets (CIDR).
    #[serde(deserialize_with = "values::prefixes")]
    pub remote_ts: Vec<Prefix>,
    /// ESP proposals, strongSwan syntax.
    #[serde(default = "default_esp_proposals")]
    pub esp_proposals: Proposals<true>,
    /// Seconds after which we rekey the CHILD SA (0: only answer the peer's rekeys).
    #[serde(default = "default_child_rekey_time")]
    pub rekey_time: u32,
    /// Rekey after this many bytes / packets through either SA of the pair (0: no limit).
    #[serde(default)]
    pub rekey_bytes: u64,
    /// Rekey after this many packets (0: no limit).
    #[serde(default)]
    pub rekey_packets: u64,
    /// Hard lifetimes: delete (and create anew) a CHILD SA that no rekey
    /// replaced by then (0: 110 % of the matching rekey limit; by time at
    /// least the retransmission span, about 63 s, above `rekey_time`).
    #[serde(default)]
    pub life_time: u32,
    /// Hard lifetime in bytes (0: as `life_time` says).
    #[serde(default)]
    pub life_bytes: u64,
    /// Hard lifetime in packets (0: as `life_time` says).
    #[serde(default)]
    pub life_packets: u64,
    /// Anti-replay window of its inbound SAs in packets (RFC 4303 section
    /// 3.4.3; 0 turns replay protection off).
    #[serde(default = "default_window")]
    pub replay_window: u32,
    /// The DSCP between the inner and the outer header of this child's
    /// CHILD SAs, as `[network] copy_dscp`, whose value it takes where
    /// unset (strongSwan's per-CHILD_SA `copy_dscp`).
    #[serde(default)]
    pub copy_dscp: Option<CopyDscp>,
    /// The ECN field to the outer header, as `[network] copy_ecn`, whose
    /// value it takes where unset.
    #[serde(default)]
    pub copy_ecn: Option<bool>,
}

impl Child {
    /// What the child says of the outer header, over `[network]`.
    pub fn tos(&self) -> crate::datapath::tos::Override {
        crate::datapath::tos::Override { dscp: self.copy_dscp, ecn: self.copy_ecn }
    }
}

/// What dead peer detection does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DpdAction {
    /// Delete the SAs (routes stay, so traffic is dropped, not leaked).
    #[default]
    Clear,
    /// Delete the SAs and initiate again.
    Restart,
    /// Delete the SAs and initiate again when traffic for the connection
    /// arrives (as `start_action = "trap"`).
    Hold,
}

/// strongSwan's defaults: IKE SAs rekeyed every 4 hours, CHILD SAs hourly.
fn default_ike_rekey_time() -> u32 {
    4 * 3600
}

fn default_child_rekey_time() -> u32 {
    3600
}

fn default_keepalive() -> u32 {
    20
}

pub const DEFAULT_IKE_PROPOSALS: &str = "aes256gcm16-prfsha256-x25519-ecp256,aes128gcm16-prfsha256-x25519-ecp256";
pub const DEFAULT_ESP_PROPOSALS: &str = "aes256gcm16,aes128gcm16,chacha20poly1305";

fn default_ike_proposals() -> Proposals<false> {
    Proposals(DEFAULT_IKE_PROPOSALS.into())
}

fn default_esp_proposals() -> Proposals<true> {
    Proposals(DEFAULT_ESP_PROPOSALS.into())
}

/// The TUN device that carries inner (cleartext) traffic.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tunnel {
    /// Interface name, at most 15 bytes.
    #[serde(default = "default_tun_name")]
    pub name: String,
    /// MTU of the TUN device: the path MTU minus ESP-in-UDP overhead, at
    /// most 20 IP + 8 UDP + 8 ESP + 8 IV + 2-17 trailer (padding to the
    /// AES block) + 16 ICV = 77 bytes with AES-GCM, 85 with AES-CBC.
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// Source address for packets the gateway itself sends into the
    /// tunnel (set on the routes); usually the gateway's LAN address. One
    /// per family at most (`Sources`).
    #[serde(default)]
    pub source: Sources,
    /// Ask the kernel for TSO and checksum offload on the TUN devices
    /// (the daemon's and the tenants'): one read then brings a TCP
    /// super-packet of up to 64 KiB, which the data path cuts itself. Where
    /// the kernel refuses, the device works packet by packet (logged).
    #[serde(default = "default_true")]
    pub offload: bool,
}

impl Default for Tunnel {
    fn default() -> Self {
        Tunnel { name: default_tun_name(), mtu: default_mtu(), source: Sources::default(), offload: true }
    }
}

fn default_true() -> bool {
    true
}

fn default_tun_name() -> String {
    "wsec0".into()
}

fn default_mtu() -> u16 {
    1400
}

/// Sockets.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Local IPv4 address to bind (default: all).
    #[serde(default = "default_listen")]
    pub listen: Ipv4Addr,
    /// UDP port for ESP-in-UDP and IKE with the non-ESP marker (RFC 3948).
    #[serde(default = "default_nat_port")]
    pub nat_t_port: u16,
    /// UDP port for IKE (RFC 7296 section 2).
    #[serde(default = "default_ike_port")]
    pub ike_port: u16,
    /// Also receive raw ESP (IP protocol 50). Opened automatically when a
    /// tunnel uses `encapsulation = "none"`.
    #[serde(default)]
    pub raw_esp: bool,
    /// UDP GSO on sending and GRO on receiving ESP in UDP: a run of
    /// same-sized datagrams to one peer leaves in one system call, and
    /// one read brings up to 64 KiB of them. Where the kernel refuses,
    /// datagrams go one by one (logged).
    #[serde(default = "default_true")]
    pub udp_offload: bool,
    /// How raw ESP leaves: through an IP socket (`ip`), or through a
    /// packet socket to the next hop the kernel's route and neighbour
    /// tables name (`link`), around the IP layer's per-datagram work and
    /// its output hooks.
    #[serde(default)]
    pub raw_esp_send: RawEspSend,
    /// The DSCP between the inner and the outer header: copied out on
    /// encapsulation (`out`, RFC 4301 section 5.1.2.1's default), in on
    /// decapsulation (`in`), both (`yes`) or neither (`no`); see
    /// `datapath/tos.rs`.
    #[serde(default)]
    pub copy_dscp: CopyDscp,
    /// Copy the inner packet's ECN field to the outer header on
    /// encapsulation (RFC 6040 section 4.1, normal mode), or send Not-ECT
    /// (compatibility mode). Decapsulation follows RFC 6040 section 4.2
    /// either way.
    #[serde(default = "default_true")]
    pub copy_ecn: bool,
}

/// `[network] copy_dscp` (strongSwan's `copy_dscp` values).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyDscp {
    /// From the inner header to the outer one; inbound the inner DSCP
    /// stays.
    #[default]
    Out,
    /// From the outer header to the inner packet; the outer DSCP is 0.
    In,
    /// Both ways.
    Yes,
    /// Neither: the outer DSCP is 0, the inner one stays.
    No,
}

/// `[network] raw_esp_send`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawEspSend {
    /// The packet socket while nothing hooks the IP layer's output path
    /// (`output_hooks`), else the IP socket.
    #[default]
    Auto,
    /// A raw IP socket: routed, fragmented and filtered by the IP layer.
    Ip,
    /// A packet socket (`datapath/link_send.rs`); what it cannot send goes
    /// through the IP socket.
    Link,
}

impl Default for Network {
    fn default() -> Self {
        Network {
            listen: default_listen(),
            nat_t_port: default_nat_port(),
            ike_port: default_ike_port(),
            raw_esp: false,
            udp_offload: true,
            raw_esp_send: RawEspSend::Auto,
            copy_dscp: CopyDscp::Out,
            copy_ecn: true,
        }
    }
}

fn default_listen() -> Ipv4Addr {
    Ipv4Addr::UNSPECIFIED
}

fn default_nat_port() -> u16 {
    4500
}

fn default_ike_port() -> u16 {
    500
}

/// Where the wasm components are and how much a batch may hold.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    /// Directory holding `esp.wasm` (default: `$WASMSEC_COMPONENTS`, else
    /// `../components` next to the binary, else `/usr/lib/wasmsec/components`).
    #[serde(default)]
    pub components: Option<PathBuf>,
    /// Packets per call into the ESP component (1-256).
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Where state that must survive a restart is kept (0700): the IV
    /// reservations of manual keys (default `/var/lib/wasmsec`).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// The IKE component (relative to the config file; default `ike.wasm`
    /// in `components`). Tests run hostile ones.
    #[serde(default)]
    pub ike_component: Option<PathBuf>,
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime { components: None, batch: default_batch(), state_dir: default_state_dir(), ike_component: None }
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/wasmsec")
}

fn default_batch() -> usize {
    64
}

/// How ESP travels to the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encapsulation {
    /// ESP in UDP (RFC 3948) to the peer's port 4500.
    Udp,
    /// Raw ESP, IP protocol 50.
    None,
}

/// A manually keyed tunnel: one outbound and one inbound SA.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manual {
    /// Its name, unique among manual tunnels.
    pub name: Spanned<String>,
    /// The peer's IPv4 address.
    pub remote_address: Ipv4Addr,
    /// The peer's UDP port for ESP in UDP (default 4500).
    #[serde(default = "default_nat_port")]
    pub remote_port: u16,
    /// ESP in UDP (default) or raw ESP.
    #[serde(default = "default_encap")]
    pub encapsulation: Encapsulation,
    /// ESP transform: aes128gcm16, aes256gcm16, chacha20poly1305, or AES-CBC
    /// with HMAC-SHA2 (`aes128-sha256`, `aes256-sha384`, ...).
    #[serde(default = "default_alg")]
    pub algorithm: EspAlgorithm,
    /// Extended sequence numbers (RFC 4303 section 2.2.1); both ends must agree.
    #[serde(default)]
    pub esn: bool,
    /// Anti-replay window in packets (0 turns replay protection off).
    #[serde(default = "default_window")]
    pub replay_window: u32,
    /// The ESP component that serves this tunnel (relative to the config
    /// file; default: the project's `esp.wasm`). Tunnels naming the same
    /// file share a guest group; a misbehaving guest affects only its group.
    #[serde(default)]
    pub esp_component: Option<PathBuf>,
    /// Local and remote subnets (CIDR) the tunnel carries.
    #[serde(deserialize_with = "values::prefixes")]
    pub local_ts: Vec<Prefix>,
    /// The peer's subnets (CIDR).
    #[serde(deserialize_with = "values::prefixes")]
    pub remote_ts: Vec<Prefix>,
    /// SPI of the outbound SA (the peer's `in_spi`), unique among tunnels.
    pub out_spi: Spi,
    /// `file:PATH` or `env:NAME`, holding the key and salt in hex.
    pub out_key: KeySource,
    /// SPI of the inbound SA (the peer's `out_spi`), unique among tunnels.
    pub in_spi: Spi,
    /// The inbound SA's key, as `out_key`.
    pub in_key: KeySource,
    /// The tunnel's outer DSCP and ECN, as `[network] copy_dscp` and
    /// `copy_ecn` (whose values they take where unset) and a child's own.
    #[serde(default)]
    pub copy_dscp: Option<CopyDscp>,
    #[serde(default)]
    pub copy_ecn: Option<bool>,
}

impl Manual {
    /// What the tunnel says of the outer header, over `[network]`.
    pub fn tos(&self) -> crate::datapath::tos::Override {
        crate::datapath::tos::Override { dscp: self.copy_dscp, ecn: self.copy_ecn }
    }
}

fn default_encap() -> Encapsulation {
    Encapsulation::Udp
}

fn default_alg() -> EspAlgorithm {
    EspAlgorithm::Aes256Gcm16
}

fn default_window() -> u32 {
    super::DEFAULT_REPLAY_WINDOW
}
