//! The workers the coordinator has heard from, for operators: what each runs on, its state,
//! the leases it holds, and its throughput. Kept by the event loop from the workers' calls
//! (register, acquire, heartbeat, complete, fail); in memory only, so a new leader learns
//! its workers again from their next calls.
//!
//! Rates come from the cumulative totals each heartbeat carries: the tokens and scripts
//! added since the oldest report in the last [`RATE_WINDOW`], divided by the time since
//! then, so a worker that stops reporting decays to zero instead of keeping its last rate.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use automaldesc_common::ids::{LeaseRef, WorkerId};
use serde::Serialize;
use tokio::time::Instant;

/// The span rates are measured over.
pub const RATE_WINDOW: Duration = Duration::from_secs(60);

/// A worker not heard from for this long after it was lost is no longer listed.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    /// Holds a lease.
    Busy,
    /// Asks for work and holds none.
    Idle,
    /// Shutting down: finishes its task and takes no new one.
    Draining,
    /// Not heard from for a lease TTL.
    Lost,
}

impl WorkerState {
    pub const ALL: [WorkerState; 4] = [Self::Busy, Self::Idle, Self::Draining, Self::Lost];

    pub fn name(self) -> &'static str {
        match self {
            Self::Busy => "busy",
            Self::Idle => "idle",
            Self::Draining => "draining",
            Self::Lost => "lost",
        }
    }
}

/// How an attempt ended, as far as the worker's counters go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    Committed,
    Failed,
    /// Given back unfinished, or a completion refused as late.
    Neither,
}

/// What a worker registers with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Registration {
    pub backend: String,
    pub device_memory_bytes: u64,
    pub slots: u32,
    pub kinds: Vec<String>,
}

/// The running totals a worker reports with its heartbeats and acquires: the worker's
/// own counters, as its process keeps them.
pub use automaldesc_common::telemetry::Totals as Reported;

/// A lease a worker holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LeaseView {
    pub run: String,
    pub stage: u32,
    pub task: u32,
    pub token: u64,
    pub attempt: u32,
    /// When it was granted (ms since the epoch).
    pub since_ms: u64,
    /// The task's progress as its worker last reported it: units (training steps, scripts)
    /// done of its total; 0 of 0 while none is known.
    pub done: u64,
    pub total: u64,
}

/// One worker as operators see it (and `/api/cluster` reports it).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WorkerView {
    pub id: String,
    pub state: WorkerState,
    /// "cpu", "cuda", ... as the worker registered.
    pub backend: String,
    pub device_memory_bytes: u64,
    pub slots: u32,
    pub kinds: Vec<String>,
    /// When it registered, and when it was last heard from (ms since the epoch; 0 when it
    /// has not registered with this coordinator).
    pub registered_ms: u64,
    pub last_seen_ms: u64,
    pub leases: Vec<LeaseView>,
    pub tasks_completed: u64,
    pub tasks_failed: u64,
    /// Cumulative, as the worker last reported them.
    pub scripts: u64,
    pub tokens: u64,
    pub tokens_per_s: f64,
    pub scripts_per_s: f64,
    pub model_loads: u64,
    pub model_load_s: f64,
}

struct Entry {
    view: WorkerView,
    last_seen: Instant,
    draining: bool,
    /// Already logged as lost (until it is heard from again).
    lost: bool,
    /// (when, scripts, tokens) of the reports in the rate window, plus the one before it.
    samples: VecDeque<(Instant, u64, u64)>,
}

/// Reports closer together than this share one rate sample (idle workers ask for work
/// every few hundred milliseconds).
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

impl Entry {
    fn report(&mut self, r: Reported, now: Instant) {
        self.view.scripts = r.scripts;
        self.view.tokens = r.tokens;
        self.view.model_loads = r.model_loads;
        self.view.model_load_s = r.model_load_ms as f64 / 1000.0;
        // A worker runs one task at a time: the progress is its lease's.
        for l in &mut self.view.leases {
            (l.done, l.total) = (r.task_done, r.task_total);
        }
        let sample = (now, r.scripts, r.tokens);
        let several = self.samples.len() > 1;
        match self.samples.back_mut() {
            Some(last) if several && now.duration_since(last.0) < SAMPLE_EVERY => *last = sample,
            _ => self.samples.push_back(sample),
        }
    }
}

