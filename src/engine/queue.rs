//! The wait queue: one FIFO per consumer (API key, or peer address on an open server), served
//! by weighted deficit round robin, so a consumer with many streams gets its weighted share of
//! the generator and no more.
//!
//! Each consumer with queued work (a *flow*) takes turns; a turn adds `quantum × weight` images
//! of credit and serves the flow's jobs while the credit lasts. A job larger than the quantum is
//! served once the flow has a quantum of credit and leaves the flow in debt, repaid on later
//! turns, so big jobs neither starve nor jump the line. An empty flow is forgotten (bounded
//! memory whatever the number of peers). Interactive jobs (single samples, grids, generate) go
//! ahead of their own flow's stream jobs, first come first served among themselves: a consumer's
//! stream backlog never delays its own inspection requests, and other consumers' backlogs delay
//! them by one turn at most.

use super::Job;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Who a job is for: the unit of fairness.
#[derive(Debug, Clone)]
pub struct Consumer {
    /// A stable identity: the API key's name, or the peer's IP address on an open server.
    pub name: Arc<str>,
    /// Its metrics label: the key's name, or `open` (peer addresses are unbounded).
    pub label: Arc<str>,
    /// Share of the generator relative to other consumers with queued work (≥ 1).
    pub weight: u32,
    /// Images this consumer's streams may have in flight together (read ahead of what the
    /// client has taken). Without it a consumer with many streams would hold many windows of
    /// generated samples waiting for the shared encoders, and crowd others out there.
    /// The semaphore holds one permit per image; the number is its size.
    pub readahead: Option<(Arc<tokio::sync::Semaphore>, u32)>,
}

impl Consumer {
    pub fn new(name: impl Into<Arc<str>>, label: impl Into<Arc<str>>, weight: u32) -> Self {
        Self {
            name: name.into(),
            label: label.into(),
            weight: weight.max(1),
            readahead: None,
        }
    }

    /// Bounds the images the consumer's streams read ahead, all streams together.
    pub fn with_readahead(mut self, images: usize) -> Self {
        let images = images.clamp(1, u32::MAX as usize);
        self.readahead = Some((Arc::new(tokio::sync::Semaphore::new(images)), images as u32));
        self
    }
}

struct Flow {
    /// Single samples, grids, generate: served before the flow's stream jobs, in order.
    interactive: VecDeque<Job>,
    /// Stream jobs.
    jobs: VecDeque<Job>,
    /// Images this flow may still take in its current turn; negative after a large job.
    deficit: i64,
    weight: u32,
    in_turn: bool,
}

impl Flow {
    fn is_empty(&self) -> bool {
        self.interactive.is_empty() && self.jobs.is_empty()
    }
    fn front(&self) -> Option<&Job> {
        self.interactive.front().or(self.jobs.front())
    }
    fn pop_front(&mut self) -> Option<Job> {
        self.interactive
            .pop_front()
            .or_else(|| self.jobs.pop_front())
    }
}

/// Per-consumer FIFOs under deficit round robin.
pub(super) struct FairQueue {
    flows: HashMap<Arc<str>, Flow>,
    /// Debts of flows that emptied while in debt (a job larger than their credit): charged
    /// when they queue again, so one large job at a time cannot take more than a fair share.
    debts: HashMap<Arc<str>, i64>,
    /// Flows with queued jobs, in turn order; the front one is being served.
    order: VecDeque<Arc<str>>,
    len: usize,
    /// Credit per turn and unit of weight, in images (the batch size: one turn of a weight-1
    /// flow fills at most one batch).
    quantum: i64,
}

impl FairQueue {
    pub fn new(quantum: usize) -> Self {
        Self {
            flows: HashMap::new(),
            debts: HashMap::new(),
            order: VecDeque::new(),
            len: 0,
            quantum: quantum.max(1) as i64,
        }
    }

    /// Jobs queued, all consumers.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Jobs queued for one consumer: (interactive, stream).
    pub fn queued_by(&self, name: &str) -> (usize, usize) {
        self.flows
            .get(name)
            .map_or((0, 0), |f| (f.interactive.len(), f.jobs.len()))
    }

    /// Queues a job in its consumer's flow: stream jobs at the back, interactive ones after the
    /// flow's other interactive jobs but ahead of its stream jobs.
    pub fn push(&mut self, c: &Consumer, job: Job, front: bool) {
        let debts = &mut self.debts;
        let flow = self.flows.entry(c.name.clone()).or_insert_with(|| Flow {
            interactive: VecDeque::new(),
            jobs: VecDeque::new(),
            deficit: debts.remove(&c.name).unwrap_or(0),
            weight: c.weight,
            in_turn: false,
        });
        if flow.is_empty() {
            self.order.push_back(c.name.clone());
        }
        flow.weight = c.weight;
        if front {
            flow.interactive.push_back(job);
        } else {
            flow.jobs.push_back(job);
        }
        self.len += 1;
    }

