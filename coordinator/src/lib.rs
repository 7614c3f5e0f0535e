//! The coordinator: command-line front ends, run planning and state (to come).

pub mod corpus_cmd;
