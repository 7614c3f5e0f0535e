use std::time::Duration;

use tokio::time::{advance, Instant};

use super::*;

fn worker(name: &str) -> WorkerId {
    WorkerId(name.to_string())
}

fn policy() -> LeasePolicy {
    LeasePolicy {
        ttl: Duration::from_secs(10),
        max_attempts: 3,
        backoff_base: Duration::from_secs(2),
        backoff_max: Duration::from_secs(5),
        speculate_after: None,
    }
}

#[tokio::test(start_paused = true)]
async fn a_completed_task_is_done_once() {
    let mut book = LeaseBook::new(2, policy(), 100, Instant::now());
    let a = book.acquire(&worker("a"), Instant::now()).unwrap();
    assert_eq!((a.task, a.token, a.attempt), (TaskId(0), 101, 1));
    let b = book.acquire(&worker("b"), Instant::now()).unwrap();
    assert_eq!((b.task, b.token), (TaskId(1), 102));
    assert!(book.acquire(&worker("c"), Instant::now()).is_none());
    book.complete(a.task, a.token, Instant::now()).unwrap();
    assert_eq!(
        book.complete(a.task, a.token, Instant::now()),
        Err(Refusal::StaleLease(a.task, a.token))
    );
    assert_eq!(book.state(a.task), Some(&TaskState::Done { token: 101 }));
    assert!(!book.is_finished());
    book.complete(b.task, b.token, Instant::now()).unwrap();
    assert!(book.is_finished());
    assert_eq!(book.token_high_water(), 102);
}

#[tokio::test(start_paused = true)]
async fn heartbeats_keep_a_lease_and_silence_loses_it() {
    let mut book = LeaseBook::new(1, policy(), 0, Instant::now());
    let a = book.acquire(&worker("a"), Instant::now()).unwrap();
    // Renewed every 6 s for a minute: still held.
    for _ in 0..10 {
        advance(Duration::from_secs(6)).await;
        assert_eq!(book.heartbeat(&worker("a"), Instant::now()), 1);
        assert!(book.expire(Instant::now()).is_empty());
    }
    // Then silence: the lease lapses after its TTL, and not before.
    advance(Duration::from_secs(9)).await;
    assert!(book.expire(Instant::now()).is_empty());
    advance(Duration::from_secs(2)).await;
    assert_eq!(
        book.expire(Instant::now()),
        vec![Expiry {
            task: TaskId(0),
            token: a.token,
            worker: worker("a"),
            excused: false
        }]
    );
    assert_eq!(
        book.last_error(TaskId(0)),
        Some("lease expired: the worker stopped heartbeating")
    );
    // A heartbeat after expiry renews nothing; the late completion is refused.
    assert_eq!(book.heartbeat(&worker("a"), Instant::now()), 0);
    assert!(book.complete(a.task, a.token, Instant::now()).is_err());
    // The task is queued again after the backoff and leased with a newer token.
    assert!(book.acquire(&worker("b"), Instant::now()).is_none());
    advance(Duration::from_secs(2)).await;
    let b = book.acquire(&worker("b"), Instant::now()).unwrap();
    assert!(b.token > a.token);
    assert_eq!(b.attempt, 2);
    book.complete(b.task, b.token, Instant::now()).unwrap();
    assert!(book.is_finished());
}

#[tokio::test(start_paused = true)]
async fn a_lease_past_its_ttl_cannot_complete_even_before_expire_runs() {
    let mut book = LeaseBook::new(1, policy(), 0, Instant::now());
    let a = book.acquire(&worker("a"), Instant::now()).unwrap();
    advance(Duration::from_secs(10)).await;
    assert_eq!(
        book.complete(a.task, a.token, Instant::now()),
        Err(Refusal::StaleLease(a.task, a.token))
    );
}

