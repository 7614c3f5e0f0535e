//! The stage's durable records against a state store that goes down: a quarantine that
//! cannot be written is kept, retried on later ticks, and the stage does not finish (nor
//! count differently from its records) before it is written.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::*;
use crate::planner::RowGroupRange;
use crate::state::{BoxFuture, EmbeddedStore, Result as StateResult, Versioned};

/// The embedded store, whose writes fail as `Unavailable` while `down` is set.
struct Flaky {
    inner: EmbeddedStore,
    down: AtomicBool,
}

impl Flaky {
    fn refuse(&self) -> StateResult<()> {
        match self.down.load(Ordering::SeqCst) {
            true => Err(StateError::Unavailable("etcd is down (test)".into())),
            false => Ok(()),
        }
    }
}

impl StateStore for Flaky {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, StateResult<Option<Versioned>>> {
        self.inner.get(key)
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        expect: Expect,
    ) -> BoxFuture<'a, StateResult<u64>> {
        match self.refuse() {
            Err(e) => Box::pin(async move { Err(e) }),
            Ok(()) => self.inner.put(key, value, expect),
        }
    }

    fn delete<'a>(&'a self, key: &'a str, expect: Expect) -> BoxFuture<'a, StateResult<()>> {
        match self.refuse() {
            Err(e) => Box::pin(async move { Err(e) }),
            Ok(()) => self.inner.delete(key, expect),
        }
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, StateResult<Vec<(String, Versioned)>>> {
        self.inner.list(prefix)
    }
}

fn spec(tasks: u32) -> StageSpec {
    StageSpec {
        run: RunId("r".into()),
        stage: 0,
        kind: "echo".into(),
        input_root: "file:///in".into(),
        output_root: "file:///out".into(),
        config_json: "{}".into(),
        tasks: (0..tasks)
            .map(|i| TaskPlan {
                ranges: vec![RowGroupRange {
                    file: format!("part-{i}.parquet"),
                    start: 0,
                    end: 1,
                }],
                rows: 10,
                bytes: 100,
                length_class: 0,
            })
            .collect(),
    }
}

fn one_attempt() -> LeasePolicy {
    LeasePolicy {
        ttl: Duration::from_secs(10),
        max_attempts: 1,
        backoff_base: Duration::from_secs(1),
        backoff_max: Duration::from_secs(1),
        speculate_after: None,
    }
}

#[tokio::test]
async fn a_quarantine_record_that_cannot_be_written_is_retried_and_the_stage_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Flaky {
        inner: EmbeddedStore::open(dir.path()).unwrap(),
        down: AtomicBool::new(false),
    });
    let now = Instant::now();
    let mut stage = StageManager::open(spec(1), store.clone(), one_attempt(), now)
        .await
        .unwrap();
    let w = WorkerId("w".into());
    let a = stage.acquire(&w, now).await.unwrap().unwrap();

    // The task fails for good while the store is down: counted, not yet durable.
    store.down.store(true, Ordering::SeqCst);
    let failed = stage
        .fail(&w, &a.lease, FaultKind::InvalidInput, "bad footer", now)
        .await;
    assert!(matches!(
        failed,
        Err(StageError::State(StateError::Unavailable(_)))
    ));
    assert_eq!(stage.counts().quarantined, 1);
    assert_eq!(stage.totals().scripts_in_quarantined_tasks, 10);
    assert!(
        !stage.is_finished(),
        "finished before its record is durable"
    );
    assert!(stage.tick(now).await.is_err());
    assert!(stage.quarantined().await.unwrap().is_empty());
    assert_eq!(stage.unwritten_records().len(), 1);

    // The store is back: the next tick writes the record, and only then is the stage done.
    store.down.store(false, Ordering::SeqCst);
    assert!(stage.tick(now).await.unwrap().is_empty());
    assert!(stage.is_finished());
    let records = stage.quarantined().await.unwrap();
    assert_eq!(records, vec![(TaskId(0), "bad footer".to_string())]);

    // A coordinator opening the stage afresh counts exactly what the records say.
    let reopened = StageManager::open(spec(1), store, one_attempt(), now)
        .await
        .unwrap();
    assert_eq!(reopened.counts().quarantined, 1);
    assert_eq!(reopened.totals().scripts_in_quarantined_tasks, 10);
    assert!(reopened.is_finished());
}
