//! `automaldesc corpus ...`: synthetic corpus generation, import and statistics.

use clap::Subcommand;

#[derive(Subcommand)]
pub enum CorpusCmd {}

pub fn run(cmd: CorpusCmd) -> anyhow::Result<()> {
    match cmd {}
}
