//! `cargo xtask doctor`: proves that each tool a step uses works, rather than
//! that a package is installed. It links a wasm module, starts strongSwan
//! and asks it for its algorithms, has tshark dissect an ESP packet, makes a
//! network namespace and a TUN device in it. Every failure names the missing
//! piece and the Debian package that provides it (all of them are in
//! `xtask/debian-packages.txt`).
//!
//! `build`, `demo` and `test` run the checks their step needs first.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::build::{self, Route};
use crate::packages::Group;

/// The plugins our strongSwan peers load (tests/interop/lib.sh reads the
/// same file).
const STRONGSWAN_PLUGINS: &str = include_str!("../../tests/interop/strongswan-plugins");
const CHARON: &str = "/usr/lib/ipsec/charon";

/// One check's outcome.
struct Finding {
    what: String,
    /// `None`: it works. `Some(why)`: it does not.
    problem: Option<String>,
    /// The package that provides the piece (on failure).
    package: &'static str,
}

fn ok(what: impl Into<String>) -> Finding {
    Finding { what: what.into(), problem: None, package: "" }
}

fn fail(what: impl Into<String>, why: impl Into<String>, package: &'static str) -> Finding {
    Finding { what: what.into(), problem: Some(why.into()), package }
}

/// Run `program args`; Ok(stdout) if it ran and exited 0, else why not.
fn output(program: &str, args: &[&str]) -> Result<String, String> {
    match Command::new(program).args(args).stdin(Stdio::null()).output() {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            o.status,
            String::from_utf8_lossy(&o.stderr).lines().take(3).collect::<Vec<_>>().join(" / ")
        )),
        Err(e) => Err(format!("cannot run {program}: {e}")),
    }
}

fn tool(what: &str, program: &str, args: &[&str], package: &'static str) -> Finding {
    match output(program, args) {
        Ok(_) => ok(what),
        Err(e) => fail(what, e, package),
    }
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wasmsec-doctor-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    let _ = std::fs::create_dir_all(&d);
    d
}

// ---- build -------------------------------------------------------------------

/// A wasm32 module with no standard library at all: it needs only the
/// compiler and the wasm linker, so it shows whether the linker links.
const WASM_PROBE: &str = "#![feature(no_core, lang_items)]\n#![allow(internal_features)]\n#![no_core]\n\
    #[lang = \"pointee_sized\"] pub trait PointeeSized {}\n\
    #[lang = \"meta_sized\"] pub trait MetaSized: PointeeSized {}\n\
    #[lang = \"sized\"] pub trait Sized: MetaSized {}\n\
    #[unsafe(no_mangle)] pub extern \"C\" fn wasmsec_doctor() {}\n";

fn wasm_linker() -> Finding {
    let what = "the wasm linker links a wasm32 module (rust-lld)";
    let dir = scratch("wasm");
    let src = dir.join("probe.rs");
    let out = dir.join("probe.wasm");
    if let Err(e) = std::fs::write(&src, WASM_PROBE) {
        return fail(what, format!("cannot write {}: {e}", src.display()), "rust-web-llvm");
    }
    let r = Command::new("/usr/bin/rustc")
        .env("RUSTC_BOOTSTRAP", "1")
        .args(["--edition", "2024", "--crate-type", "cdylib", "--target", build::WASM_TARGET, "-C", "panic=abort"])
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    match r {
        Ok(o) if o.status.success() => ok(what),
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            let line = err.lines().find(|l| l.contains("error")).unwrap_or("").trim().to_string();
            fail(what, format!("/usr/bin/rustc could not link: {line}"), "rust-web-llvm")
        }
        Err(e) => fail(what, format!("cannot run /usr/bin/rustc: {e}"), "rustc-web"),
    }
}

