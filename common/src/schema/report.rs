//! Accounting datasets: how many rows each stage kept or dropped and why (the funnel), and
//! which scripts were rejected with the detail needed to audit the decision.

use super::columns::arrow_row;

/// One line of a stage's funnel: `count` rows left `stage` for `reason`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunnelRow {
    pub stage: String,
    pub reason: String,
    pub count: u64,
}

arrow_row! {
    FunnelRow { stage: String, reason: String, count: u64 }
    approx_bytes(r) => r.stage.len() + r.reason.len() + 8
}

/// One script a stage rejected, with a machine-readable reason and a human-readable detail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejectedRow {
    pub sha256: String,
    pub stage: String,
    pub reason: String,
    pub detail: String,
}

arrow_row! {
    RejectedRow { sha256: String, stage: String, reason: String, detail: String }
    approx_bytes(r) => 64 + r.stage.len() + r.reason.len() + r.detail.len()
}