    /// Drops jobs whose consumer went away (their result receiver is gone); returns how many.
    pub fn purge_dead(&mut self) -> usize {
        let mut dropped = 0;
        for f in self.flows.values_mut() {
            let before = f.jobs.len() + f.interactive.len();
            f.jobs.retain(|j| !j.tx.is_closed());
            f.interactive.retain(|j| !j.tx.is_closed());
            dropped += before - f.jobs.len() - f.interactive.len();
        }
        self.len -= dropped;
        self.forget_empty();
        dropped
    }

    fn forget_empty(&mut self) {
        let flows = &mut self.flows;
        self.order
            .retain(|n| flows.get(n).is_some_and(|f| !f.is_empty()));
        let empty: Vec<Arc<str>> = flows
            .iter()
            .filter(|(_, f)| f.is_empty())
            .map(|(n, _)| n.clone())
            .collect();
        for n in empty {
            self.forget(&n);
        }
    }

    /// Removes an empty flow, keeping its debt (bounded: a flood of peers cannot grow it).
    fn forget(&mut self, name: &Arc<str>) {
        if let Some(f) = self.flows.remove(name) {
            if f.deficit < 0 {
                if self.debts.len() >= 4096 {
                    self.debts.clear();
                }
                self.debts.insert(name.clone(), f.deficit);
            }
        }
    }

