//! Process-wide Prometheus metrics that are observed where they happen:
//! every call into a guest (its latency) and every trap. Everything else
//! the `/metrics` endpoint shows is read at scrape time from the counters
//! the threads already keep (`ops::render`).
//!
//! A leaf module: it knows `prometheus` and nothing of the rest of the host,
//! so the wasm layer and the data path can both report into it.
use std::sync::LazyLock;
use std::time::Instant;

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

/// Which guest a call went to: the metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guest {
    /// The IKE component.
    Ike,
    /// An ESP component (any guest group, either direction).
    Esp,
    /// A policy module.
    Policy,
}

impl Guest {
    fn label(self) -> &'static str {
        match self {
            Guest::Ike => "ike",
            Guest::Esp => "esp",
            Guest::Policy => "policy",
        }
    }
}

/// The guest metrics and the registry that holds them.
pub struct GuestMetrics {
    pub registry: Registry,
    /// Each guest's series, resolved once: a call then costs two atomic
    /// adds and a bucket search, not a label lookup under a lock (ESP calls
    /// are per batch on the packet path).
    series: [(IntCounter, IntCounter, Histogram); 3],
}

/// Guest calls take microseconds (an ESP batch, an IKE message) up to the
/// call deadline (hundreds of milliseconds): 5 us to about 1.3 s.
fn latency_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(5e-6, 4.0, 10).unwrap_or_default()
}

/// The one set of guest metrics of this process.
pub static GUESTS: LazyLock<GuestMetrics> = LazyLock::new(|| {
    let calls = IntCounterVec::new(Opts::new("wasmsec_guest_calls_total", "Calls into a guest component."), &["guest"])
        .expect("static metric definition");
    let traps = IntCounterVec::new(
        Opts::new("wasmsec_guest_traps_total", "Guest calls that trapped (the instance is then replaced)."),
        &["guest"],
    )
    .expect("static metric definition");
    let seconds = HistogramVec::new(
        HistogramOpts::new("wasmsec_guest_call_duration_seconds", "Time spent in one call into a guest component.")
            .buckets(latency_buckets()),
        &["guest"],
    )
    .expect("static metric definition");
    // Every series exists from the start, at zero: `rate()` and alerts
    // need a series before the first trap.
    let series = [Guest::Ike, Guest::Esp, Guest::Policy].map(|g| {
        let l = [g.label()];
        (calls.with_label_values(&l), traps.with_label_values(&l), seconds.with_label_values(&l))
    });
    let registry = Registry::new();
    for m in [
        Box::new(calls.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(traps.clone()),
        Box::new(seconds.clone()),
    ] {
        registry.register(m).expect("metric names are unique");
    }
    GuestMetrics { registry, series }
});

/// Time one guest call: `f` runs, and its latency and outcome are recorded.
pub fn guest_call<T, E>(guest: Guest, f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    let start = Instant::now();
    let r = f();
    let (calls, traps, seconds) = &GUESTS.series[guest as usize];
    seconds.observe(start.elapsed().as_secs_f64());
    calls.inc();
    if r.is_err() {
        traps.inc();
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_and_traps_are_counted_by_guest() {
        let before = |g: Guest| GUESTS.series[g as usize].1.get();
        let (ike, esp) = (before(Guest::Ike), before(Guest::Esp));
        let _ = guest_call(Guest::Ike, || Err::<(), _>("trap"));
        let _ = guest_call(Guest::Esp, || Ok::<_, ()>(1));
        assert_eq!(before(Guest::Ike), ike + 1);
        assert_eq!(before(Guest::Esp), esp);
        let text = prometheus::TextEncoder::new().encode_to_string(&GUESTS.registry.gather()).unwrap();
        assert!(text.contains("wasmsec_guest_call_duration_seconds_bucket{guest=\"esp\""), "{text}");
    }
}
