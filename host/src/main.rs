//! `wasmsec`: the IPsec gateway daemon and its command line.
use std::path::PathBuf;
use std::process::ExitCode;

use wasmsec::{config, daemon, demo, keys::EspAlgorithm};

const USAGE: &str = "\
usage:
  wasmsec run --config FILE [--stats-file FILE]   run the gateway (root)
  wasmsec check --config FILE                     validate a config file and exit
  wasmsec demo [--algorithm ALG] [--raw-esp] [--manual] [--pings N] [--dir DIR] [--keep]
                                                  two gateways in namespaces negotiate a tunnel
                                                  with IKEv2, ping through it (root; --help)
  wasmsec demo --down                             tear down a demo left by --keep
  wasmsec ctl --socket PATH initiate NAME | terminate NAME | status
                                                  talk to a running daemon's control socket
  wasmsec version

environment:
  WASMSEC_LOG          log level: error, warn, info (default), debug, trace
  WASMSEC_COMPONENTS   directory holding esp.wasm (default: ../components beside the binary)";

fn init_logging() {
    let level = match std::env::var("WASMSEC_LOG").unwrap_or_default().to_ascii_lowercase().as_str() {
        "error" => tracing::Level::ERROR,
        "warn" => tracing::Level::WARN,
        "debug" => tracing::Level::DEBUG,
        "trace" => tracing::Level::TRACE,
        _ => tracing::Level::INFO,
    };
    tracing_subscriber::fmt().with_max_level(level).with_writer(std::io::stderr).with_ansi(false).init();
}

fn value(args: &mut impl Iterator<Item = String>, flag: &str) -> Result<String, String> {
    args.next().ok_or_else(|| format!("{flag} needs a value"))
}

/// Send one command to a daemon's control socket and print the answer.
fn ctl(socket: &std::path::Path, command: &str) -> anyhow::Result<bool> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).map_err(|e| {
        anyhow::anyhow!("cannot connect to {}: {e} (is the daemon running with control.socket set?)", socket.display())
    })?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    s.write_all(format!("{command}\n").as_bytes())?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    print!("{reply}");
    Ok(!reply.starts_with("error"))
}

fn main() -> ExitCode {
    init_logging();
    match real_main() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("wasmsec: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> anyhow::Result<bool> {
    let mut args = std::env::args().skip(1);
    let cmd = args.next().unwrap_or_default();
    let usage = |msg: String| -> anyhow::Result<bool> {
        eprintln!("wasmsec: {msg}\n{USAGE}");
        Ok(false)
    };
    match cmd.as_str() {
        "run" | "check" => {
            let (mut config, mut stats) = (None, None);
            while let Some(a) = args.next() {
                match a.as_str() {
                    "--config" | "-c" => {
                        config = Some(PathBuf::from(value(&mut args, &a).map_err(anyhow::Error::msg)?))
                    }
                    "--stats-file" => stats = Some(PathBuf::from(value(&mut args, &a).map_err(anyhow::Error::msg)?)),
                    other => return usage(format!("unknown option {other}")),
                }
            }
            let Some(config) = config else {
                return usage("--config is required".into());
            };
            if cmd == "check" {
                let c = config::Config::load(&config)?;
                daemon::check_secrets(&c, config.parent().unwrap_or(std::path::Path::new(".")))?;
                println!(
                    "{}: OK ({} IKE connection(s), {} manual tunnel(s))",
                    config.display(),
                    c.connection.len(),
                    c.manual.len()
                );
                return Ok(true);
            }
            daemon::run(&config, stats.as_deref())?;
            Ok(true)
        }
        "demo" => {
            let mut o = demo::Options::default();
            while let Some(a) = args.next() {
                match a.as_str() {
                    "--down" => {
                        demo::down()?;
                        return Ok(true);
                    }
                    "--help" | "-h" => {
                        println!("{}", demo::HELP);
                        return Ok(true);
                    }
                    "--raw-esp" => o.raw_esp = true,
                    "--manual" => o.keying = demo::Keying::Manual,
                    "--keep" => o.keep = true,
                    "--algorithm" => {
                        let v = value(&mut args, &a).map_err(anyhow::Error::msg)?;
                        match EspAlgorithm::from_name(&v) {
                            Some(alg) => o.algorithm = alg,
                            None => return usage(format!("unknown algorithm {v:?}")),
                        }
                    }
                    "--pings" => {
                        let v = value(&mut args, &a).map_err(anyhow::Error::msg)?;
                        match v.parse() {
                            Ok(n) if n > 0 => o.pings = n,
                            _ => return usage(format!("--pings {v:?} is not a positive number")),
                        }
                    }
                    "--dir" => o.dir = PathBuf::from(value(&mut args, &a).map_err(anyhow::Error::msg)?),
                    other => {
                        eprintln!("wasmsec demo: unknown option {other}\n{}", demo::HELP);
                        return Ok(false);
                    }
                }
            }
            demo::run(&o)
        }
        "ctl" => {
            let (mut socket, mut words) = (None, Vec::new());
            while let Some(a) = args.next() {
                match a.as_str() {
                    "--socket" | "-s" => {
                        socket = Some(PathBuf::from(value(&mut args, &a).map_err(anyhow::Error::msg)?))
                    }
                    _ => words.push(a),
                }
            }
            let Some(socket) = socket else {
                return usage("ctl needs --socket PATH (the daemon's control.socket)".into());
            };
            if words.is_empty() {
                return usage("ctl needs a command: initiate NAME, terminate NAME or status".into());
            }
            ctl(&socket, &words.join(" "))
        }
        "version" | "--version" => {
            println!("wasmsec {}", env!("CARGO_PKG_VERSION"));
            Ok(true)
        }
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(true)
        }
        other => usage(format!("unknown command {other:?}")),
    }
}
