//! WebDataset shard loader: brace-pattern URLs or local files, per-rank sharding, per-epoch
//! deterministic shuffle, bounded parallel prefetch, retries with backoff, a resumable cursor, and
//! decoding to candle tensors.
//!
//! Shards are read as a stream: a sample is handed on as soon as the next one starts (so an endless
//! `/v1/stream` URL yields from its first samples), and the last one only once the tar
//! end-of-archive marker (two zero blocks) has arrived and, when the server announces
//! `x-genrep-samples`, the count matches: a truncated shard is an error, never a silently short
//! epoch. A failed download is retried from the start of the shard (shards are deterministic),
//! skipping the samples already delivered, so every sample is delivered exactly once.

use candle_core::{Device, Tensor};
use genrep_wire::SampleMeta;
use rand::{seq::SliceRandom, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Loader errors; each names the shard or pattern at fault.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("bad shard pattern `{0}`: {1}")]
    Pattern(String, String),
    #[error("no shards match `{0}`")]
    NoShards(String),
    #[error("{0}: {1}")]
    Io(String, String),
    #[error("{url}: giving up after {attempts} attempts: {last}")]
    Network {
        url: String,
        attempts: usize,
        last: String,
    },
    #[error("{0}: truncated or malformed shard: {1}")]
    Truncated(String, String),
    #[error("{0}: sample `{1}`: {2}")]
    Sample(String, String, String),
    #[error(
        "{0} shards cannot be split over world_size {1} (rank {2}): every rank needs at least one"
    )]
    TooFewShards(usize, usize, usize),
}

/// Expands `{a..b}` numeric ranges (zero padding kept when `a` is padded) and `{x,y}` lists, like
/// `braceexpand`. Anything after `?` (a query string) is kept as is on every URL.
pub fn expand(pattern: &str) -> Result<Vec<String>, LoaderError> {
    let (path, query) = match pattern.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (pattern, None),
    };
    let mut out = vec![String::new()];
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        let close = rest[open..]
            .find('}')
            .map(|c| open + c)
            .ok_or_else(|| LoaderError::Pattern(pattern.into(), "unclosed `{`".into()))?;
        let lit = &rest[..open];
        let inner = &rest[open + 1..close];
        if lit.contains('}') || inner.contains('{') {
            return Err(LoaderError::Pattern(
                pattern.into(),
                "nested or unbalanced braces".into(),
            ));
        }
        let alts: Vec<String> = if let Some((a, b)) = inner.split_once("..") {
            let (na, nb) = (
                a.parse::<u64>().map_err(|_| {
                    LoaderError::Pattern(pattern.into(), format!("`{a}` is not a number"))
                })?,
                b.parse::<u64>().map_err(|_| {
                    LoaderError::Pattern(pattern.into(), format!("`{b}` is not a number"))
                })?,
            );
            if na > nb {
                return Err(LoaderError::Pattern(
                    pattern.into(),
                    format!("empty range {a}..{b}"),
                ));
            }
            if nb - na > 10_000_000 {
                return Err(LoaderError::Pattern(
                    pattern.into(),
                    "range too large".into(),
                ));
            }
            let width = if a.starts_with('0') && a.len() > 1 {
                a.len()
            } else {
                0
            };
            (na..=nb).map(|n| format!("{n:0width$}")).collect()
        } else {
            inner.split(',').map(str::to_string).collect()
        };
        out = out
            .iter()
            .flat_map(|p| alts.iter().map(move |a| format!("{p}{lit}{a}")))
            .collect();
        rest = &rest[close + 1..];
    }
    if rest.contains('}') {
        return Err(LoaderError::Pattern(
            pattern.into(),
            "unbalanced `}`".into(),
        ));
    }
    Ok(out
        .into_iter()
        .map(|p| match query {
            Some(q) => format!("{p}{rest}?{q}"),
            None => format!("{p}{rest}"),
        })
        .collect())
}