#[tokio::test(start_paused = true)]
async fn failures_back_off_then_quarantine_and_the_stage_goes_on() {
    let mut book = LeaseBook::new(2, policy(), 0, Instant::now());
    let (w, b) = (worker("a"), worker("b"));
    let mut g = book.acquire(&w, Instant::now()).unwrap();
    let other = book.acquire(&w, Instant::now()).unwrap();
    book.complete(other.task, other.token, Instant::now())
        .unwrap();
    let mut waits = Vec::new();
    loop {
        assert_eq!(g.task, TaskId(0));
        let error = format!("boom {}", g.attempt);
        match book
            .fail(
                g.task,
                g.token,
                FaultKind::InvalidInput,
                &error,
                Instant::now(),
            )
            .unwrap()
        {
            FailOutcome::RetryAt(at) => {
                let wait = at - Instant::now();
                waits.push(wait);
                // Not available before its backoff.
                assert!(book.acquire(&w, Instant::now()).is_none());
                advance(wait).await;
                // Not handed back to the worker that just failed it while another asks.
                let failed_on = if g.attempt % 2 == 1 { &w } else { &b };
                let next = if g.attempt % 2 == 1 { &b } else { &w };
                assert!(book.acquire(failed_on, Instant::now()).is_none());
                g = book.acquire(next, Instant::now()).unwrap();
            }
            FailOutcome::Quarantined => break,
        }
    }
    // Backoff doubles from 2 s; the third failure quarantines with the last error.
    assert_eq!(waits, vec![Duration::from_secs(2), Duration::from_secs(4)]);
    assert_eq!(
        book.state(TaskId(0)),
        Some(&TaskState::Quarantined {
            error: "boom 3".into()
        })
    );
    assert!(book.is_finished());
    assert!(book.acquire(&w, Instant::now()).is_none());
}

#[tokio::test(start_paused = true)]
async fn a_straggler_is_leased_twice_and_the_first_completion_wins() {
    let mut p = policy();
    p.speculate_after = Some(Duration::from_secs(60));
    p.ttl = Duration::from_secs(1000);
    let mut book = LeaseBook::new(2, p, 0, Instant::now());
    let slow = book.acquire(&worker("slow"), Instant::now()).unwrap();
    let fast = book.acquire(&worker("fast"), Instant::now()).unwrap();
    book.complete(fast.task, fast.token, Instant::now())
        .unwrap();
    // Too early to speculate, and never to the holder itself.
    assert!(book.acquire(&worker("fast"), Instant::now()).is_none());
    advance(Duration::from_secs(61)).await;
    assert!(book.acquire(&worker("slow"), Instant::now()).is_none());
    let twin = book.acquire(&worker("fast"), Instant::now()).unwrap();
    assert_eq!(twin.task, slow.task);
    assert!(twin.token > slow.token);
    // Only one duplicate per task.
    assert!(book.acquire(&worker("third"), Instant::now()).is_none());
    book.complete(twin.task, twin.token, Instant::now())
        .unwrap();
    assert_eq!(
        book.complete(slow.task, slow.token, Instant::now()),
        Err(Refusal::StaleLease(slow.task, slow.token))
    );
    assert!(book.is_finished());
}

#[tokio::test(start_paused = true)]
async fn a_failing_twin_does_not_cost_an_attempt_while_the_other_runs() {
    let mut p = policy();
    p.speculate_after = Some(Duration::from_secs(5));
    let mut book = LeaseBook::new(1, p, 0, Instant::now());
    let first = book.acquire(&worker("a"), Instant::now()).unwrap();
    advance(Duration::from_secs(6)).await;
    book.heartbeat(&worker("a"), Instant::now());
    let twin = book.acquire(&worker("b"), Instant::now()).unwrap();
    book.fail(
        twin.task,
        twin.token,
        FaultKind::Internal,
        "b crashed",
        Instant::now(),
    )
    .unwrap();
    assert_eq!(book.state(first.task), Some(&TaskState::Leased));
    book.complete(first.task, first.token, Instant::now())
        .unwrap();
    assert!(book.is_finished());
}

#[tokio::test(start_paused = true)]
async fn a_released_task_is_queued_at_once_without_costing_an_attempt() {
    let mut p = policy();
    p.max_attempts = 1;
    let mut book = LeaseBook::new(1, p, 0, Instant::now());
    let first = book.acquire(&worker("a"), Instant::now()).unwrap();
    book.release(first.task, first.token, Instant::now())
        .unwrap();
    // Released, not failed: a single-attempt policy still hands it out again, now.
    let again = book.acquire(&worker("b"), Instant::now()).unwrap();
    assert_eq!((again.task, again.attempt), (first.task, 1));
    assert_eq!(
        book.release(first.task, first.token, Instant::now()),
        Err(Refusal::StaleLease(first.task, first.token))
    );
    book.complete(again.task, again.token, Instant::now())
        .unwrap();
    assert!(book.is_finished());
}

