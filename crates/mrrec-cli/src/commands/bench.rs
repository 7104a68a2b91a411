//! `mrrec bench …`: runs a bench of `mrrec_inprocess::bench` (or
//! `mrrec_llm::bench` for `--llm-only`) and prints its summary on stderr
//! and, as the last stdout line, its JSON object (DESIGN §12).

use anyhow::Result;
use mrrec_config::Config;
use mrrec_inprocess::bench::{self, Measured};
use std::path::Path;
use std::time::Duration;

fn print(measured: &Measured) {
    eprintln!("{}", measured.summary);
    println!("{}", measured.figures);
}

pub async fn ingest(config: &Config, events: usize, seed: u64) -> Result<()> {
    print(&bench::ingest::run(config, events, seed).await?);
    Ok(())
}

pub async fn soak(config: &Config, duration: Duration, users: usize, seed: u64) -> Result<()> {
    print(&bench::soak::run(config, duration, users, seed).await?);
    Ok(())
}

pub async fn reopen(events: usize, seed: u64) -> Result<()> {
    print(&bench::reopen::run(events, seed).await?);
    Ok(())
}

pub async fn recommend(config: &Config, request: bench::recommend::RecommendBench) -> Result<()> {
    print(&bench::recommend::run(config, request).await?);
    Ok(())
}

pub fn train(config: &Config, trajectories: usize, seed: u64) -> Result<()> {
    print(&bench::train::run(config, trajectories, seed)?);
    Ok(())
}

/// The learn bench prints its rows as a table before the JSON line.
pub async fn learn(config: &Config, learn: bench::learn::LearnBench<'_>) -> Result<()> {
    let measured = bench::learn::run(config, learn).await?;
    print!("{}", bench::learn::table(&measured.figures));
    print(&measured);
    Ok(())
}

pub async fn llm_only(config: &Config, calls: usize) -> Result<()> {
    let (dir, _tmp) = bench::model_dir_for(config, &[])?;
    let progress = indicatif::ProgressBar::new(calls as u64);
    let overhead = mrrec_llm::bench::wrapper_overhead(&dir, calls, || progress.inc(1)).await?;
    progress.finish_and_clear();
    eprintln!("{overhead} on {}", dir.display());
    println!("{}", serde_json::to_string(&overhead)?);
    Ok(())
}

/// Builds a memory index of `entries` synthetic entries (100 per user), then
/// times `queries` searches of random users for one or two words.
pub fn retrieve(entries: usize, queries: usize, seed: u64) -> Result<()> {
    let figures = bench::retrieve(entries, queries, seed)?;
    eprintln!(
        "indexed {entries} entries in {:.1}s; {queries} searches: p50 {:.3} ms, p99 {:.3} ms",
        figures.build_s, figures.p50_ms, figures.p99_ms
    );
    println!("{}", serde_json::to_string(&figures)?);
    Ok(())
}

/// `bench learn` needs the MovieLens-100K directory.
pub fn learn_data_dir(data_dir: Option<&Path>) -> Result<&Path> {
    data_dir.ok_or_else(|| {
        anyhow::anyhow!("`bench learn` needs --data-dir (the MovieLens-100K directory)")
    })
}
