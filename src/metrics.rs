//! Prometheus metrics, kept as atomics and rendered in the text exposition format at `/metrics`.
//!
//! Names follow TEI/TGI: counters end in `_total`, durations are histograms in seconds. Publishing
//! both `genrep_images_generated_total` and `genrep_batches_total` gives the mean batch size.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

/// A histogram with fixed upper bounds.
pub struct Histogram {
    bounds: Vec<f64>,
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: Vec<f64>) -> Self {
        Self {
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            bounds,
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
    /// Geometric duration buckets (TEI's recipe: ×1.5 from 10 µs, 35 buckets).
    fn durations() -> Self {
        Self::new((0..35).map(|i| 1e-5 * 1.5f64.powi(i)).collect())
    }
    pub fn observe(&self, v: f64) {
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            if v <= *b {
                c.fetch_add(1, Relaxed);
            }
        }
        self.sum_micros.fetch_add((v * 1e6) as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }
    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }
    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {}", c.load(Relaxed));
        }
        let n = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {n}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micros.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {n}");
    }
}

/// All server metrics.
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    pub samples_generated: AtomicU64,
    pub images_generated: AtomicU64,
    pub batches: AtomicU64,
    pub jobs_dropped: AtomicU64,
    pub bytes_streamed: AtomicU64,
    pub queue_depth: AtomicI64,
    pub active_streams: AtomicI64,
    pub batch_size: Histogram,
    pub queue_duration: Histogram,
    pub inference_duration: Histogram,
    pub encode_duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Mutex::new(BTreeMap::new()),
            samples_generated: AtomicU64::new(0),
            images_generated: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            jobs_dropped: AtomicU64::new(0),
            bytes_streamed: AtomicU64::new(0),
            queue_depth: AtomicI64::new(0),
            active_streams: AtomicI64::new(0),
            batch_size: Histogram::new((0..=12).map(|i| (1u64 << i) as f64).collect()),
            queue_duration: Histogram::durations(),
            inference_duration: Histogram::durations(),
            encode_duration: Histogram::durations(),
        }
    }
}

impl Metrics {
    pub fn count_request(&self, route: &str, status: u16) {
        *self
            .requests
            .lock()
            .unwrap()
            .entry((route.to_string(), status))
            .or_default() += 1;
    }

    pub fn render(&self) -> String {
        let mut o = String::new();
        o.push_str("# HELP genrep_requests_total HTTP requests by route and status.\n# TYPE genrep_requests_total counter\n");
        for ((route, status), n) in self.requests.lock().unwrap().iter() {
            let _ = writeln!(
                o,
                "genrep_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        let counters = [
            (
                "genrep_samples_generated_total",
                "Samples (anchor + positives) produced.",
                &self.samples_generated,
            ),
            (
                "genrep_images_generated_total",
                "Images run through the generator.",
                &self.images_generated,
            ),
            (
                "genrep_batches_total",
                "Generator forward passes.",
                &self.batches,
            ),
            (
                "genrep_jobs_dropped_total",
                "Queued jobs dropped because their consumer went away.",
                &self.jobs_dropped,
            ),
            (
                "genrep_bytes_streamed_total",
                "Response body bytes handed to connections.",
                &self.bytes_streamed,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                o,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Relaxed)
            );
        }
        let gauges = [
            (
                "genrep_queue_depth",
                "Jobs waiting for the generator.",
                &self.queue_depth,
            ),
            (
                "genrep_active_streams",
                "Open shard/stream responses.",
                &self.active_streams,
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(
                o,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                v.load(Relaxed)
            );
        }
        self.batch_size.render(
            &mut o,
            "genrep_batch_size",
            "Images per generator forward pass.",
        );
        self.queue_duration.render(
            &mut o,
            "genrep_queue_duration_seconds",
            "Time a job waited before its batch ran.",
        );
        self.inference_duration.render(
            &mut o,
            "genrep_inference_duration_seconds",
            "Generator forward pass time per batch.",
        );
        self.encode_duration.render(
            &mut o,
            "genrep_encode_duration_seconds",
            "Image + tar encoding time per sample.",
        );
        o
    }
}
