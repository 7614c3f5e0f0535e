//! One conformance suite for every `StateStore`: the embedded store on a temporary directory
//! and etcd (Debian's `etcd-server`, started here on loopback ports with a temporary data
//! directory). Without an `etcd` binary the etcd tests print why they skip; CI sets
//! `AUTOMALDESC_REQUIRE_ETCD=1`, which makes a missing etcd a failure.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use automaldesc_coordinator::state::{EmbeddedStore, Expect, StateError, StateStore, Versioned};

mod support;
use support::etcd::Etcd;

fn conflict_found(e: StateError) -> Option<u64> {
    match e {
        StateError::Conflict { found, .. } => found,
        other => panic!("expected a conflict, got {other}"),
    }
}

/// The behaviour every store must have.
async fn conformance(store: Arc<dyn StateStore>) {
    // Absent keys, create-if-absent.
    assert_eq!(store.get("runs/r1").await.unwrap(), None);
    let r1 = store
        .put("runs/r1", b"one".to_vec(), Expect::Absent)
        .await
        .unwrap();
    assert_eq!(
        store.get("runs/r1").await.unwrap(),
        Some(Versioned {
            value: b"one".to_vec(),
            revision: r1
        })
    );
    let e = store
        .put("runs/r1", b"x".to_vec(), Expect::Absent)
        .await
        .unwrap_err();
    assert_eq!(conflict_found(e), Some(r1));

    // Compare-and-swap on the revision read.
    let r2 = store
        .put("runs/r1", b"two".to_vec(), Expect::Revision(r1))
        .await
        .unwrap();
    assert!(r2 > r1);
    let e = store
        .put("runs/r1", b"stale".to_vec(), Expect::Revision(r1))
        .await
        .unwrap_err();
    assert_eq!(conflict_found(e), Some(r2));
    let e = store
        .put("runs/nope", b"x".to_vec(), Expect::Revision(r1))
        .await
        .unwrap_err();
    assert_eq!(conflict_found(e), None);
    let r3 = store
        .put("runs/r1", b"three".to_vec(), Expect::Any)
        .await
        .unwrap();
    assert!(r3 > r2);
    assert_eq!(store.get("runs/r1").await.unwrap().unwrap().value, b"three");

    // Revisions grow across keys too.
    let other = store
        .put("runs/r2", Vec::new(), Expect::Absent)
        .await
        .unwrap();
    assert!(other > r3);
    assert_eq!(store.get("runs/r2").await.unwrap().unwrap().value, b"");

    // Conditional delete.
    let e = store
        .delete("runs/r1", Expect::Revision(r2))
        .await
        .unwrap_err();
    assert_eq!(conflict_found(e), Some(r3));
    store.delete("runs/r1", Expect::Revision(r3)).await.unwrap();
    assert_eq!(store.get("runs/r1").await.unwrap(), None);
    store.delete("runs/r1", Expect::Any).await.unwrap();
    assert!(matches!(
        store.delete("runs/r2", Expect::Absent).await,
        Err(StateError::InvalidInput(_))
    ));
    // A key recreated after a delete starts afresh, at a newer revision.
    let again = store
        .put("runs/r1", b"new".to_vec(), Expect::Absent)
        .await
        .unwrap();
    assert!(again > other);

    // Prefix listing, in key order, nothing outside the prefix.
    for k in ["tasks/b", "tasks/a", "tasks/c/1", "tasksx", "task"] {
        store
            .put(k, k.as_bytes().to_vec(), Expect::Absent)
            .await
            .unwrap();
    }
    let listed: Vec<String> = store
        .list("tasks/")
        .await
        .unwrap()
        .into_iter()
        .map(|(k, v)| {
            assert_eq!(v.value, k.as_bytes());
            k
        })
        .collect();
    assert_eq!(listed, vec!["tasks/a", "tasks/b", "tasks/c/1"]);
    assert!(store.list("nothing/").await.unwrap().is_empty());

    // Bad keys are refused with a clear error.
    assert!(matches!(
        store.put("", b"x".to_vec(), Expect::Any).await,
        Err(StateError::InvalidInput(_))
    ));

    // Racing read-modify-write loops: every increment lands exactly once.
    store
        .put("counter", b"0".to_vec(), Expect::Absent)
        .await
        .unwrap();
    let mut handles = Vec::new();
    for _ in 0..8 {
        let s = Arc::clone(&store);
        handles.push(tokio::spawn(async move {
            let mut conflicts = 0;
            for _ in 0..10 {
                loop {
                    let cur = s.get("counter").await.unwrap().unwrap();
                    let n: u64 = std::str::from_utf8(&cur.value).unwrap().parse().unwrap();
                    let next = (n + 1).to_string().into_bytes();
                    match s.put("counter", next, Expect::Revision(cur.revision)).await {
                        Ok(_) => break,
                        Err(StateError::Conflict { .. }) => conflicts += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for h in handles {
        conflicts += h.await.unwrap();
    }
    assert_eq!(store.get("counter").await.unwrap().unwrap().value, b"80");
    eprintln!("80 racing increments, {conflicts} retried after a conflict");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_store_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    conformance(Arc::new(EmbeddedStore::open(dir.path()).unwrap())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_store_passes_the_conformance_suite() {
    let Some(etcd) = Etcd::start() else { return };
    conformance(Arc::new(etcd.store("/conformance/").await)).await;
    // The namespace isolates deployments sharing one etcd.
    let other = etcd.store("/other/").await;
    assert!(other.list("").await.unwrap().is_empty());
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join("state.log")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_survives_a_restart_and_a_write_cut_short() {
    let dir = tempfile::tempdir().unwrap();
    let (r_a, r_b) = {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.put("a", b"1".to_vec(), Expect::Absent).await.unwrap();
        let b = store.put("b", b"2".to_vec(), Expect::Absent).await.unwrap();
        store.delete("a", Expect::Any).await.unwrap();
        let a = store.put("a", b"3".to_vec(), Expect::Absent).await.unwrap();
        (a, b)
    };
    // A crash in the middle of appending a record leaves a partial record at the end.
    let good = std::fs::metadata(log_path(dir.path())).unwrap().len();
    let mut bytes = std::fs::read(log_path(dir.path())).unwrap();
    bytes.extend_from_slice(&[1, 9, 9, 9, 0, 0, 0, 0, 0, 5, 0]);
    std::fs::write(log_path(dir.path()), &bytes).unwrap();

    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(std::fs::metadata(log_path(dir.path())).unwrap().len(), good);
    assert_eq!(
        store.get("a").await.unwrap(),
        Some(Versioned {
            value: b"3".to_vec(),
            revision: r_a
        })
    );
    assert_eq!(store.get("b").await.unwrap().unwrap().revision, r_b);
    // The revision counter continues past everything written before the restart.
    let next = store.put("c", Vec::new(), Expect::Absent).await.unwrap();
    assert!(next > r_a.max(r_b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_at_a_time_owns_an_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let first = EmbeddedStore::open(dir.path()).unwrap();
    match EmbeddedStore::open(dir.path()) {
        Err(StateError::Unavailable(m)) => assert!(m.contains("in use"), "{m}"),
        other => panic!(
            "a second owner must be refused, got {:?}",
            other.map(|_| ())
        ),
    }
    drop(first);
    EmbeddedStore::open(dir.path()).expect("free again once the owner is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_compacts_its_log_and_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let value = vec![7u8; 64 << 10];
    let last = {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store
            .put("keep", b"k".to_vec(), Expect::Absent)
            .await
            .unwrap();
        let mut last = 0;
        for _ in 0..64 {
            last = store.put("big", value.clone(), Expect::Any).await.unwrap();
        }
        last
    };
    // 64 writes of 64 KiB = 4 MiB appended; after compaction far less remains.
    let size = std::fs::metadata(log_path(dir.path())).unwrap().len();
    assert!(size < 2 << 20, "log is {size} bytes");
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(
        store.get("big").await.unwrap(),
        Some(Versioned {
            value,
            revision: last
        })
    );
    assert_eq!(store.get("keep").await.unwrap().unwrap().value, b"k");
    assert!(store.put("new", Vec::new(), Expect::Absent).await.unwrap() > last);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_store_is_unavailable_while_etcd_is_down_and_recovers_with_its_data() {
    let Some(mut etcd) = Etcd::start() else {
        return;
    };
    let store = etcd.store("/restart/").await;
    let rev = store
        .put("runs/r1", b"kept".to_vec(), Expect::Absent)
        .await
        .unwrap();
    etcd.stop();
    let err = store.get("runs/r1").await.unwrap_err();
    assert!(matches!(err, StateError::Unavailable(_)), "{err}");
    etcd.spawn();
    let deadline = Instant::now() + Duration::from_secs(30);
    let got = loop {
        match store.get("runs/r1").await {
            Ok(v) => break v,
            Err(StateError::Unavailable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(
        got,
        Some(Versioned {
            value: b"kept".to_vec(),
            revision: rev
        })
    );
    let e = store
        .put("runs/r1", b"x".to_vec(), Expect::Absent)
        .await
        .unwrap_err();
    assert_eq!(conflict_found(e), Some(rev));
}
