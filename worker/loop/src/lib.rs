//! The self-training loop: its config, the stages it becomes, and their products.
//!
//! - `config`: the loop's TOML config (`LoopConfig`: keys, defaults, checks) and `spec`,
//!   which expands it into a run spec of typed stage configs.
//! - `stages`: the stage executors (train, generate, judge, judge-train, filter,
//!   aggregate, report), each with its typed config; `stages::defaults` holds the one value
//!   of each default, `stages::catalog` checks a run's stage configs at submit.
//! - `filter`: the published filter funnel (its reasons are
//!   `automaldesc_common::schema::FunnelReason`, stored as a dictionary column).
//! - `eval`: scoring answers against references (accuracies, confusion, summary BLEU /
//!   chrF / ROUGE-L, McNemar).
//! - `report` (with `report_sections`): the per-iteration report, Markdown, JSON and SVG.
//! - `release` and `dataset_card`: the exported dataset's splits, checksums and card.

pub mod config;
pub mod dataset_card;
pub mod eval;
pub mod filter;
pub mod release;
pub mod report;
pub mod report_sections;
pub mod spec;
pub mod stages;
