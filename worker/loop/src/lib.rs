//! The self-training loop, on the worker's side and in its products:
//!
//! - `stages`: the stage executors (train, generate, judge, judge-train, filter,
//!   aggregate, report), each with its typed config; `stages::defaults` holds the one value
//!   of each default, `stages::catalog` checks a run's stage configs at submit.
//! - `filter`: the published filter funnel and its reason codes.
//! - `eval`: scoring answers against references (accuracies, confusion, summary BLEU /
//!   chrF / ROUGE-L, McNemar).
//! - `report` (with `report_sections`): the per-iteration report, Markdown, JSON and SVG.
//! - `release` and `dataset_card`: the exported dataset's splits, checksums and card.

pub mod dataset_card;
pub mod eval;
pub mod filter;
pub mod release;
pub mod report;
pub mod report_sections;
pub mod stages;
