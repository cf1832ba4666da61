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

/// Labels of the per-consumer series: the API key's name (`open` for every peer of a server
/// without `--api-keys`), so their number is bounded by the key file.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerLabels {
    pub consumer: String,
}

/// Labels of `genrep_consumer_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerStatusLabels {
    pub consumer: String,
    pub status: u16,
}

/// All server metrics, and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    consumer_requests: Family<ConsumerStatusLabels, Counter>,
    /// Samples streamed per consumer.
    pub consumer_samples: Family<ConsumerLabels, Counter>,
    /// Open shard/stream responses per consumer.
    pub consumer_streams: Family<ConsumerLabels, Gauge>,
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

/// Registers `m` under `name` and hands it back.
fn reg<M: prometheus_client::registry::Metric + Clone>(
    r: &mut Registry,
    name: &str,
    help: &str,
    m: M,
) -> M {
    r.register(name, help, m.clone());
    m
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registry::with_prefix("genrep");
        let r = &mut r;
        let c = Counter::default;
        let g = Gauge::default;
        Self {
            requests: reg(
                r,
                "requests",
                "HTTP requests by route and status",
                Family::default(),
            ),
            consumer_requests: reg(
                r,
                "consumer_requests",
                "HTTP requests by consumer (API key name) and status",
                Family::default(),
            ),
            consumer_samples: reg(
                r,
                "consumer_samples",
                "Samples streamed by consumer (API key name)",
                Family::default(),
            ),
            consumer_streams: reg(
                r,
                "consumer_active_streams",
                "Open shard/stream responses by consumer (API key name)",
                Family::default(),
            ),
            samples_generated: reg(
                r,
                "samples_generated",
                "Samples (anchor + positives) produced",
                c(),
            ),
            images_generated: reg(
                r,
                "images_generated",
                "Images run through the generator",
                c(),
            ),
            batches: reg(r, "batches", "Generator forward passes", c()),
            jobs_dropped: reg(
                r,
                "jobs_dropped",
                "Queued jobs dropped because their consumer went away",
                c(),
            ),
            bytes_streamed: reg(
                r,
                "bytes_streamed",
                "Response body bytes handed to connections",
                c(),
            ),
            queue_depth: reg(r, "queue_depth", "Jobs waiting for the generator", g()),
            active_streams: reg(r, "active_streams", "Open shard/stream responses", g()),
            batch_size: reg(
                r,
                "batch_size",
                "Images per generator forward pass",
                Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            ),
            queue_duration: reg(
                r,
                "queue_duration_seconds",
                "Time a job waited before its batch ran",
                durations(),
            ),
            inference_duration: reg(
                r,
                "inference_duration_seconds",
                "Generator forward pass time per batch",
                durations(),
            ),
            encode_duration: reg(
                r,
                "encode_duration_seconds",
                "Image + tar encoding time per sample",
                durations(),
            ),
            registry: std::mem::take(r),
        }
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

    pub fn count_consumer_request(&self, consumer: &str, status: u16) {
        self.consumer_requests
            .get_or_create(&ConsumerStatusLabels {
                consumer: consumer.to_string(),
                status,
            })
            .inc();
    }

    /// The series of one consumer label.
    pub fn consumer(label: &str) -> ConsumerLabels {
        ConsumerLabels {
            consumer: label.to_string(),
        }
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