/// The shards named by a source: an `http(s)://` pattern, a local file pattern, or a directory
/// (all `*.tar` inside, sorted). Several sources can be joined with `::`.
pub fn resolve(source: &str) -> Result<Vec<String>, LoaderError> {
    let mut all = Vec::new();
    for part in source.split("::") {
        if part.starts_with("http://") || part.starts_with("https://") {
            all.extend(expand(part)?);
            continue;
        }
        let p = Path::new(part);
        if p.is_dir() {
            let mut v: Vec<String> = std::fs::read_dir(p)
                .map_err(|e| LoaderError::Io(part.into(), e.to_string()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "tar"))
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            v.sort();
            if v.is_empty() {
                return Err(LoaderError::NoShards(part.into()));
            }
            all.extend(v);
        } else {
            for f in expand(part)? {
                if !Path::new(&f).is_file() {
                    return Err(LoaderError::Io(f, "no such file".into()));
                }
                all.push(f);
            }
        }
    }
    if all.is_empty() {
        return Err(LoaderError::NoShards(source.into()));
    }
    Ok(all)
}

/// One WebDataset sample: its key and raw fields.
#[derive(Debug, Clone)]
pub struct RawSample {
    pub key: String,
    pub fields: BTreeMap<String, Vec<u8>>,
}

/// Counts the bytes that pass through and keeps the last 1024 of them, to check the tar
/// end-of-archive marker (the `tar` crate treats a stream cut at a header boundary as a clean end).
struct TailReader<R> {
    inner: R,
    total: u64,
    tail: Vec<u8>,
}

impl<R: Read> Read for TailReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.total += n as u64;
        self.tail.extend_from_slice(&buf[..n]);
        if self.tail.len() > 1024 {
            self.tail.drain(..self.tail.len() - 1024);
        }
        Ok(n)
    }
}

impl<R> TailReader<R> {
    fn ends_with_marker(&self) -> bool {
        self.total >= 1024
            && self.total % 512 == 0
            && self.tail.len() == 1024
            && self.tail.iter().all(|&b| b == 0)
    }
}

/// Reads a tar stream sample by sample and calls `emit(index, sample)` for each, in order. A
/// sample is emitted once the next one starts; the last one only after the end-of-archive marker
/// and the announced count (`expected`) are checked, so an emitted sample is always complete.
/// `emit` returns `false` to stop reading (the consumer went away). Returns the sample count.
pub fn read_samples<R: Read>(
    name: &str,
    reader: R,
    expected: Option<usize>,
    mut emit: impl FnMut(usize, RawSample) -> bool,
) -> Result<usize, LoaderError> {
    let trunc = |m: String| LoaderError::Truncated(name.into(), m);
    let mut src = TailReader {
        inner: reader,
        total: 0,
        tail: Vec::new(),
    };
    let mut count = 0;
    let mut cur: Option<RawSample> = None;
    {
        let mut ar = tar::Archive::new(&mut src);
        for e in ar.entries().map_err(|e| trunc(e.to_string()))? {
            let mut e = e.map_err(|e| trunc(e.to_string()))?;
            if e.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            let path = e
                .path()
                .map_err(|e| trunc(e.to_string()))?
                .to_string_lossy()
                .into_owned();
            let base = path.rsplit('/').next().unwrap_or(&path);
            let Some(dot) = base.find('.') else { continue };
            if dot == 0 {
                continue;
            }
            let key = format!("{}{}", &path[..path.len() - base.len()], &base[..dot]);
            let field = base[dot + 1..].to_lowercase();
            let mut buf = Vec::with_capacity(e.size() as usize);
            e.read_to_end(&mut buf).map_err(|e| trunc(e.to_string()))?;
            match &mut cur {
                Some(s) if s.key == key => {
                    if s.fields.insert(field.clone(), buf).is_some() {
                        return Err(LoaderError::Sample(
                            name.into(),
                            key,
                            format!("duplicate field `{field}`"),
                        ));
                    }
                }
                _ => {
                    if let Some(done) = cur.take() {
                        if !emit(count, done) {
                            return Ok(count);
                        }
                        count += 1;
                    }
                    cur = Some(RawSample {
                        key,
                        fields: BTreeMap::from([(field, buf)]),
                    });
                }
            }
        }
    }
    // The archive stops after the first zero block; read the rest to see the whole end.
    std::io::copy(&mut src, &mut std::io::sink()).map_err(|e| trunc(e.to_string()))?;
    if !src.ends_with_marker() {
        return Err(trunc(format!(
            "{} bytes, no end-of-archive marker",
            src.total
        )));
    }
    let total = count + usize::from(cur.is_some());
    if let Some(n) = expected {
        if total != n {
            return Err(trunc(format!("{total} samples, the server announced {n}")));
        }
    }
    if let Some(done) = cur {
        if emit(count, done) {
            count += 1;
        }
    }
    Ok(count)
}

