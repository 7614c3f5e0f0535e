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
    assert_eq!(book.expire(Instant::now()), vec![(TaskId(0), a.token)]);
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
    let w = worker("a");
    let mut g = book.acquire(&w, Instant::now()).unwrap();
    let other = book.acquire(&w, Instant::now()).unwrap();
    book.complete(other.task, other.token, Instant::now())
        .unwrap();
    let mut waits = Vec::new();
    loop {
        assert_eq!(g.task, TaskId(0));
        let error = format!("boom {}", g.attempt);
        match book.fail(g.task, g.token, &error, Instant::now()).unwrap() {
            FailOutcome::RetryAt(at) => {
                let wait = at - Instant::now();
                waits.push(wait);
                // Not available before its backoff.
                assert!(book.acquire(&w, Instant::now()).is_none());
                advance(wait).await;
                g = book.acquire(&w, Instant::now()).unwrap();
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
    book.fail(twin.task, twin.token, "b crashed", Instant::now())
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