fn build_checks() -> Vec<Finding> {
    match build::route() {
        Route::Rustup => vec![ok("guests build with rustup's wasm32-unknown-unknown target")],
        Route::DebianBuildStd => {
            let std_src = Path::new("/usr/lib/rustlib/src/rust/library/std/src/lib.rs");
            vec![
                tool("Debian's rustc (builds std for wasm32)", "/usr/bin/rustc", &["--version"], "rustc-web"),
                tool("Debian's cargo", "/usr/bin/cargo", &["--version"], "cargo-web"),
                if std_src.exists() {
                    ok("the standard library's sources for -Zbuild-std")
                } else {
                    fail("the standard library's sources", format!("{} is missing", std_src.display()), "rust-web-src")
                },
                wasm_linker(),
            ]
        }
    }
}

// ---- run ---------------------------------------------------------------------

/// A network namespace of our own, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Result<Netns, String> {
        let name = format!("wsdoctor-{tag}-{}", std::process::id());
        output("ip", &["netns", "add", &name]).map(|_| Netns(name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).stderr(Stdio::null()).status();
    }
}

fn namespaces_and_tun() -> Vec<Finding> {
    let ns = match Netns::new("tun") {
        Ok(ns) => ns,
        Err(e) => return vec![fail("network namespaces (ip netns add)", e, "iproute2")],
    };
    let tun = match output("ip", &["-n", &ns.0, "tuntap", "add", "dev", "wsdoc0", "mode", "tun"]) {
        Ok(_) => ok("a TUN device in a network namespace"),
        Err(e) => fail("a TUN device (/dev/net/tun, the kernel's tun driver)", e, "iproute2"),
    };
    vec![ok("network namespaces"), tun]
}

fn run_checks() -> Vec<Finding> {
    let mut v = namespaces_and_tun();
    v.push(tool("tcpdump", "tcpdump", &["--version"], "tcpdump"));
    v.push(tool("ping", "ping", &["-V"], "iputils-ping"));
    v.push(tool("sysctl", "sysctl", &["--version"], "procps"));
    v
}

// ---- test --------------------------------------------------------------------