/// Parses a whole shard held in memory, checking that it is complete.
pub fn parse_shard(
    name: &str,
    data: &[u8],
    expected: Option<usize>,
) -> Result<Vec<RawSample>, LoaderError> {
    let mut out = Vec::new();
    read_samples(name, data, expected, |_, s| {
        out.push(s);
        true
    })?;
    Ok(out)
}

/// Network behaviour.
#[derive(Debug, Clone)]
pub struct FetchPolicy {
    /// Tries per shard (the first included).
    pub attempts: usize,
    /// Wait before the second try; doubled for each further one.
    pub backoff: Duration,
    /// Longest wait for the next bytes of a response (streams are endless, so not a total).
    pub timeout: Duration,
}

impl Default for FetchPolicy {
    fn default() -> Self {
        Self {
            attempts: 5,
            backoff: Duration::from_millis(500),
            timeout: Duration::from_secs(600),
        }
    }
}

/// Streams shard `url` (HTTP, or a local file) into `on_sample(index, sample)`, retrying a
/// failed HTTP download with exponential backoff; each attempt re-reads the shard from its start,
/// so `on_sample` sees indices from 0 again and must skip what it already has. 4xx answers other
/// than 429 fail at once. `on_sample` returns `false` to stop.
pub fn stream_shard(
    url: &str,
    policy: &FetchPolicy,
    mut on_sample: impl FnMut(usize, RawSample) -> bool,
) -> Result<(), LoaderError> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        let f = std::fs::File::open(url).map_err(|e| LoaderError::Io(url.into(), e.to_string()))?;
        read_samples(url, std::io::BufReader::new(f), None, on_sample)?;
        return Ok(());
    }
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(10))
        .timeout_read(policy.timeout)
        .build();
    let mut last = String::new();
    for attempt in 0..policy.attempts.max(1) {
        if attempt > 0 {
            std::thread::sleep(policy.backoff * (1 << (attempt - 1).min(6)) as u32);
        }
        match agent.get(url).call() {
            Ok(resp) => {
                let expected = resp
                    .header(genrep_wire::SAMPLES_HEADER)
                    .and_then(|v| v.parse().ok());
                // A cut connection shows up as a truncated body: retry it.
                match read_samples(url, resp.into_reader(), expected, &mut on_sample) {
                    Ok(_) => return Ok(()),
                    Err(e) => last = e.to_string(),
                }
            }
            Err(ureq::Error::Status(code, resp)) => {
                let body = resp.into_string().unwrap_or_default();
                // 4xx other than 429 will not get better by retrying.
                if (400..500).contains(&code) && code != 429 {
                    return Err(LoaderError::Network {
                        url: url.into(),
                        attempts: attempt + 1,
                        last: format!("HTTP {code}: {body}"),
                    });
                }
                last = format!("HTTP {code}: {body}");
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(LoaderError::Network {
        url: url.into(),
        attempts: policy.attempts.max(1),
        last,
    })
}

/// Reads one whole shard (HTTP with retries, or a local file).
pub fn fetch(url: &str, policy: &FetchPolicy) -> Result<Vec<RawSample>, LoaderError> {
    let mut out = Vec::new();
    stream_shard(url, policy, |i, s| {
        if i == out.len() {
            out.push(s);
        }
        true
    })?;
    Ok(out)
}

/// Where the loader is: enough to resume exactly (saved in checkpoints).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Cursor {
    pub epoch: u64,
    /// Position in this rank's shard order of the epoch.
    pub shard: usize,
    /// Samples of that shard already read.
    pub sample: usize,
    /// With a shuffle buffer, `(epoch, shard, sample)` is where the current buffer window
    /// starts and this counts the window's samples already delivered.
    #[serde(default)]
    pub in_window: usize,
}

/// Loader settings.
#[derive(Debug, Clone)]
pub struct LoaderConfig {
    pub rank: usize,
    pub world_size: usize,
    /// Shuffle seed; the shard order of epoch e is a permutation seeded by (seed, e).
    pub seed: u64,
    pub shuffle: bool,
    /// Shards fetched ahead in parallel.
    pub prefetch: usize,
    /// Keep fetched shards in memory for later epochs (small datasets, repeated epochs).
    pub cache: bool,
    /// Sample-level shuffle: read this many samples, deliver them in a permutation seeded by
    /// (seed, window position), repeat. 0 or 1 = shard order.
    pub shuffle_buffer: usize,
    pub policy: FetchPolicy,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            rank: 0,
            world_size: 1,
            seed: 0,
            shuffle: true,
            prefetch: 2,
            cache: false,
            shuffle_buffer: 0,
            policy: FetchPolicy::default(),
        }
    }
}

