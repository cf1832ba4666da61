//! The sample iterator: per-rank shard lists, per-epoch shuffles, parallel prefetch of shard
//! streams, the shuffle buffer and the resumable cursor.

use super::fetch::{stream_shard, FetchPolicy};
use super::shard::RawSample;
use super::LoaderError;
use rand::{seq::SliceRandom, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

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

/// A shard being read ahead: its samples, and the bytes they hold (the reader's budget).
struct Pending {
    rx: std::sync::mpsc::Receiver<ShardMsg>,
    budget: Arc<Budget>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        // A reader waiting for room stops: nobody will take its samples.
        self.budget.close();
    }
}

/// Samples a prefetching shard reader may hold ahead of the consumer.
const READ_AHEAD: usize = 1024;
/// Bytes of samples a prefetching shard reader may hold ahead of the consumer (one sample
/// larger than this still passes, alone).
const READ_AHEAD_BYTES: u64 = 256 << 20;

/// Bytes held by one reader's samples in flight, bounded by [`READ_AHEAD_BYTES`].
#[derive(Default)]
struct Budget {
    /// Bytes in flight, and whether the consumer is gone.
    state: Mutex<(u64, bool)>,
    room: std::sync::Condvar,
}

impl Budget {
    /// Waits for room for `n` bytes; false once the consumer is gone.
    fn take(&self, n: u64) -> bool {
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while !g.1 && g.0 > 0 && g.0 + n > READ_AHEAD_BYTES {
            g = self.room.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        if g.1 {
            return false;
        }
        g.0 += n;
        true
    }

    fn give(&self, n: u64) {
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        g.0 = g.0.saturating_sub(n);
        self.room.notify_all();
    }

    fn close(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
        self.room.notify_all();
    }
}

fn sample_bytes(s: &RawSample) -> u64 {
    s.fields.values().map(|v| v.len() as u64).sum()
}

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
    /// The next window while it is being read, and where it starts; kept across a failed read so
    /// the next call continues it (no sample lost or repeated).
    filling: Vec<RawSample>,
    fill_start: Option<Cursor>,
    /// Samples of the next window already delivered before a resume.
    resume_skip: usize,
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
        if cursor.shard >= shards.len() {
            return Err(LoaderError::BadCursor(cursor.shard, shards.len()));
        }
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
            window_pos: 0,
            filling: Vec::new(),
            fill_start: None,
            resume_skip: skip,
        };
        l.start_epoch();
        Ok(l)
    }

    pub fn shards(&self) -> &[String] {
        &self.shards
    }

    pub fn cursor(&self) -> Cursor {
        if self.cfg.shuffle_buffer <= 1 {
            return self.cursor;
        }
        if self.window_pos < self.window.len() {
            Cursor {
                in_window: self.window_pos,
                ..self.window_start
            }
        } else {
            // Between windows (or while one is being read): the next window starts at the fill
            // start, or at the stream position when no fill has begun.
            Cursor {
                in_window: self.resume_skip,
                ..self.fill_start.unwrap_or(self.cursor)
            }
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
            let budget = Arc::new(Budget::default());
            let (policy, cache, use_cache) =
                (self.cfg.policy.clone(), self.cache.clone(), self.cfg.cache);
            let room = budget.clone();
            std::thread::spawn(move || {
                let send = |s: RawSample| {
                    room.take(sample_bytes(&s)) && tx.send(ShardMsg::Sample(s)).is_ok()
                };
                let hit = cache.lock().unwrap().get(&url).cloned();
                if let Some(hit) = hit {
                    for s in hit.iter().skip(skip) {
                        if !send(s.clone()) {
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
                        alive = send(s);
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
            self.pending.push_back((pos, Pending { rx, budget }));
            pos += 1;
        }
    }

    /// The next sample; advances through shards and epochs forever.
    pub fn next_sample(&mut self) -> Result<RawSample, LoaderError> {
        let n = self.cfg.shuffle_buffer;
        if n <= 1 {
            return self.next_in_order();
        }
        while self.window_pos >= self.window.len() {
            let start = *self.fill_start.get_or_insert(self.cursor);
            while self.filling.len() < n {
                // On an error the partial window stays in `filling`; the next call goes on.
                let s = self.next_in_order()?;
                self.filling.push(s);
            }
            self.fill_start = None;
            self.window = std::mem::take(&mut self.filling);
            self.window_start = start;
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
                self.cfg.seed
                    ^ start.epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    ^ (start.shard as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
                    ^ (start.sample as u64).wrapping_mul(0x1656_67B1_9E37_79F9),
            );
            self.window.shuffle(&mut rng);
            // A resume skips what the checkpointed run delivered (possibly the whole window).
            self.window_pos = std::mem::take(&mut self.resume_skip).min(n);
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
            let cur = self.current.as_ref().unwrap();
            let msg = cur.rx.recv();
            match msg {
                Ok(ShardMsg::Sample(s)) => {
                    cur.budget.give(sample_bytes(&s));
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
