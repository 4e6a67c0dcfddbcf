//! `wasmsec`: the IPsec gateway daemon and its command line (clap). The
//! operator verbs follow strongSwan's swanctl: `list-sas`, `list-conns`,
//! `initiate`, `terminate`, `rekey`, `reload`, `stats`, `check-config`.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use wasmsec::cli;
use wasmsec::ops::{Command as Verb, ConnectionPage, FaultPoint, Only, Page};
use wasmsec::{config, daemon, demo, keys::EspAlgorithm};

#[derive(Parser)]
#[command(name = "wasmsec", version, about = "IPsec (IKEv2 + ESP) gateway with its protocol engines in WebAssembly")]
struct Cli {
    /// Log lines as text for people, or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

/// Which running daemon a verb talks to.
#[derive(Args)]
struct Daemon {
    /// The daemon's admin socket ([control] socket).
    #[arg(short, long, env = "WASMSEC_SOCKET")]
    socket: Option<PathBuf>,
    /// Read the admin socket's path from this config file.
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// The TCP admin API ([control] api) instead of the socket.
    #[arg(long)]
    api: Option<std::net::SocketAddr>,
    /// File holding the TCP admin API's bearer token.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// SAs per request of `list-sas` and `stats`, connections per request
    /// of `list-conns`: the daemon answers a page at a time (a PoP holds
    /// 100,000 SAs and thousands of connections), and the CLI asks for
    /// every page.
    #[arg(long, value_name = "N", default_value_t = wasmsec::ops::page::DEFAULT_LIMIT as u32,
          value_parser = clap::value_parser!(u32).range(1..=wasmsec::ops::page::MAX_LIMIT as i64))]
    page_size: u32,
}

impl Daemon {
    /// The first page of the SAs, of the size asked for.
    fn page(&self) -> Page {
        Page { after: None, limit: self.page_size as usize, only: None }
    }
}

/// Which connections `list-conns`, and whose SAs `list-sas` and `stats`,
/// show (all without either).
#[derive(Args)]
struct Filter {
    /// Only this connection (swanctl's `--list-sas --ike`).
    #[arg(long, value_name = "NAME", visible_alias = "connection", conflicts_with = "tenant")]
    ike: Option<String>,
    /// Only this tenant's connections.
    #[arg(long, value_name = "NAME")]
    tenant: Option<String>,
}

impl Filter {
    fn only(&self) -> Option<Only> {
        match (&self.ike, &self.tenant) {
            (Some(c), _) => Some(Only::Connection(c.clone())),
            (None, Some(t)) => Some(Only::Tenant(t.clone())),
            (None, None) => None,
        }
    }

    /// The first page `d` asks for, of these SAs.
    fn page(&self, d: &Daemon) -> Page {
        Page { only: self.only(), ..d.page() }
    }