/// One UDP-encapsulated ESP packet (RFC 3948) in a raw-IPv4 pcap file:
/// SPI 0xc0ffee01, sequence number 1.
fn esp_pcap() -> Vec<u8> {
    let esp: Vec<u8> = [0xc0, 0xff, 0xee, 0x01, 0, 0, 0, 1].into_iter().chain([0x5a; 32]).collect();
    let udp_len = 8 + esp.len();
    let total = 20 + udp_len;
    let mut ip = vec![0x45, 0, (total >> 8) as u8, total as u8, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip.extend([198, 18, 0, 1, 198, 18, 0, 2]);
    let sum = ip.chunks(2).fold(0u32, |s, w| s + u32::from(u16::from_be_bytes([w[0], w[1]])));
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip.extend([0x11, 0x94, 0x11, 0x94, (udp_len >> 8) as u8, udp_len as u8, 0, 0]);
    ip.extend(esp);
    let mut f = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    f.extend(65535u32.to_le_bytes());
    f.extend(101u32.to_le_bytes()); // LINKTYPE_RAW
    f.extend([0; 8]);
    f.extend((ip.len() as u32).to_le_bytes());
    f.extend((ip.len() as u32).to_le_bytes());
    f.extend(ip);
    f
}

fn tshark_esp() -> Finding {
    let what = "tshark dissects ESP-in-UDP";
    let dir = scratch("tshark");
    let file = dir.join("esp.pcap");
    let r = std::fs::write(&file, esp_pcap()).map_err(|e| e.to_string()).and_then(|_| {
        output("tshark", &["-n", "-r", &file.to_string_lossy(), "-T", "fields", "-e", "esp.spi", "-e", "esp.sequence"])
    });
    let _ = std::fs::remove_dir_all(&dir);
    match r {
        Ok(s) if s.contains("0xc0ffee01") && s.trim_end().ends_with('1') => ok(what),
        Ok(s) => fail(what, format!("tshark read the packet but not as ESP: {:?}", s.trim()), "tshark"),
        Err(e) => fail(what, e, "tshark"),
    }
}

/// Start charon in a namespace of its own with the tests' plugin list and
/// ask it (through vici) which algorithms and plugins it has.
fn strongswan() -> Vec<Finding> {
    if !Path::new(CHARON).exists() {
        return vec![fail("strongSwan's charon", format!("{CHARON} is missing"), "strongswan-charon")];
    }
    if let Err(e) = output("swanctl", &["--help"]) {
        return vec![fail("swanctl", e, "strongswan-swanctl")];
    }
    let dir = scratch("charon");
    let vici = dir.join("charon.vici");
    let run = dir.join("run");
    let _ = std::fs::create_dir_all(&run);
    let conf = dir.join("strongswan.conf");
    let text = format!(
        "charon {{\n  load_modular = no\n  load = {}\n  filelog {{ main {{ path = {}\n default = 1 }} }}\n  \
         plugins {{ vici {{ socket = unix://{} }} }}\n}}\n",
        STRONGSWAN_PLUGINS.split_whitespace().collect::<Vec<_>>().join(" "),
        dir.join("charon.log").display(),
        vici.display()
    );
    let findings = (|| -> Vec<Finding> {
        if let Err(e) = std::fs::write(&conf, text) {
            return vec![fail("strongSwan", format!("cannot write {}: {e}", conf.display()), "strongswan-charon")];
        }
        let ns = match Netns::new("charon") {
            Ok(ns) => ns,
            Err(e) => return vec![fail("network namespaces (ip netns add)", e, "iproute2")],
        };
        let mut charon = match Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.0,
                "sh",
                "-c",
                "mount --bind \"$1\" /run && exec env STRONGSWAN_CONF=\"$2\" \"$3\"",
            ])
            .arg("sh")
            .arg(&run)
            .arg(&conf)
            .arg(CHARON)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => return vec![fail("strongSwan's charon starts", e.to_string(), "strongswan-charon")],
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !vici.exists() && Instant::now() < deadline && charon.try_wait().ok().flatten().is_none() {
            std::thread::sleep(Duration::from_millis(50));
        }
        let uri = format!("unix://{}", vici.display());
        let algs = output("swanctl", &["--list-algs", "--uri", &uri]);
        let stats = output("swanctl", &["--stats", "--uri", &uri]);
        let _ = charon.kill();
        let _ = charon.wait();
        let (algs, stats) = match (algs, stats) {
            (Ok(a), Ok(s)) => (a, s),
            (Err(e), _) | (_, Err(e)) => {
                let log = std::fs::read_to_string(dir.join("charon.log")).unwrap_or_default();
                let last = log.lines().rev().take(3).collect::<Vec<_>>().join(" / ");
                return vec![fail(
                    "strongSwan's charon starts and answers on vici",
                    format!("{e}; charon: {last}"),
                    "strongswan-charon",
                )];
            }
        };
        let has = |alg: &str| algs.lines().any(|l| l.trim().starts_with(&format!("{alg}[")));
        let plugins = stats.lines().find(|l| l.starts_with("loaded plugins:")).unwrap_or("").to_string();
        let mut v = vec![ok("strongSwan's charon starts and answers on vici")];
        for (alg, what, package) in [
            ("AES_GCM_16", "strongSwan does AES-GCM (its openssl or gcm plugin)", "libstrongswan-standard-plugins"),
            (
                "CHACHA20_POLY1305",
                "strongSwan does ChaCha20-Poly1305 (its chapoly plugin)",
                "libstrongswan-extra-plugins",
            ),
            ("CURVE_25519", "strongSwan does X25519 (its curve25519 plugin)", "libstrongswan-extra-plugins"),
        ] {
            v.push(if has(alg) { ok(what) } else { fail(what, format!("swanctl --list-algs has no {alg}"), package) });
        }
        let libipsec = "strongSwan's user-space ESP (kernel-libipsec plugin)";
        v.push(if plugins.split_whitespace().any(|p| p == "kernel-libipsec") {
            ok(libipsec)
        } else {
            fail(libipsec, format!("not among the loaded plugins ({})", plugins.trim()), "libcharon-extra-plugins")
        });
        v
    })();
    let _ = std::fs::remove_dir_all(&dir);
    findings
}