/// What a shard's reader thread sends: samples as they arrive, then the end or the failure.
enum ShardMsg {
    Sample(RawSample),
    End,
    Failed(LoaderError),
}

type Pending = std::sync::mpsc::Receiver<ShardMsg>;

/// Samples a prefetching shard reader may hold ahead of the consumer.
const READ_AHEAD: usize = 1024;

/// Iterates samples epoch after epoch, from a cursor.
pub struct Loader {
    shards: Vec<String>,
    cfg: LoaderConfig,
    cursor: Cursor,
    order: Vec<usize>,
    pending: VecDeque<(usize, Pending)>,
    current: Option<Pending>,
    cache: Arc<Mutex<HashMap<String, Arc<Vec<RawSample>>>>>,
    /// The shuffle buffer's window (already permuted), where it started, how much is delivered.
    window: Vec<RawSample>,
    window_start: Cursor,
    window_pos: usize,
}

impl Loader {
    /// This rank's shards: the list is cut to a multiple of `world_size` (equal counts per rank)
    /// and rank r takes every world_size-th shard starting at r.
    pub fn new(
        all_shards: Vec<String>,
        cfg: LoaderConfig,
        cursor: Cursor,
    ) -> Result<Self, LoaderError> {
        let w = cfg.world_size.max(1);
        let per_rank = all_shards.len() / w;
        if per_rank == 0 || cfg.rank >= w {
            return Err(LoaderError::TooFewShards(all_shards.len(), w, cfg.rank));
        }
        let shards: Vec<String> = all_shards
            .into_iter()
            .take(per_rank * w)
            .skip(cfg.rank)
            .step_by(w)
            .collect();
        // Resuming inside a shuffle window: re-read the window from its start and skip what was
        // delivered (the permutation depends only on the window's position).
        let skip = cursor.in_window;
        let cursor = Cursor {
            in_window: 0,
            ..cursor
        };
        let mut l = Self {
            shards,
            cfg,
            cursor,
            order: Vec::new(),
            pending: VecDeque::new(),
            current: None,
            cache: Default::default(),
            window: Vec::new(),
            window_start: cursor,
            window_pos: skip,
        };
        l.start_epoch();
        Ok(l)
    }

    pub fn shards(&self) -> &[String] {
        &self.shards
    }

    pub fn cursor(&self) -> Cursor {
        if self.cfg.shuffle_buffer > 1 {
            Cursor {
                in_window: self.window_pos,
                ..self.window_start
            }
        } else {
            self.cursor
        }
    }

    fn start_epoch(&mut self) {
        self.order = (0..self.shards.len()).collect();
        if self.cfg.shuffle {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
                self.cfg.seed ^ self.cursor.epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            self.order.shuffle(&mut rng);
        }
        self.pending.clear();
        self.current = None;
    }

    /// Starts reader threads for the next shards, up to `prefetch` ahead. The shard at the cursor
    /// starts at `cursor.sample` (after a failure or a resume), later ones at 0.
    fn fill(&mut self) {
        let next = self.cursor.shard + self.pending.len() + usize::from(self.current.is_some());
        let mut pos = next;
        while self.pending.len() < self.cfg.prefetch.max(1) && pos < self.order.len() {
            let url = self.shards[self.order[pos]].clone();
            let skip = if pos == self.cursor.shard {
                self.cursor.sample
            } else {
                0
            };
            let (tx, rx) = std::sync::mpsc::sync_channel(READ_AHEAD);
            let (policy, cache, use_cache) =
                (self.cfg.policy.clone(), self.cache.clone(), self.cfg.cache);
            std::thread::spawn(move || {
                let hit = cache.lock().unwrap().get(&url).cloned();
                if let Some(hit) = hit {
                    for s in hit.iter().skip(skip) {
                        if tx.send(ShardMsg::Sample(s.clone())).is_err() {
                            return;
                        }
                    }
                    let _ = tx.send(ShardMsg::End);
                    return;
                }
                // Index of the next sample to send: a retried download starts again at 0 and
                // skips what was already sent.
                let mut next = skip;
                let mut all = Vec::new();
                let mut alive = true;
                let r = stream_shard(&url, &policy, |i, s| {
                    if use_cache && i == all.len() {
                        all.push(s.clone());
                    }
                    if i == next {
                        next += 1;
                        alive = tx.send(ShardMsg::Sample(s)).is_ok();
                    }
                    alive
                });
                match r {
                    Ok(()) if alive => {
                        if use_cache {
                            cache.lock().unwrap().insert(url, Arc::new(all));
                        }
                        let _ = tx.send(ShardMsg::End);
                    }
                    Ok(()) => {}
                    Err(e) => {
                        let _ = tx.send(ShardMsg::Failed(e));
                    }
                }
            });
            self.pending.push_back((pos, rx));
            pos += 1;
        }
    }