    /// The first page `d` asks for, of these connections.
    fn connections(&self, d: &Daemon) -> ConnectionPage {
        ConnectionPage { after: None, limit: d.page_size as usize, only: self.only() }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway (root, or CAP_NET_ADMIN and CAP_NET_RAW).
    Run {
        #[arg(short, long)]
        config: PathBuf,
        /// Write the counters here as JSON every 250 ms and at exit.
        #[arg(long)]
        stats_file: Option<PathBuf>,
    },
    /// Validate a config file and read every secret it names, then exit.
    #[command(alias = "check")]
    CheckConfig {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Two gateways in network namespaces negotiate a tunnel with IKEv2 and
    /// ping through it (root).
    #[command(long_about = demo::ABOUT)]
    Demo(DemoArgs),
    /// The loaded connections.
    ListConns {
        #[command(flatten)]
        daemon: Daemon,
        #[command(flatten)]
        only: Filter,
    },
    /// The IKE and CHILD SAs.
    ListSas {
        #[command(flatten)]
        daemon: Daemon,
        #[command(flatten)]
        only: Filter,
    },
    /// Every counter, with the SAs.
    Stats {
        #[command(flatten)]
        daemon: Daemon,
        #[command(flatten)]
        only: Filter,
    },
    /// Recent refused or failed negotiations, with their reasons.
    ListFailures(Daemon),
    /// Start a connection as initiator.
    Initiate {
        name: String,
        #[command(flatten)]
        daemon: Daemon,
    },
    /// Delete a connection's IKE SAs (and their CHILD SAs).
    Terminate {
        name: String,
        #[command(flatten)]
        daemon: Daemon,
    },
    /// Rekey a connection's CHILD SAs now.
    Rekey {
        name: String,
        #[command(flatten)]
        daemon: Daemon,
    },
    /// Reload the config file.
    Reload(Daemon),
    /// The old `ctl` verbs: status | initiate NAME | terminate NAME | fault ike.
    #[command(hide = true)]
    Ctl {
        #[command(flatten)]
        daemon: Daemon,
        words: Vec<String>,
    },
}

#[derive(Args)]
struct DemoArgs {
    /// ESP transform: aes128gcm16, aes256gcm16, chacha20poly1305,
    /// aes128-sha256, aes256-sha256, aes128-sha384, ...
    #[arg(long, value_name = "ALG", default_value = "aes256gcm16")]
    algorithm: String,
    /// ESP as IP protocol 50 instead of UDP 4500.
    #[arg(long)]
    raw_esp: bool,
    /// Static SAs with generated keys instead of IKEv2.
    #[arg(long)]
    manual: bool,
    /// Pings each way.
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pings: u32,
    /// Configs, keys, logs, counters and wan.pcap go here.
    #[arg(long, value_name = "DIR", default_value = "/tmp/wasmsec-demo")]
    dir: PathBuf,
    /// Leave the namespaces and daemons running.
    #[arg(long)]
    keep: bool,
    /// Tear down what --keep left.
    #[arg(long)]
    down: bool,
}

/// `WASMSEC_LOG`: a level (`info`) or per-subsystem levels
/// (`info,wasmsec::control=debug,wasmsec::datapath=warn`).
fn init_logging(format: LogFormat) {
    use tracing_subscriber::prelude::*;
    let spec = std::env::var("WASMSEC_LOG").unwrap_or_default();
    let filter: tracing_subscriber::filter::Targets = match spec.parse() {
        Ok(f) if !spec.trim().is_empty() => f,
        Ok(_) => tracing_subscriber::filter::Targets::new().with_default(tracing::Level::INFO),
        Err(e) => {
            eprintln!("wasmsec: WASMSEC_LOG={spec:?} is not a filter ({e}); logging at info");
            tracing_subscriber::filter::Targets::new().with_default(tracing::Level::INFO)
        }
    };
    let fmt = tracing_subscriber::fmt::layer().with_writer(wasmsec::logwriter::LogWriter).with_ansi(false);
    match format {
        LogFormat::Human => tracing_subscriber::registry().with(fmt.with_filter(filter)).init(),
        LogFormat::Json => tracing_subscriber::registry().with(fmt.json().with_filter(filter)).init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match real_main(cli.command) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("wasmsec: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn verb(d: &Daemon, v: Verb) -> anyhow::Result<bool> {
    wasmsec::sys::default_sigpipe();
    let target = cli::target(d.socket.clone(), d.config.as_deref(), d.api, d.token_file.as_deref())?;
    cli::run(&target, &v, d.json)
}

fn real_main(cmd: Cmd) -> anyhow::Result<bool> {
    match cmd {
        Cmd::Run { config, stats_file } => {
            daemon::run(&config, stats_file.as_deref())?;
            Ok(true)
        }
        Cmd::CheckConfig { config } => {
            let c = config::Config::load(&config)?;
            let base = config.parent().unwrap_or(std::path::Path::new("."));
            daemon::check_secrets(&c, base)?;
            let policy = match daemon::check_policy(&c, base)? {
                Some((1, cases)) => format!(", a policy module that passed its self-test and {cases} case(s)"),
                Some((n, cases)) => format!(", {n} policy modules that passed their self-tests and {cases} case(s)"),
                None => String::new(),
            };
            println!(
                "{}: OK ({} IKE connection(s), {} manual tunnel(s){policy})",
                config.display(),
                c.connection.len(),
                c.manual.len()
            );
            Ok(true)
        }
        Cmd::Demo(a) => {
            if a.down {
                demo::down()?;
                return Ok(true);
            }
            let Some(algorithm) = EspAlgorithm::from_name(&a.algorithm) else {
                anyhow::bail!("unknown algorithm {:?} (see wasmsec demo --help)", a.algorithm);
            };
            let keying = if a.manual { demo::Keying::Manual } else { demo::Keying::Ike };
            let o = demo::Options { keying, algorithm, raw_esp: a.raw_esp, pings: a.pings, dir: a.dir, keep: a.keep };
            demo::run(&o)
        }
        Cmd::ListConns { daemon, only } => verb(&daemon, Verb::Connections(only.connections(&daemon))),
        Cmd::ListSas { daemon, only } => verb(&daemon, Verb::Sas(only.page(&daemon))),
        Cmd::Stats { daemon, only } => verb(&daemon, Verb::Status(only.page(&daemon))),
        Cmd::ListFailures(d) => verb(&d, Verb::Failures),
        Cmd::Initiate { name, daemon } => verb(&daemon, Verb::Initiate(name)),
        Cmd::Terminate { name, daemon } => verb(&daemon, Verb::Terminate(name)),
        Cmd::Rekey { name, daemon } => verb(&daemon, Verb::Rekey(name)),
        Cmd::Reload(d) => verb(&d, Verb::Reload),
        Cmd::Ctl { mut daemon, words } => {
            let w: Vec<&str> = words.iter().map(String::as_str).collect();
            let v = match w.as_slice() {
                ["status"] => {
                    // `ctl status` always printed one line of JSON.
                    daemon.json = true;
                    Verb::Status(daemon.page())
                }
                ["initiate", n] => Verb::Initiate(n.to_string()),
                ["terminate", n] => Verb::Terminate(n.to_string()),
                ["fault", "ike"] => Verb::FaultIke(1),
                ["fault", "ike", "output"] => Verb::FaultIkeAt(FaultPoint::Output),
                ["fault", "ike", "call", n] => Verb::FaultIkeAt(FaultPoint::Call(
                    n.parse().map_err(|_| anyhow::anyhow!("fault ike call N: a number, not {n:?}"))?,
                )),
                ["fault", "ike", n] => {
                    Verb::FaultIke(n.parse().map_err(|_| anyhow::anyhow!("fault ike CALLS: a number, not {n:?}"))?)
                }
                _ => anyhow::bail!(
                    "ctl verbs: status | initiate NAME | terminate NAME | fault ike [CALLS|output|call N]"
                ),
            };
            verb(&daemon, v)
        }
    }
}
