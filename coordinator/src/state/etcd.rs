//! The state store on etcd: every key lives under a namespace prefix (so deployments can
//! share an etcd), revisions are etcd's `mod_revision`s, and conditional writes are etcd
//! transactions comparing `mod_revision` (or `create_revision == 0` for "absent").
//!
//! Leader election: coordinators [`campaign`](EtcdStore::campaign) for one key attached to
//! an etcd lease they keep alive; whoever creates it leads until its lease lapses. The
//! leader's store is [`fenced`](EtcdStore::fenced) by that key: every write also compares
//! the key's `create_revision`, so once another coordinator has taken over, a write from
//! the old leader fails (`StateError::Fenced`) instead of landing.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
};
use tokio::sync::watch;

use super::{
    check_delete, check_key, BoxFuture, Expect, Result, StateError, StateStore, Versioned,
};

#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    namespace: String,
    /// The leader key (full) and the create revision this store's writes require of it.
    fence: Option<(String, i64)>,
}

/// This coordinator's leadership: it lasts while its etcd lease is kept alive.
pub struct Leadership {
    key: String,
    create_revision: i64,
    lease: i64,
    client: Client,
    lost: watch::Receiver<bool>,
    keeper: tokio::task::JoinHandle<()>,
}

impl Leadership {
    /// Resolves when the leadership is lost (the lease could not be kept alive).
    pub async fn lost(&self) {
        let mut rx = self.lost.clone();
        // An error means the keeper is gone, which also ends the leadership.
        let _ = rx.wait_for(|lost| *lost).await;
    }

    /// Gives the leadership up now, so a standby takes over without waiting for the TTL.
    pub async fn resign(mut self) {
        self.keeper.abort();
        if let Err(e) = self.client.lease_revoke(self.lease).await {
            tracing::warn!(error = %e, "could not revoke the leader lease; it will lapse");
        }
    }
}

fn etcd_err(e: etcd_client::Error) -> StateError {
    let unavailable = match &e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => {
            matches!(
                s.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
            ) || caused_by_transport(s)
        }
        _ => false,
    };
    if unavailable {
        StateError::Unavailable(e.to_string())
    } else {
        StateError::Internal(e.to_string())
    }
}

/// A status tonic made from a broken connection (code `Unknown`, "transport error") rather
/// than an answer from etcd.
fn caused_by_transport(s: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        if e.is::<tonic::transport::Error>() || e.is::<std::io::Error>() {
            return true;
        }
        source = e.source();
    }
    false
}

impl EtcdStore {
    /// Connects to `endpoints` (e.g. `http://10.0.0.5:2379`); keys are stored under
    /// `namespace` (e.g. `/automaldesc/`).
    pub async fn connect(endpoints: &[String], namespace: &str) -> Result<Self> {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(10))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(etcd_err)?;
        Ok(Self {
            client,
            namespace: namespace.to_string(),
            fence: None,
        })
    }

    /// Waits until this process holds the leader key `name` (under the namespace), then
    /// keeps its lease (`ttl`) alive in the background. `id` is written as the key's value
    /// so operators can see who leads.
    pub async fn campaign(&self, name: &str, id: &str, ttl: Duration) -> Result<Leadership> {
        let key = self.full(name);
        let ttl_s = ttl.as_secs().max(1) as i64;
        let mut client = self.client.clone();
        let mut announced = false;
        loop {
            let lease = client
                .lease_grant(ttl_s, None)
                .await
                .map_err(etcd_err)?
                .id();
            let txn = Txn::new()
                .when(vec![Compare::create_revision(
                    key.clone(),
                    CompareOp::Equal,
                    0,
                )])
                .and_then(vec![TxnOp::put(
                    key.clone(),
                    id,
                    Some(PutOptions::new().with_lease(lease)),
                )]);
            let resp = client.txn(txn).await.map_err(etcd_err)?;
            if resp.succeeded() {
                let create_revision = resp
                    .header()
                    .map(|h| h.revision())
                    .ok_or_else(|| StateError::Internal("etcd returned no revision".into()))?;
                let (tx, lost) = watch::channel(false);
                let keeper = tokio::spawn(keep_alive(client.clone(), lease, ttl, tx));
                tracing::info!(leader = id, key = %key, "elected leader");
                return Ok(Leadership {
                    key,
                    create_revision,
                    lease,
                    client,
                    lost,
                    keeper,
                });
            }
            // Someone else leads: give our lease back and wait for theirs to go.
            let _ = client.lease_revoke(lease).await;
            if !announced {
                let holder = client.get(key.clone(), None).await.ok().and_then(|r| {
                    r.kvs()
                        .first()
                        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
                });
                tracing::info!(leader = ?holder, "standing by");
                announced = true;
            }
            tokio::time::sleep((ttl / 4).max(Duration::from_millis(100))).await;
        }
    }

    /// This store with every write conditioned on `leadership` still holding.
    pub fn fenced(&self, leadership: &Leadership) -> Self {
        Self {
            fence: Some((leadership.key.clone(), leadership.create_revision)),
            ..self.clone()
        }
    }

    fn guarded(&self, mut compares: Vec<Compare>) -> Vec<Compare> {
        if let Some((key, rev)) = &self.fence {
            compares.push(Compare::create_revision(
                key.clone(),
                CompareOp::Equal,
                *rev,
            ));
        }
        compares
    }

    /// After a failed transaction: a lost leadership, else a conflict on `key`.
    async fn refused(&self, key: &str, expect: Expect) -> StateError {
        if let Some((fence, rev)) = &self.fence {
            let mut kv = self.client.kv_client();
            match kv.get(fence.clone(), None).await {
                Ok(r) => {
                    let current = r.kvs().first().map(|kv| kv.create_revision());
                    if current != Some(*rev) {
                        return StateError::Fenced(format!(
                            "the leader key {fence} is no longer ours"
                        ));
                    }
                }
                Err(e) => return etcd_err(e),
            }
        }
        self.conflict(key, expect).await
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.namespace)
    }

    /// The current revision of `key`, or `None`.
    async fn revision_of(&self, key: &str) -> Result<Option<u64>> {
        Ok(self.get(key).await?.map(|v| v.revision))
    }

    fn compare(&self, key: &str, expect: Expect) -> Vec<Compare> {
        let full = self.full(key);
        match expect {
            Expect::Any => Vec::new(),
            Expect::Absent => vec![Compare::create_revision(full, CompareOp::Equal, 0)],
            Expect::Revision(r) => vec![Compare::mod_revision(full, CompareOp::Equal, r as i64)],
        }
    }

    async fn conflict(&self, key: &str, expect: Expect) -> StateError {
        match self.revision_of(key).await {
            Ok(found) => StateError::Conflict {
                key: key.to_string(),
                expected: expect,
                found,
            },
            Err(e) => e,
        }
    }
}

