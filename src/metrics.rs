//! Prometheus metrics with the `prometheus-client` crate (one registry per server, so several
//! servers can live in one process, as the in-process tests do), served at `/metrics`.
//!
//! Names follow TEI/TGI: counters end in `_total`, durations are histograms in seconds. Publishing
//! both `genrep_images_generated_total` and `genrep_batches_total` gives the mean batch size.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of `genrep_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route template (`/v1/shards/{name}`), or `unmatched`.
    pub route: String,
    pub status: u16,
}

/// All server metrics, and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    pub samples_generated: Counter,
    pub images_generated: Counter,
    pub batches: Counter,
    pub jobs_dropped: Counter,
    pub bytes_streamed: Counter,
    pub queue_depth: Gauge,
    pub active_streams: Gauge,
    pub batch_size: Histogram,
    pub queue_duration: Histogram,
    pub inference_duration: Histogram,
    pub encode_duration: Histogram,
}

/// Duration buckets: ×1.5 from 10 µs, 35 buckets (TEI's recipe).
fn durations() -> Histogram {
    Histogram::new(exponential_buckets(1e-5, 1.5, 35))
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Self {
            registry: Registry::with_prefix("genrep"),
            requests: Family::default(),
            samples_generated: Counter::default(),
            images_generated: Counter::default(),
            batches: Counter::default(),
            jobs_dropped: Counter::default(),
            bytes_streamed: Counter::default(),
            queue_depth: Gauge::default(),
            active_streams: Gauge::default(),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            queue_duration: durations(),
            inference_duration: durations(),
            encode_duration: durations(),
        };
        let mut r = m.registry;
        r.register(
            "requests",
            "HTTP requests by route and status",
            m.requests.clone(),
        );
        let counters = [
            (
                "samples_generated",
                "Samples (anchor + positives) produced",
                &m.samples_generated,
            ),
            (
                "images_generated",
                "Images run through the generator",
                &m.images_generated,
            ),
            ("batches", "Generator forward passes", &m.batches),
            (
                "jobs_dropped",
                "Queued jobs dropped because their consumer went away",
                &m.jobs_dropped,
            ),
            (
                "bytes_streamed",
                "Response body bytes handed to connections",
                &m.bytes_streamed,
            ),
        ];
        for (name, help, c) in counters {
            r.register(name, help, c.clone());
        }
        for (name, help, g) in [
            (
                "queue_depth",
                "Jobs waiting for the generator",
                &m.queue_depth,
            ),
            (
                "active_streams",
                "Open shard/stream responses",
                &m.active_streams,
            ),
        ] {
            r.register(name, help, g.clone());
        }
        let histograms = [
            (
                "batch_size",
                "Images per generator forward pass",
                &m.batch_size,
            ),
            (
                "queue_duration_seconds",
                "Time a job waited before its batch ran",
                &m.queue_duration,
            ),
            (
                "inference_duration_seconds",
                "Generator forward pass time per batch",
                &m.inference_duration,
            ),
            (
                "encode_duration_seconds",
                "Image + tar encoding time per sample",
                &m.encode_duration,
            ),
        ];
        for (name, help, h) in histograms {
            r.register(name, help, h.clone());
        }
        Self { registry: r, ..m }
    }
}

impl Metrics {
    pub fn count_request(&self, route: &str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_string(),
                status,
            })
            .inc();
    }

    /// The OpenMetrics text exposition (Prometheus scrapes it).
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