fn test_checks() -> Vec<Finding> {
    let mut v = vec![
        tool("python3", "python3", &["--version"], "python3"),
        tool(
            "python3 venv (componentize-py is installed into one)",
            "python3",
            &["-c", "import venv, ensurepip"],
            "python3-venv",
        ),
        tool("nft", "nft", &["--version"], "nftables"),
        tool("conntrack", "conntrack", &["--version"], "conntrack"),
        tool("iperf3", "iperf3", &["--version"], "iperf3"),
        tool("promtool (checks /metrics)", "promtool", &["--version"], "prometheus"),
        tool("prometheus (scrapes wasmsec in a test)", "prometheus", &["--version"], "prometheus"),
        tshark_esp(),
        tool("skopeo (reads the OCI image)", "skopeo", &["--version"], "skopeo"),
        tool("umoci (unpacks the OCI image)", "umoci", &["--version"], "umoci"),
        tool("strip (the image's binary)", "strip", &["--version"], "binutils"),
        tool("go (builds the test kube-apiserver)", "go", &["version"], "golang-go"),
        tool("etcd (the test kube-apiserver's store)", "etcd", &["--version"], "etcd-server"),
        tool("openssl", "openssl", &["version"], "openssl"),
    ];
    v.extend(strongswan());
    v
}

/// Run the checks a step up to `upto` needs and print them; false if any
/// failed.
pub fn run(upto: Group) -> bool {
    let mut findings = build_checks();
    if upto >= Group::Run {
        findings.extend(run_checks());
    }
    if upto >= Group::Test {
        findings.extend(test_checks());
    }
    let mut good = true;
    for f in &findings {
        match &f.problem {
            None => eprintln!("xtask: doctor: ok    {}", f.what),
            Some(why) => {
                good = false;
                eprintln!(
                    "xtask: doctor: FAIL  {}: {why}\n                     provided by the Debian package {}",
                    f.what, f.package
                );
            }
        }
    }
    if !good {
        let missing: Vec<&str> = findings.iter().filter(|f| f.problem.is_some()).map(|f| f.package).collect();
        eprintln!(
            "xtask: doctor: missing pieces; install them with: apt-get install -y --no-install-recommends {}",
            missing.join(" ")
        );
    }
    good
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_package_a_check_names_is_on_the_list() {
        let listed: Vec<&str> = crate::packages::all().into_iter().map(|(_, p)| p).collect();
        let src = include_str!("doctor.rs");
        for quoted in src.split('"').skip(1).step_by(2) {
            let named = quoted.starts_with("lib") && quoted.ends_with("plugins")
                || [
                    "rust-web-llvm",
                    "rustc-web",
                    "cargo-web",
                    "rust-web-src",
                    "strongswan-charon",
                    "strongswan-swanctl",
                ]
                .contains(&quoted);
            if named {
                assert!(listed.contains(&quoted), "{quoted} is named by a check but not in debian-packages.txt");
            }
        }
    }

    #[test]
    fn the_probe_pcap_is_one_udp_encapsulated_esp_packet() {
        let p = esp_pcap();
        assert_eq!(&p[..4], &[0xd4, 0xc3, 0xb2, 0xa1]);
        let ip = &p[40..];
        assert_eq!(ip[9], 17);
        assert_eq!(&ip[20..22], &4500u16.to_be_bytes());
        assert_eq!(&ip[28..32], &[0xc0, 0xff, 0xee, 0x01]);
        assert_eq!(usize::from(u16::from_be_bytes([ip[2], ip[3]])), ip.len());
    }
}
