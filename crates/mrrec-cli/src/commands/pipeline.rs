//! `mrrec run --stage X` and `mrrec run --pipeline F`: says what runs,
//! runs it until SIGINT/SIGTERM ([`mrrec_service::pipeline`]) and says how
//! each stage ended; exits non-zero if any failed.

use anyhow::Result;
use mrrec_config::{Config, Pipeline};
use mrrec_stream::Shutdown;

/// Runs `pipeline` until a signal (or a stage failure).
pub async fn run(config: &Config, pipeline: &Pipeline) -> Result<()> {
    mrrec_service::start_metrics(config)?;
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    eprintln!(
        "pipeline {}: {}",
        pipeline.name,
        if pipeline.description.is_empty() {
            "(no description)"
        } else {
            &pipeline.description
        }
    );
    for entry in pipeline.ordered() {
        let config = pipeline.apply(config, entry);
        let kind = entry.stage;
        let prefix = &config.topics.prefix;
        let names = |topics: &[&str]| {
            topics
                .iter()
                .map(|t| format!("{prefix}{t}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        eprintln!(
            "  {kind}: group {}, reads {}{}",
            config.group_id(kind.as_str()),
            names(kind.reads()),
            if kind.writes().is_empty() {
                String::new()
            } else {
                format!(", writes {}", names(kind.writes()))
            }
        );
    }
    let stopped = mrrec_service::pipeline::run(config, pipeline, shutdown).await?;
    let mut failure = None;
    for mrrec_service::pipeline::Stopped { stage, outcome } in stopped {
        match outcome {
            Ok(report) => eprintln!(
                "{stage} stopped: {} processed, {} dead-lettered, {} skipped",
                report.processed, report.dead_lettered, report.skipped
            ),
            Err(e) => {
                eprintln!("{stage} failed: {e:#}");
                failure.get_or_insert(anyhow::anyhow!("the {stage} stage failed: {e:#}"));
            }
        }
    }
    failure.map_or(Ok(()), Err)
}