    /// The next sample; advances through shards and epochs forever.
    pub fn next_sample(&mut self) -> Result<RawSample, LoaderError> {
        let n = self.cfg.shuffle_buffer;
        if n <= 1 {
            return self.next_in_order();
        }
        if self.window.is_empty() || self.window_pos >= self.window.len() {
            let skip = if self.window.is_empty() {
                self.window_pos
            } else {
                0
            };
            self.window_start = self.cursor;
            self.window.clear();
            for _ in 0..n {
                let s = self.next_in_order()?;
                self.window.push(s);
            }
            let st = self.window_start;
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
                self.cfg.seed
                    ^ st.epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    ^ (st.shard as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
                    ^ (st.sample as u64).wrapping_mul(0x1656_67B1_9E37_79F9),
            );
            self.window.shuffle(&mut rng);
            self.window_pos = skip.min(n);
        }
        let s = self.window[self.window_pos].clone();
        self.window_pos += 1;
        Ok(s)
    }

    /// The next sample in shard order.
    fn next_in_order(&mut self) -> Result<RawSample, LoaderError> {
        loop {
            if self.current.is_none() {
                self.fill();
                let (_, rx) = self
                    .pending
                    .pop_front()
                    .expect("fill queues at least one shard");
                self.current = Some(rx);
                self.fill();
            }
            let msg = self.current.as_ref().unwrap().recv();
            match msg {
                Ok(ShardMsg::Sample(s)) => {
                    self.cursor.sample += 1;
                    return Ok(s);
                }
                Ok(ShardMsg::End) => {
                    self.current = None;
                    self.cursor.sample = 0;
                    self.cursor.shard += 1;
                    if self.cursor.shard >= self.order.len() {
                        self.cursor = Cursor {
                            epoch: self.cursor.epoch + 1,
                            ..Cursor::default()
                        };
                        self.start_epoch();
                    }
                }
                failed => {
                    // Start over from the cursor on the next call: the failed shard again, from
                    // its first undelivered sample, then the ones after it.
                    self.current = None;
                    self.pending.clear();
                    return Err(match failed {
                        Ok(ShardMsg::Failed(e)) => e,
                        _ => LoaderError::Io("prefetch".into(), "shard reader thread died".into()),
                    });
                }
            }
        }
    }
}

/// A decoded batch: `views[v]` is [B, C, H, W] in [0, 1]; `labels` from `cls` when present.
pub struct Batch {
    pub views: Vec<Tensor>,
    pub labels: Option<Vec<u32>>,
    pub keys: Vec<String>,
    pub meta: Vec<Option<SampleMeta>>,
}

/// A decoded CHW image in [0, 1]: (pixels, C, H, W).
pub type Image = (Vec<f32>, usize, usize, usize);

