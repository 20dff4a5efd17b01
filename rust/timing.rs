//! Live per-layer timings, opt-in (`ferroware.install(app, timings=True)`).
//!
//! A layer's own time is the time spent stepping it, minus the time spent
//! inside its downstream app (the layers inside it and the endpoint), so each
//! figure is what that one `dispatch` costs. Samples are kept in a ring per
//! layer; a snapshot gives count, p50 and p99. Off, none of this runs: the
//! dispatcher only checks for an absent `Option`.

use pyo3::prelude::*;
use pyo3::types::PyDict;

/// How many recent samples a layer keeps for its percentiles.
const WINDOW: usize = 4096;

struct LayerStats {
    name: String,
    /// `mw<index>;desc="<name>";dur=`: the Server-Timing field up to its value.
    field_prefix: String,
    count: u64,
    samples: Vec<u64>,
    next: usize,
}

impl LayerStats {
    fn record(&mut self, nanos: u64) {
        self.count += 1;
        if self.samples.len() < WINDOW {
            self.samples.push(nanos);
        } else {
            self.samples[self.next] = nanos;
            self.next = (self.next + 1) % WINDOW;
        }
    }

    fn percentile(sorted: &[u64], p: f64) -> f64 {
        if sorted.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
        sorted[rank.min(sorted.len() - 1)] as f64
    }
}

/// The timings of one app's layers.
#[pyclass(module = "ferroware._core")]
pub struct Timings {
    layers: Vec<LayerStats>,
}

impl Timings {
    pub fn record(&mut self, layer: usize, nanos: u64) {
        if let Some(stats) = self.layers.get_mut(layer) {
            stats.record(nanos);
        }
    }

    /// The Server-Timing field value for `nanos` of this layer's own time.
    pub fn server_timing(&self, layer: usize, nanos: u64) -> String {
        use std::fmt::Write;
        let prefix = self.layers.get(layer).map_or("mw;dur=", |s| s.field_prefix.as_str());
        let mut value = String::with_capacity(prefix.len() + 12);
        value.push_str(prefix);
        let micros = nanos / 1000;
        let _ = write!(value, "{}.{:03}", micros / 1000, micros % 1000);
        value
    }
}

#[pymethods]
impl Timings {
    #[new]
    fn new() -> Self {
        Timings { layers: Vec::new() }
    }

    /// Adds a layer; returns its index. Names are made unique with `#2`, `#3`...
    fn register(&mut self, name: &str) -> usize {
        let taken = |candidate: &str| self.layers.iter().any(|l| l.name == candidate);
        let mut unique = name.to_string();
        let mut n = 2;
        while taken(&unique) {
            unique = format!("{name}#{n}");
            n += 1;
        }
        let desc: String = unique.chars().filter(|c| *c != '"' && *c != '\\' && !c.is_control()).collect();
        let field_prefix = format!("mw{};desc=\"{desc}\";dur=", self.layers.len());
        self.layers.push(LayerStats { name: unique, field_prefix, count: 0, samples: Vec::new(), next: 0 });
        self.layers.len() - 1
    }

    /// `{layer name: {"count": int, "p50_us": float, "p99_us": float}}`, outermost first.
    fn snapshot<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let result = PyDict::new(py);
        for stats in &self.layers {
            let mut sorted = stats.samples.clone();
            sorted.sort_unstable();
            let entry = PyDict::new(py);
            entry.set_item("count", stats.count)?;
            entry.set_item("p50_us", LayerStats::percentile(&sorted, 50.0) / 1000.0)?;
            entry.set_item("p99_us", LayerStats::percentile(&sorted, 99.0) / 1000.0)?;
            result.set_item(&stats.name, entry)?;
        }
        Ok(result)
    }

    /// Forgets every sample (the layers stay registered).
    fn reset(&mut self) {
        for stats in &mut self.layers {
            stats.count = 0;
            stats.samples.clear();
            stats.next = 0;
        }
    }

    fn __len__(&self) -> usize {
        self.layers.len()
    }
}

/// A layer's place in an app's timings.
pub struct Timing {
    pub timings: Py<Timings>,
    pub layer: usize,
}

pub fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Timings>()?;
    Ok(())
}

/// A cheap monotonic clock for the timings: the CPU's time-stamp counter where
/// there is one (a few cycles to read, against tens of nanoseconds for the
/// system clock; a layer reads it a dozen times per request), converted to
/// nanoseconds with a rate measured once against the system clock.
pub mod clock {
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    /// A reading, in clock ticks.
    #[derive(Clone, Copy)]
    pub struct Tick(u64);

    #[cfg(target_arch = "x86_64")]
    fn ticks() -> u64 {
        // SAFETY: RDTSC has no preconditions on x86_64.
        unsafe { core::arch::x86_64::_rdtsc() }
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn ticks() -> u64 {
        static START: OnceLock<Instant> = OnceLock::new();
        START.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }

    /// Nanoseconds per tick, measured over 2 ms the first time it is needed.
    fn nanos_per_tick() -> f64 {
        static RATE: OnceLock<f64> = OnceLock::new();
        *RATE.get_or_init(|| {
            let (t0, c0) = (Instant::now(), ticks());
            while t0.elapsed() < Duration::from_millis(2) {}
            let (elapsed, c1) = (t0.elapsed(), ticks());
            let ticks = c1.saturating_sub(c0).max(1);
            elapsed.as_nanos() as f64 / ticks as f64
        })
    }

    pub fn now() -> Tick {
        Tick(ticks())
    }

    impl Tick {
        /// Nanoseconds from `self` to now.
        pub fn elapsed_nanos(self) -> u64 {
            (ticks().saturating_sub(self.0) as f64 * nanos_per_tick()) as u64
        }
    }
}
