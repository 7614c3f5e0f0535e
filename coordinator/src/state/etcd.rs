//! The state store on etcd: every key lives under a namespace prefix (so deployments can
//! share an etcd), revisions are etcd's `mod_revision`s, and conditional writes are etcd
//! transactions comparing `mod_revision` (or `create_revision == 0` for "absent").

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp, TxnOpResponse,
};

use super::{
    check_delete, check_key, BoxFuture, Expect, Result, StateError, StateStore, Versioned,
};

#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    namespace: String,
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
        })
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
                .when(self.compare(key, expect))
                .and_then(vec![TxnOp::put(self.full(key), value, None)]);
            let mut kv = self.client.kv_client();
            let resp = kv.txn(txn).await.map_err(etcd_err)?;
            if !resp.succeeded() {
                return Err(self.conflict(key, expect).await);
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
                .when(self.compare(key, expect))
                .and_then(vec![TxnOp::delete(self.full(key), None)]);
            let mut kv = self.client.kv_client();
            let resp = kv.txn(txn).await.map_err(etcd_err)?;
            if !resp.succeeded() {
                return Err(self.conflict(key, expect).await);
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