/// Decodes one image field (png/jpg/jpeg/npy) to CHW f32 in [0, 1]; returns (pixels, C, H, W).
pub fn decode_image(field: &str, data: &[u8]) -> Result<Image, String> {
    let ext = field.rsplit('.').next().unwrap_or(field);
    match ext {
        "png" => {
            let mut dec = png::Decoder::new(std::io::Cursor::new(data));
            dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
            let mut r = dec.read_info().map_err(|e| e.to_string())?;
            let mut buf = vec![0; r.output_buffer_size().ok_or("png too large")?];
            let info = r.next_frame(&mut buf).map_err(|e| e.to_string())?;
            let (w, h) = (info.width as usize, info.height as usize);
            let c_in = info.color_type.samples();
            let c = if c_in >= 3 { 3 } else { 1 };
            let mut out = vec![0.0; c * h * w];
            for i in 0..h * w {
                for k in 0..c {
                    out[k * h * w + i] = buf[i * c_in + k] as f32 / 255.0;
                }
            }
            Ok((out, c, h, w))
        }
        "jpg" | "jpeg" => {
            let mut dec = jpeg_decoder::Decoder::new(data);
            let px = dec.decode().map_err(|e| e.to_string())?;
            let info = dec.info().ok_or("jpeg without header")?;
            let (w, h) = (info.width as usize, info.height as usize);
            let c = px.len() / (w * h);
            let mut out = vec![0.0; c * h * w];
            for i in 0..h * w {
                for k in 0..c {
                    out[k * h * w + i] = px[i * c + k] as f32 / 255.0;
                }
            }
            Ok((out, c, h, w))
        }
        "npy" => {
            // genrep's npy views: float32 [C, H, W] in [-1, 1].
            let a = genrep_wire::npy::NpyArray::parse(data).map_err(|e| e.to_string())?;
            let [c, h, w] = a.shape[..] else {
                return Err(format!(
                    "npy image must be [C, H, W], got shape {:?}",
                    a.shape
                ));
            };
            let vals = a
                .to_f32()
                .filter(|_| a.dtype.is_float())
                .ok_or_else(|| format!("npy image must be float, got {}", a.dtype.name()))?;
            Ok((vals.into_iter().map(|v| (v + 1.0) / 2.0).collect(), c, h, w))
        }
        other => Err(format!("unsupported image type `{other}`")),
    }
}

fn find_field<'a>(s: &'a RawSample, stem: &str) -> Option<(&'a String, &'a Vec<u8>)> {
    s.fields
        .iter()
        .find(|(k, _)| k.split('.').next() == Some(stem) && k.contains('.'))
}

/// Views a sample offers: anchor + its positives for genrep samples (the server's `views`
/// parameter counts the positives), 2 for a plain image (real data: two augmentations of it).
pub fn views_in(s: &RawSample) -> usize {
    if find_field(s, "anchor").is_none() {
        return 2;
    }
    1 + (0..)
        .take_while(|i| find_field(s, &format!("pos{i}")).is_some())
        .count()
}

/// The first `views` view images of a sample: `anchor.*`, `pos0.*`, … (genrep samples), or a
/// single image field (`png`/`jpg`/…, real data) repeated, so that views differ only by pixel
/// augmentation. Asking a genrep sample for more views than it has is an error that says what
/// to change, never a silent repeat.
pub fn sample_views(s: &RawSample, views: usize) -> Result<Vec<Image>, String> {
    let mut out = Vec::new();
    if let Some((k, v)) = find_field(s, "anchor") {
        let have = views_in(s);
        if views > have {
            return Err(format!(
                "--views {views} asks for the anchor and {} positive(s), but the sample has {} \
                 (the server's `views` parameter counts positives: request views={} from it, \
                 or pass --views {have})",
                views - 1,
                have - 1,
                views - 1
            ));
        }
        out.push(decode_image(k, v)?);
        for i in 0..views.saturating_sub(1) {
            let (k, v) = find_field(s, &format!("pos{i}")).expect("counted above");
            out.push(decode_image(k, v)?);
        }
    } else {
        let (k, v) = s
            .fields
            .iter()
            .find(|(k, _)| matches!(k.as_str(), "png" | "jpg" | "jpeg" | "npy"))
            .ok_or("no image field (anchor.* or png/jpg/npy)")?;
        out.push(decode_image(k, v)?);
        while out.len() < views {
            out.push(out.last().unwrap().clone());
        }
    }
    Ok(out)
}