#[tokio::test(start_paused = true)]
async fn transient_faults_back_off_without_using_attempts_and_stall_the_stage_until_a_commit() {
    let mut p = policy();
    p.max_attempts = 1;
    let mut book = LeaseBook::new(2, p, 0, Instant::now());
    let started = Instant::now();
    let mut waits = Vec::new();
    for round in 0..5 {
        let g = book.acquire(&worker("a"), Instant::now()).unwrap();
        assert_eq!((g.task, g.attempt), (TaskId(0), 1), "round {round}");
        let out = book
            .fail(
                g.task,
                g.token,
                FaultKind::Transient,
                "disk full",
                Instant::now(),
            )
            .unwrap();
        let FailOutcome::RetryAt(at) = out else {
            panic!("a transient fault quarantined the task: {out:?}");
        };
        waits.push(at - Instant::now());
        // Another worker is not asked for meanwhile: the same one may take it once due.
        advance(at - Instant::now() + p.ttl).await;
    }
    // Doubling from 2 s, at most 5 s; never quarantined, though max_attempts is 1.
    let secs: Vec<u64> = waits.iter().map(Duration::as_secs).collect();
    assert_eq!(secs, vec![2, 4, 5, 5, 5]);
    assert_eq!(book.counts().quarantined, 0);
    let stall = book.stall().unwrap();
    assert_eq!((stall.since, stall.cause.as_str()), (started, "disk full"));
    // A commit is progress: the stall is over.
    let g = book.acquire(&worker("a"), Instant::now()).unwrap();
    book.complete(g.task, g.token, Instant::now()).unwrap();
    assert!(book.stall().is_none());
    // A cancelled attempt is queued again at once and costs nothing either.
    let c = book.acquire(&worker("a"), Instant::now()).unwrap();
    assert_eq!(
        book.fail(
            c.task,
            c.token,
            FaultKind::Cancelled,
            "stop",
            Instant::now()
        ),
        Ok(FailOutcome::RetryAt(Instant::now()))
    );
    let again = book.acquire(&worker("b"), Instant::now()).unwrap();
    assert_eq!((again.task, again.attempt), (c.task, 1));
    assert!(book.stall().is_none());
}

#[tokio::test(start_paused = true)]
async fn a_task_goes_to_another_worker_than_the_one_that_lost_it() {
    let mut book = LeaseBook::new(1, policy(), 0, Instant::now());
    let a = book.acquire(&worker("a"), Instant::now()).unwrap();
    advance(Duration::from_secs(11)).await;
    assert_eq!(book.expire(Instant::now()).len(), 1);
    advance(Duration::from_secs(2)).await;
    // Due again, but not for the worker that just lost it while b may ask...
    assert!(book.acquire(&worker("a"), Instant::now()).is_none());
    let b = book.acquire(&worker("b"), Instant::now()).unwrap();
    assert_eq!((b.task, b.attempt), (a.task, 2));
    book.fail(b.task, b.token, FaultKind::Internal, "boom", Instant::now())
        .unwrap();
    // ...and after a TTL with nobody else asking, the stalled one may have it after all.
    advance(Duration::from_secs(4)).await;
    assert!(book.acquire(&worker("b"), Instant::now()).is_none());
    assert!(book.acquire(&worker("a"), Instant::now()).is_some());
}

#[tokio::test(start_paused = true)]
async fn leases_that_lapse_while_the_coordinator_is_blind_cost_no_attempt() {
    let mut p = policy();
    p.max_attempts = 1;
    let mut book = LeaseBook::new(2, p, 0, Instant::now());
    // a's lease is taken at 0 s, the store is unreachable at 3 s, b's lease is taken at 5 s.
    let a = book.acquire(&worker("a"), Instant::now()).unwrap();
    advance(Duration::from_secs(3)).await;
    book.blind(Instant::now());
    advance(Duration::from_secs(2)).await;
    let b = book.acquire(&worker("b"), Instant::now()).unwrap();
    advance(Duration::from_secs(20)).await;
    let expired = book.expire(Instant::now());
    let excused: Vec<(u64, bool)> = expired.iter().map(|e| (e.token, e.excused)).collect();
    assert_eq!(excused, vec![(a.token, true), (b.token, false)]);
    // a's task is queued again at once, attempt not counted; b's used its only attempt.
    assert!(matches!(book.state(a.task), Some(TaskState::Queued { .. })));
    assert!(matches!(
        book.state(b.task),
        Some(TaskState::Quarantined { .. })
    ));
    let again = book.acquire(&worker("c"), Instant::now()).unwrap();
    assert_eq!((again.task, again.attempt), (a.task, 1));
    assert!(book.stall().is_some());
}

#[tokio::test(start_paused = true)]
async fn a_retried_completion_of_the_committing_lease_is_recognised() {
    let mut book = LeaseBook::new(1, policy(), 0, Instant::now());
    let a = book.acquire(&worker("a"), Instant::now()).unwrap();
    book.complete(a.task, a.token, Instant::now()).unwrap();
    assert!(book.committed_by(a.task, a.token));
    assert!(!book.committed_by(a.task, a.token + 1));
}