impl StateStore for EtcdStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Versioned>>> {
        Box::pin(async move {
            check_key(key)?;
            let mut kv = self.client.kv_client();
            let resp = kv.get(self.full(key), None).await.map_err(etcd_err)?;
            Ok(resp.kvs().first().map(|kv| Versioned {
                value: kv.value().to_vec(),
                revision: kv.mod_revision() as u64,
            }))
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        expect: Expect,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            check_key(key)?;
            let txn = Txn::new()
                .when(self.guarded(self.compare(key, expect)))
                .and_then(vec![TxnOp::put(self.full(key), value, None)]);
            let mut kv = self.client.kv_client();
            let resp = kv.txn(txn).await.map_err(etcd_err)?;
            if !resp.succeeded() {
                return Err(self.refused(key, expect).await);
            }
            let revision = resp
                .op_responses()
                .into_iter()
                .find_map(|r| match r {
                    TxnOpResponse::Put(p) => p.header().map(|h| h.revision()),
                    _ => None,
                })
                .or_else(|| resp.header().map(|h| h.revision()))
                .ok_or_else(|| StateError::Internal("etcd returned no revision".into()))?;
            Ok(revision as u64)
        })
    }

    fn delete<'a>(&'a self, key: &'a str, expect: Expect) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            check_delete(key, expect)?;
            let txn = Txn::new()
                .when(self.guarded(self.compare(key, expect)))
                .and_then(vec![TxnOp::delete(self.full(key), None)]);
            let mut kv = self.client.kv_client();
            let resp = kv.txn(txn).await.map_err(etcd_err)?;
            if !resp.succeeded() {
                return Err(self.refused(key, expect).await);
            }
            Ok(())
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<(String, Versioned)>>> {
        Box::pin(async move {
            let mut kv = self.client.kv_client();
            let resp = kv
                .get(self.full(prefix), Some(GetOptions::new().with_prefix()))
                .await
                .map_err(etcd_err)?;
            let mut out = Vec::with_capacity(resp.kvs().len());
            for kv in resp.kvs() {
                let key = std::str::from_utf8(kv.key())
                    .map_err(|e| StateError::Internal(format!("non-UTF-8 key in etcd: {e}")))?;
                let key = key.strip_prefix(&self.namespace).unwrap_or(key).to_string();
                out.push((
                    key,
                    Versioned {
                        value: kv.value().to_vec(),
                        revision: kv.mod_revision() as u64,
                    },
                ));
            }
            Ok(out)
        })
    }
}

/// Keeps the leader lease alive every `ttl / 3`. The leadership is lost only when etcd
/// answers that the lease is gone. While etcd cannot be reached the renewals are retried:
/// an etcd restart keeps its leases, and if another coordinator did take over meanwhile,
/// the fence refuses this one's writes anyway.
async fn keep_alive(mut client: Client, lease: i64, ttl: Duration, lost: watch::Sender<bool>) {
    let period = (ttl / 3).max(Duration::from_millis(100));
    let mut stream = None;
    loop {
        if stream.is_none() {
            stream = client.lease_keep_alive(lease).await.ok();
        }
        if let Some((keeper, responses)) = stream.as_mut() {
            let renewed = async {
                keeper.keep_alive().await?;
                responses.message().await
            };
            match tokio::time::timeout(period, renewed).await {
                Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                Ok(Ok(Some(_))) => {
                    tracing::error!(lease, "etcd says the leader lease expired");
                    let _ = lost.send(true);
                    return;
                }
                other => {
                    tracing::warn!(lease, outcome = ?other.map(|r| r.map(|_| ())), "leader lease renewal failed; retrying");
                    stream = None;
                }
            }
        }
        tokio::time::sleep(period).await;
    }
}