/// Reads `batch` samples and decodes them into a [`Batch`] of `views` views (0: as many as the
/// first sample offers, see [`views_in`]), applying `augment` (with per-view seeds from `seed`,
/// `step`) when given.
pub fn next_batch(
    loader: &mut Loader,
    batch: usize,
    views: usize,
    augment: Option<&crate::augment::Augment>,
    seed: u64,
    step: u64,
    device: &Device,
) -> Result<Batch, LoaderError> {
    let mut views = views;
    let mut per_view: Vec<Vec<f32>> = Vec::new();
    let mut labels = Vec::new();
    let mut keys = Vec::new();
    let mut meta = Vec::new();
    let mut shape = None;
    for b in 0..batch {
        let s = loader.next_sample()?;
        let err = |m: String| LoaderError::Sample("batch".into(), s.key.clone(), m);
        if views == 0 {
            views = views_in(&s);
        }
        if per_view.is_empty() {
            per_view = vec![Vec::new(); views];
        }
        let vs = sample_views(&s, views).map_err(err)?;
        for (v, (mut px, c, h, w)) in vs.into_iter().enumerate() {
            match shape {
                None => shape = Some((c, h, w)),
                Some(sh) if sh != (c, h, w) => {
                    return Err(err(format!(
                        "image shape {:?} differs from {:?}",
                        (c, h, w),
                        sh
                    )))
                }
                _ => {}
            }
            if let Some(a) = augment {
                a.apply(
                    &mut px,
                    c,
                    h,
                    w,
                    &mut crate::augment::view_rng(seed, step, b as u64, v as u64),
                );
            }
            per_view[v].extend_from_slice(&px);
        }
        if let Some(c) = s.fields.get(genrep_wire::CLS_FIELD) {
            labels.push(
                std::str::from_utf8(c)
                    .ok()
                    .and_then(|t| t.trim().parse::<u32>().ok())
                    .ok_or_else(|| err("`cls` is not an integer".into()))?,
            );
        }
        meta.push(
            s.fields
                .get(genrep_wire::JSON_FIELD)
                .and_then(|j| serde_json::from_slice::<SampleMeta>(j).ok()),
        );
        keys.push(s.key.clone());
    }
    let (c, h, w) = shape.unwrap_or((1, 1, 1));
    let views = per_view
        .into_iter()
        .map(|v| Tensor::from_vec(v, (batch, c, h, w), device))
        .collect::<candle_core::Result<Vec<_>>>()
        .map_err(|e| LoaderError::Io("tensor".into(), e.to_string()))?;
    let labels = (labels.len() == batch).then_some(labels);
    Ok(Batch {
        views,
        labels,
        keys,
        meta,
    })
}