/// Every worker heard from.
pub struct Workers {
    entries: BTreeMap<String, Entry>,
    /// Silence after which a worker counts as lost (the lease TTL).
    lost_after: Duration,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Workers {
    pub fn new(lost_after: Duration) -> Self {
        Self {
            entries: BTreeMap::new(),
            lost_after,
        }
    }

    /// The worker's entry, created on first contact; marks it seen now.
    fn seen(&mut self, id: &WorkerId, now: Instant) -> &mut Entry {
        let entry = self.entries.entry(id.0.clone()).or_insert_with(|| Entry {
            view: WorkerView {
                id: id.0.clone(),
                state: WorkerState::Idle,
                backend: String::new(),
                device_memory_bytes: 0,
                slots: 0,
                kinds: Vec::new(),
                registered_ms: 0,
                last_seen_ms: 0,
                leases: Vec::new(),
                tasks_completed: 0,
                tasks_failed: 0,
                scripts: 0,
                tokens: 0,
                tokens_per_s: 0.0,
                scripts_per_s: 0.0,
                model_loads: 0,
                model_load_s: 0.0,
            },
            last_seen: now,
            draining: false,
            lost: false,
            samples: VecDeque::new(),
        });
        if entry.lost {
            tracing::info!(worker_id = %id, "lost worker heard from again");
            entry.lost = false;
        }
        entry.last_seen = now;
        entry.view.last_seen_ms = now_ms();
        entry
    }

    pub fn register(&mut self, id: &WorkerId, r: Registration, now: Instant) {
        let e = self.seen(id, now);
        e.view.backend = r.backend;
        e.view.device_memory_bytes = r.device_memory_bytes;
        e.view.slots = r.slots;
        e.view.kinds = r.kinds;
        e.view.registered_ms = e.view.last_seen_ms;
        // A worker registers when its process starts: its totals start from zero (a
        // restarted process with the same id too).
        e.samples.clear();
        e.samples.push_back((now, 0, 0));
        e.draining = false;
        e.view.leases.clear();
    }

    /// The worker asked for work, reporting its totals (and got `lease`, if any).
    pub fn acquired(
        &mut self,
        id: &WorkerId,
        reported: Option<Reported>,
        lease: Option<(&LeaseRef, u32)>,
        now: Instant,
    ) {
        let e = self.seen(id, now);
        if let Some(r) = reported {
            e.report(r, now);
        }
        if let Some((l, attempt)) = lease {
            let since_ms = e.view.last_seen_ms;
            e.view.leases.push(LeaseView {
                run: l.run.0.clone(),
                stage: l.stage,
                task: l.task.0,
                token: l.token,
                attempt,
                since_ms,
                done: 0,
                total: 0,
            });
        }
    }

    /// A heartbeat: the leases the worker still holds (those it reported minus `lost`), its
    /// running totals, and whether it drains.
    pub fn heartbeat(
        &mut self,
        id: &WorkerId,
        held: &[LeaseRef],
        lost: &[LeaseRef],
        reported: Option<Reported>,
        draining: bool,
        now: Instant,
    ) {
        let e = self.seen(id, now);
        e.draining = draining;
        let keep = |l: &LeaseView| {
            let matches = |r: &LeaseRef| {
                r.run.0 == l.run && r.stage == l.stage && r.task.0 == l.task && r.token == l.token
            };
            held.iter().any(matches) && !lost.iter().any(matches)
        };
        e.view.leases.retain(keep);
        if let Some(r) = reported {
            e.report(r, now);
        }
    }

    /// The worker finished (or failed, or gave back) the attempt holding `lease`.
    pub fn finished(&mut self, id: &WorkerId, lease: &LeaseRef, ending: Ending, now: Instant) {
        let e = self.seen(id, now);
        e.view.leases.retain(|l| {
            !(l.run == lease.run.0 && l.stage == lease.stage && l.token == lease.token)
        });
        match ending {
            Ending::Committed => e.view.tasks_completed += 1,
            Ending::Failed => e.view.tasks_failed += 1,
            Ending::Neither => {}
        }
    }

    /// The lease `lease` of `worker` expired: it no longer holds it.
    pub fn expired(&mut self, worker: &WorkerId, lease: &LeaseRef) {
        if let Some(e) = self.entries.get_mut(&worker.0) {
            e.view.leases.retain(|l| {
                !(l.run == lease.run.0 && l.stage == lease.stage && l.token == lease.token)
            });
        }
    }

    /// Logs the workers that just went silent for longer than a lease TTL, once each; they
    /// hold no lease any more (theirs expired with the same TTL).
    pub fn note_lost(&mut self, now: Instant) {
        let lost_after = self.lost_after;
        for e in self.entries.values_mut() {
            if !e.lost && now.duration_since(e.last_seen) > lost_after {
                e.lost = true;
                let leases: Vec<String> = e
                    .view
                    .leases
                    .iter()
                    .map(|l| format!("{}/{}/{}#{}", l.run, l.stage, l.task, l.token))
                    .collect();
                tracing::warn!(worker_id = %e.view.id, silent = ?now.duration_since(e.last_seen),
                    leases = ?leases, "worker lost");
                e.view.leases.clear();
            }
        }
    }

    /// Every worker as of `now`, with states and rates brought up to date; workers lost for
    /// longer than an hour are dropped, and a lost worker lists no lease.
    pub fn views(&mut self, now: Instant) -> Vec<WorkerView> {
        let lost_after = self.lost_after;
        self.entries
            .retain(|_, e| now.duration_since(e.last_seen) < lost_after + FORGET_AFTER);
        self.entries
            .values_mut()
            .map(|e| {
                // Keep the newest report older than the window as the baseline.
                while e.samples.len() > 1 && now.duration_since(e.samples[1].0) >= RATE_WINDOW {
                    e.samples.pop_front();
                }
                let (tokens_per_s, scripts_per_s) = rates(&e.samples, now);
                e.view.tokens_per_s = tokens_per_s;
                e.view.scripts_per_s = scripts_per_s;
                e.view.state = if now.duration_since(e.last_seen) > lost_after {
                    e.view.leases.clear();
                    WorkerState::Lost
                } else if e.draining {
                    WorkerState::Draining
                } else if e.view.leases.is_empty() {
                    WorkerState::Idle
                } else {
                    WorkerState::Busy
                };
                e.view.clone()
            })
            .collect()
    }
}

/// (tokens/s, scripts/s) since the oldest sample: what was added since it, over the time
/// since it. Zero with fewer than two samples.
fn rates(samples: &VecDeque<(Instant, u64, u64)>, now: Instant) -> (f64, f64) {
    let (Some(first), Some(last)) = (samples.front(), samples.back()) else {
        return (0.0, 0.0);
    };
    let span = now.duration_since(first.0).as_secs_f64();
    if samples.len() < 2 || span <= 0.0 {
        return (0.0, 0.0);
    }
    let tokens = last.2.saturating_sub(first.2) as f64;
    let scripts = last.1.saturating_sub(first.1) as f64;
    (tokens / span, scripts / span)
}

#[cfg(test)]
mod tests {
    use super::*;
    use automaldesc_common::ids::{RunId, TaskId};