    /// The next job to run that `accept`s (fits the batch being formed), in deficit round robin
    /// order; `None` when no queued job is acceptable. `dropped` counts dead jobs discarded.
    pub fn pop(&mut self, accept: impl Fn(&Job) -> bool, dropped: &mut usize) -> Option<Job> {
        // Visits in a row that found nothing acceptable; a full round of them ends the search.
        let mut idle = 0;
        while let Some(name) = self.order.front().cloned() {
            let flow = self.flows.get_mut(&name).expect("ordered flows exist");
            while flow.front().is_some_and(|j| j.tx.is_closed()) {
                flow.pop_front();
                self.len -= 1;
                *dropped += 1;
            }
            if flow.is_empty() {
                self.order.pop_front();
                self.forget(&name);
                continue;
            }
            let credit = self.quantum * flow.weight as i64;
            if !flow.in_turn {
                // Credit does not pile up while a flow's head cannot join the batches formed.
                flow.deficit = (flow.deficit + credit).min(2 * credit);
                flow.in_turn = true;
            }
            let head = flow.front().expect("non-empty");
            if accept(head) {
                idle = 0;
                if flow.deficit >= (head.n() as i64).min(credit) {
                    let job = flow.pop_front().expect("non-empty");
                    flow.deficit -= job.n() as i64;
                    self.len -= 1;
                    if flow.is_empty() {
                        self.order.pop_front();
                        self.forget(&name);
                    }
                    return Some(job);
                }
            } else {
                idle += 1;
            }
            // End of this flow's turn.
            flow.in_turn = false;
            self.order.rotate_left(1);
            if idle >= self.order.len() {
                return None;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generator::{Batch, ClassInput, Knobs, Latents, NoiseKey, Space};
    use std::time::Instant;

    /// A job of `n` images whose noise seed carries `tag` (who queued it, for the counts).
    fn job(n: usize, tag: f64) -> (Job, tokio::sync::oneshot::Receiver<super::super::JobOutput>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let j = Job {
            input: Batch {
                latents: Latents {
                    space: Space::Z,
                    z: vec![],
                    offset: None,
                },
                classes: ClassInput::None,
                knobs: Knobs::default(),
                noise: NoiseKey::explicit(tag as u64, n),
            },
            enqueued: Instant::now(),
            tx,
        };
        (j, rx)
    }

    fn tag(j: &Job) -> f64 {
        j.input.noise[0].seed as f64
    }

    /// Queues `count` stream jobs of `n` images tagged `tag` for `c`, keeping their receivers
    /// alive in `keep` (a dropped receiver makes a job dead).
    fn fill(
        q: &mut FairQueue,
        c: &Consumer,
        count: usize,
        n: usize,
        tag: f64,
        keep: &mut Vec<tokio::sync::oneshot::Receiver<super::super::JobOutput>>,
    ) {
        for _ in 0..count {
            let (j, rx) = job(n, tag);
            keep.push(rx);
            q.push(c, j, false);
        }
    }

    /// Images served per consumer when `hog` (weight 1, 8 deep backlog of 2-image jobs) and
    /// `b` (weight `wb`) both keep their flows non-empty.
    #[test]
    fn shares_follow_weights_under_backlog() {
        for wb in [1u32, 3] {
            let mut q = FairQueue::new(8);
            let hog = Consumer::new("hog", "hog", 1);
            let b = Consumer::new("b", "b", wb);
            let mut keep = vec![];
            fill(&mut q, &hog, 400, 2, 0.0, &mut keep);
            fill(&mut q, &b, 400, 2, 1.0, &mut keep);
            let (mut h, mut bb) = (0, 0);
            let mut dropped = 0;
            // Whole rounds: (4 + 4·wb) jobs each.
            for _ in 0..160 {
                let j = q.pop(|_| true, &mut dropped).unwrap();
                if tag(&j) == 0.0 {
                    h += j.n()
                } else {
                    bb += j.n()
                }
            }
            assert_eq!(bb, wb as usize * h, "weight {wb}: hog {h} b {bb}");
        }
    }

    #[test]
    fn large_jobs_run_and_repay_their_debt_and_dead_jobs_are_dropped() {
        let mut q = FairQueue::new(4);
        let a = Consumer::new("a", "a", 1);
        let b = Consumer::new("b", "b", 1);
        let (big, _rb) = job(12, 0.0);
        q.push(&a, big, false);
        let (small, _rs) = job(1, 0.0);
        q.push(&a, small, false);
        let mut keep = vec![];
        fill(&mut q, &b, 8, 1, 1.0, &mut keep);
        let (dead, rx) = job(1, 1.0);
        drop(rx);
        q.push(&b, dead, true);
        let mut dropped = 0;
        assert_eq!(q.pop(|_| true, &mut dropped).unwrap().n(), 12);
        // `a` is 8 images in debt: `b` gets the next turns.
        let next: Vec<f64> = (0..8)
            .map(|_| tag(&q.pop(|_| true, &mut dropped).unwrap()))
            .collect();
        assert!(next.iter().all(|&t| t == 1.0), "{next:?}");
        assert_eq!(dropped, 1);
        assert_eq!(q.pop(|_| true, &mut dropped).unwrap().n(), 1);
        assert!(q.pop(|_| true, &mut dropped).is_none());
        assert_eq!(q.len(), 0);
        assert!(q.flows.is_empty() && q.order.is_empty());
    }

    /// A consumer sending one large job at a time (each queued when the last returns) gets its
    /// share, not a whole large job per turn.
    #[test]
    fn debt_survives_an_empty_queue() {
        let mut q = FairQueue::new(4);
        let (big, small) = (Consumer::new("big", "big", 1), Consumer::new("s", "s", 1));
        let mut keep = vec![];
        fill(&mut q, &small, 200, 1, 1.0, &mut keep);
        let (mut b, mut s) = (0, 0);
        let mut dropped = 0;
        for _ in 0..6 {
            let (j, rx) = job(16, 0.0);
            keep.push(rx);
            q.push(&big, j, false);
            // Serve until the big job has run.
            loop {
                let j = q.pop(|_| true, &mut dropped).unwrap();
                if tag(&j) == 0.0 {
                    b += j.n();
                    break;
                }
                s += j.n();
            }
        }
        assert!(s >= b - 16, "small {s} vs big {b}");
    }

    #[test]
    fn interactive_jobs_go_first_in_arrival_order() {
        let mut q = FairQueue::new(64);
        let c = Consumer::new("c", "c", 1);
        let mut keep = vec![];
        for (t, interactive) in [(0.0, false), (1.0, true), (2.0, false), (3.0, true)] {
            let (j, rx) = job(1, t);
            keep.push(rx);
            q.push(&c, j, interactive);
        }
        let mut dropped = 0;
        let order: Vec<f64> = (0..4)
            .map(|_| tag(&q.pop(|_| true, &mut dropped).unwrap()))
            .collect();
        assert_eq!(order, [1.0, 3.0, 0.0, 2.0]);
        assert_eq!(q.queued_by("c"), (0, 0));
    }

    #[test]
    fn unacceptable_heads_end_the_search() {
        let mut q = FairQueue::new(4);
        let (j, _r) = job(3, 0.0);
        q.push(&Consumer::new("a", "a", 1), j, false);
        let mut dropped = 0;
        assert!(q.pop(|j| j.n() <= 2, &mut dropped).is_none());
        assert_eq!(q.queued_by("a"), (0, 1));
        assert_eq!(q.pop(|_| true, &mut dropped).unwrap().n(), 3);
    }
}