/// Local path of a `file://` or plain path (helper for CLIs).
pub fn local_path(s: &str) -> PathBuf {
    PathBuf::from(s.strip_prefix("file://").unwrap_or(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brace_expansion() {
        assert_eq!(
            expand("http://h:1/v1/shards/train-{000008..000011}.tar?seed=1&sigma=0.2").unwrap(),
            vec![
                "http://h:1/v1/shards/train-000008.tar?seed=1&sigma=0.2",
                "http://h:1/v1/shards/train-000009.tar?seed=1&sigma=0.2",
                "http://h:1/v1/shards/train-000010.tar?seed=1&sigma=0.2",
                "http://h:1/v1/shards/train-000011.tar?seed=1&sigma=0.2",
            ]
        );
        assert_eq!(
            expand("a-{x,y}-{1..2}.tar").unwrap(),
            vec!["a-x-1.tar", "a-x-2.tar", "a-y-1.tar", "a-y-2.tar"]
        );
        assert_eq!(expand("plain.tar").unwrap(), vec!["plain.tar"]);
        assert!(expand("a-{1..").is_err());
        assert!(expand("a-{5..1}.tar").is_err());
        assert!(expand("a-{x..1}.tar").is_err());
        assert!(expand("a-1}.tar").is_err());
    }

    fn shard(n: usize, end: bool) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for i in 0..n {
            for (f, d) in [("png", b"x".as_slice()), ("cls", b"3".as_slice())] {
                let mut h = tar::Header::new_ustar();
                h.set_size(d.len() as u64);
                h.set_mode(0o444);
                h.set_cksum();
                b.append_data(&mut h, format!("{i:06}.{f}"), d).unwrap();
            }
        }
        if end {
            b.into_inner().unwrap()
        } else {
            let mut v = b.get_ref().clone();
            v.truncate(v.len());
            v
        }
    }

    fn png_1x1(v: u8) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, 1, 1);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        enc.write_header().unwrap().write_image_data(&[v]).unwrap();
        out
    }

    #[test]
    fn npy_views_decode_to_unit_range() {
        let bytes = genrep_wire::npy::write_f32(&[1, 1, 2], &[-1.0, 1.0]);
        let (px, c, h, w) = decode_image("anchor.npy", &bytes).unwrap();
        assert_eq!((px, c, h, w), (vec![0.0, 1.0], 1, 1, 2));
        let flat = genrep_wire::npy::write_f32(&[2], &[0.0, 0.0]);
        assert!(decode_image("anchor.npy", &flat)
            .unwrap_err()
            .contains("[C, H, W]"));
    }

    #[test]
    fn views_come_from_the_data_and_more_is_an_error() {
        let genrep = RawSample {
            key: "000000000007".into(),
            fields: BTreeMap::from([
                ("anchor.png".to_string(), png_1x1(10)),
                ("pos0.png".to_string(), png_1x1(20)),
                ("cls".to_string(), b"3".to_vec()),
            ]),
        };
        assert_eq!(views_in(&genrep), 2);
        let v = sample_views(&genrep, 2).unwrap();
        assert_eq!((v[0].0[0], v[1].0[0]), (10.0 / 255.0, 20.0 / 255.0));
        assert_eq!(sample_views(&genrep, 1).unwrap().len(), 1);
        let e = sample_views(&genrep, 3).unwrap_err();
        assert!(
            e.contains("request views=2") && e.contains("--views 2"),
            "{e}"
        );
        let real = RawSample {
            key: "x".into(),
            fields: BTreeMap::from([("png".to_string(), png_1x1(5))]),
        };
        assert_eq!(views_in(&real), 2);
        assert_eq!(sample_views(&real, 3).unwrap().len(), 3);
    }

    #[test]
    fn truncated_shards_are_errors() {
        let good = shard(3, true);
        assert_eq!(parse_shard("s", &good, Some(3)).unwrap().len(), 3);
        assert!(parse_shard("s", &good, Some(4)).is_err());
        let no_end = shard(3, false);
        assert!(parse_shard("s", &no_end, None).is_err());
        assert!(parse_shard("s", &good[..good.len() - 1536], None).is_err());
    }

    #[test]
    fn rank_split_is_disjoint_and_equal() {
        let all: Vec<String> = (0..7).map(|i| format!("s{i}.tar")).collect();
        let cfg = |rank| LoaderConfig {
            rank,
            world_size: 3,
            shuffle: false,
            ..Default::default()
        };
        let r: Vec<Vec<String>> = (0..3)
            .map(|k| {
                Loader::new(all.clone(), cfg(k), Cursor::default())
                    .unwrap()
                    .shards()
                    .to_vec()
            })
            .collect();
        assert!(r.iter().all(|s| s.len() == 2));
        let mut flat: Vec<_> = r.concat();
        flat.sort();
        flat.dedup();
        assert_eq!(flat.len(), 6);
        assert!(Loader::new(all[..2].to_vec(), cfg(0), Cursor::default()).is_err());
    }

    #[test]
    fn shuffle_buffer_permutes_each_window_and_resumes_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let mut shards = Vec::new();
        for sh in 0..3 {
            let mut b = tar::Builder::new(Vec::new());
            for i in 0..4 {
                let mut h = tar::Header::new_ustar();
                h.set_size(1);
                h.set_mode(0o444);
                h.set_cksum();
                b.append_data(&mut h, format!("s{sh}i{i}.cls"), b"1".as_slice())
                    .unwrap();
            }
            let p = dir.path().join(format!("d-{sh:06}.tar"));
            std::fs::write(&p, b.into_inner().unwrap()).unwrap();
            shards.push(p.to_string_lossy().into_owned());
        }
        let cfg = LoaderConfig {
            shuffle: false,
            shuffle_buffer: 6,
            seed: 5,
            ..Default::default()
        };
        let keys = |l: &mut Loader, n: usize| -> Vec<String> {
            (0..n).map(|_| l.next_sample().unwrap().key).collect()
        };
        let mut l = Loader::new(shards.clone(), cfg.clone(), Cursor::default()).unwrap();
        let first = keys(&mut l, 24);
        let in_order: Vec<String> = (0..3)
            .flat_map(|sh| (0..4).map(move |i| format!("s{sh}i{i}")))
            .collect();
        // Each epoch (two windows of 6) is a permutation of the 12 samples, not shard order.
        for epoch in first.chunks(12) {
            let mut sorted = epoch.to_vec();
            sorted.sort();
            assert_eq!(sorted, in_order);
            assert_ne!(epoch, in_order.as_slice());
        }
        // Resume from the cursor taken mid-window: the continuation is identical.
        let mut a = Loader::new(shards.clone(), cfg.clone(), Cursor::default()).unwrap();
        let head = keys(&mut a, 8);
        assert_eq!(head, first[..8]);
        let c = a.cursor();
        assert_eq!(c.in_window, 2, "{c:?}");
        let mut b = Loader::new(shards, cfg, c).unwrap();
        assert_eq!(keys(&mut b, 16), first[8..24]);
    }
}