    fn lease(task: u32, token: u64) -> LeaseRef {
        LeaseRef {
            run: RunId("r".into()),
            stage: 1,
            task: TaskId(task),
            token,
        }
    }

    fn reported(scripts: u64, tokens: u64) -> Option<Reported> {
        Some(Reported {
            scripts,
            tokens,
            ..Reported::default()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn states_follow_leases_draining_and_silence() {
        let t0 = Instant::now();
        let mut w = Workers::new(Duration::from_secs(30));
        let id = WorkerId("w1".into());
        w.register(
            &id,
            Registration {
                backend: "cuda".into(),
                slots: 1,
                ..Registration::default()
            },
            t0,
        );
        assert_eq!(w.views(t0)[0].state, WorkerState::Idle);
        w.acquired(&id, None, Some((&lease(3, 7), 2)), t0);
        let v = &w.views(t0)[0];
        assert_eq!((v.state, v.backend.as_str()), (WorkerState::Busy, "cuda"));
        assert_eq!((v.leases[0].task, v.leases[0].attempt), (3, 2));
        // The task's progress as the worker reports it goes to its lease.
        let progress = Reported {
            task_done: 5,
            task_total: 20,
            ..Reported::default()
        };
        w.heartbeat(&id, &[lease(3, 7)], &[], Some(progress), false, t0);
        let l = &w.views(t0)[0].leases[0];
        assert_eq!((l.done, l.total), (5, 20));
        // A heartbeat whose lease the coordinator says is lost drops it.
        w.heartbeat(&id, &[lease(3, 7)], &[lease(3, 7)], None, false, t0);
        assert_eq!(w.views(t0)[0].state, WorkerState::Idle);
        w.acquired(&id, None, Some((&lease(4, 8), 1)), t0);
        w.heartbeat(&id, &[lease(4, 8)], &[], None, true, t0);
        assert_eq!(w.views(t0)[0].state, WorkerState::Draining);
        w.finished(&id, &lease(4, 8), Ending::Committed, t0);
        let v = &w.views(t0)[0];
        assert_eq!((v.leases.len(), v.tasks_completed), (0, 1));
        let later = t0 + Duration::from_secs(31);
        assert_eq!(w.views(later)[0].state, WorkerState::Lost);
        assert!(w.views(later + FORGET_AFTER).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn rates_are_what_was_added_over_the_window_and_decay_when_silent() {
        let t0 = Instant::now();
        let mut w = Workers::new(Duration::from_secs(30));
        let id = WorkerId("w1".into());
        w.heartbeat(&id, &[], &[], reported(0, 0), false, t0);
        assert_eq!(w.views(t0)[0].tokens_per_s, 0.0);
        w.heartbeat(
            &id,
            &[],
            &[],
            reported(10, 1000),
            false,
            t0 + Duration::from_secs(10),
        );
        let v = &w.views(t0 + Duration::from_secs(10))[0];
        assert_eq!((v.tokens_per_s, v.scripts_per_s), (100.0, 1.0));
        // Silent for another 10 s: the same work over twice the time.
        let v = &w.views(t0 + Duration::from_secs(20))[0];
        assert_eq!(v.tokens_per_s, 50.0);
        // Reports older than the window stop counting, except the newest of them (the
        // baseline): 600 tokens in the 60 s since the report at 10 s.
        w.heartbeat(
            &id,
            &[],
            &[],
            reported(16, 1600),
            false,
            t0 + Duration::from_secs(65),
        );
        let v = &w.views(t0 + Duration::from_secs(70))[0];
        assert_eq!(v.tokens_per_s, 10.0);
        assert_eq!(v.tokens, 1600);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_worker_lists_no_lease_and_an_expired_lease_is_dropped() {
        let t0 = Instant::now();
        let mut w = Workers::new(Duration::from_secs(30));
        let (a, b) = (WorkerId("a".into()), WorkerId("b".into()));
        w.acquired(&a, None, Some((&lease(1, 5), 1)), t0);
        w.acquired(&b, None, Some((&lease(2, 6), 1)), t0);
        w.acquired(&b, None, Some((&lease(3, 7), 1)), t0);
        // b's lease on task 2 expired in the book: gone from its view at once.
        w.expired(&b, &lease(2, 6));
        let tasks: Vec<u32> = w.views(t0)[1].leases.iter().map(|l| l.task).collect();
        assert_eq!(tasks, vec![3]);
        // a falls silent: lost after the TTL, with no phantom lease left.
        w.heartbeat(
            &b,
            &[lease(3, 7)],
            &[],
            None,
            false,
            t0 + Duration::from_secs(20),
        );
        let later = t0 + Duration::from_secs(31);
        w.note_lost(later);
        let views = w.views(later);
        assert_eq!(
            (views[0].state, views[0].leases.len()),
            (WorkerState::Lost, 0)
        );
        assert_eq!(
            (views[1].state, views[1].leases.len()),
            (WorkerState::Busy, 1)
        );
        // Heard from again: no longer lost.
        w.heartbeat(&a, &[], &[], None, false, later);
        assert_eq!(w.views(later)[0].state, WorkerState::Idle);
    }
}
