//! What a run measured, and the one line that says it.
use std::time::{Duration, Instant};

use crate::args::Args;

pub struct Report {
    began: Instant,
    wall: Duration,
    latencies: Vec<Duration>,
    pub done: u64,
    pub failed: u64,
    /// IKE SAs the generator still held at the end (DELETEs unanswered).
    pub left: usize,
    send_errors: u64,
    warnings: u64,
    responder_pid: Option<u32>,
    responder_ticks: Option<u64>,
    own_cpu: Duration,
}

impl Report {
    pub fn start(responder_pid: Option<u32>) -> Report {
        Report {
            began: Instant::now(),
            wall: Duration::ZERO,
            latencies: Vec::new(),
            done: 0,
            failed: 0,
            left: 0,
            send_errors: 0,
            warnings: 0,
            responder_pid,
            responder_ticks: responder_pid.and_then(cpu_ticks),
            own_cpu: own_cpu(),
        }
    }

    pub fn done(&mut self, latency: Duration) {
        self.done += 1;
        self.latencies.push(latency);
    }

    pub fn warn(&mut self, connection: &str, message: &str) {
        self.warnings += 1;
        if self.warnings <= 5 {
            eprintln!("wasmsec-ikeload: {connection}: {message}");
        }
    }

    pub fn send_error(&mut self, e: &std::io::Error) {
        self.send_errors += 1;
        if self.send_errors <= 5 {
            eprintln!("wasmsec-ikeload: send: {e}");
        }
    }

    /// Close the measurement: wall time, and CPU time since `start`.
    pub fn finish(&mut self) {
        self.wall = self.began.elapsed();
        self.responder_ticks = match (self.responder_ticks, self.responder_pid.and_then(cpu_ticks)) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        self.own_cpu = own_cpu().saturating_sub(self.own_cpu);
        self.latencies.sort_unstable();
    }

    fn percentile(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        ms(self.latencies[i])
    }

    pub fn line(&self, args: &Args) -> String {
        let secs = self.wall.as_secs_f64();
        let mean = if self.latencies.is_empty() {
            0.0
        } else {
            self.latencies.iter().map(|d| ms(*d)).sum::<f64>() / self.latencies.len() as f64
        };
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let (cpu, per_cpu) = match self.responder_ticks {
            Some(t) if t > 0 => (format!("{:.2}", t as f64 / hz), format!("{:.0}", self.done as f64 / (t as f64 / hz))),
            _ => ("na".into(), "na".into()),
        };
        format!(
            "ikeload label={} in_flight={} standing={} setups={} failed={} seconds={:.2} rate={:.1} latency_mean_ms={:.2} \
             latency_p50_ms={:.2} latency_p99_ms={:.2} responder_cpu_s={} setups_per_cpu_s={} generator_cpu_s={:.2} \
             warnings={} send_errors={} ike_sas_left={}",
            args.label,
            args.in_flight,
            args.standing,
            self.done,
            self.failed,
            secs,
            self.done as f64 / secs.max(1e-9),
            mean,
            self.percentile(0.5),
            self.percentile(0.99),
            cpu,
            per_cpu,
            self.own_cpu.as_secs_f64(),
            self.warnings,
            self.send_errors,
            self.left,
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// User and system CPU ticks of process `pid`, all its threads.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), from field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// This process's user and system CPU time.
fn own_cpu() -> Duration {
    // SAFETY: rusage is plain old data; getrusage fills it.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |tv: libc::timeval| Duration::new(tv.tv_sec as u64, tv.tv_usec as u32 * 1000);
    t(u.ru_utime) + t(u.ru_stime)
}
