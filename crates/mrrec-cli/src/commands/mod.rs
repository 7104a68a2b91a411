//! One function per command; commands whose stage is not built yet say so.

mod topics;

use crate::cli::{Cli, Command, StageName, TopicsCommand};
use anyhow::{bail, Result};
use mrrec_config::Config;

/// Loads the configuration (every problem reported at once) and runs the command.
pub async fn dispatch(cli: Cli) -> Result<()> {
    let config = Config::load(cli.config.as_deref())?;
    tracing::debug!(?config, "configuration");
    match cli.command {
        Command::Topics(TopicsCommand::Create) => topics::create(&config).await,
        Command::Run(args) => match (args.stage, args.pipeline) {
            (Some(stage), _) => not_yet(
                &format!("run --stage {}", stage_name(stage)),
                stage_issue(stage),
            ),
            (None, Some(_)) => not_yet("run --pipeline", "pipelines and scale-out (issue 9)"),
            (None, None) => bail!("give --stage or --pipeline"),
        },
        Command::Demo { .. } => not_yet("demo", "the demo and eval work (issue 7)"),
        Command::Load(_) => not_yet("load", "the memory/distill work (issue 3)"),
        Command::Memory(_) => not_yet("memory", "the memory/distill work (issue 3)"),
        Command::Recommend { .. } => not_yet("recommend", "the recommendation stage (issue 5)"),
        Command::Model(_) => not_yet("model init", "the LLM serving work (issue 4)"),
        Command::Llm(_) => not_yet("llm serve", "the LLM serving work (issue 4)"),
        Command::Train { .. } => not_yet("train", "the reward and trainer work (issue 6)"),
        Command::Eval(_) => not_yet("eval", "the demo and eval work (issue 7)"),
        Command::Bench { .. } => not_yet("bench", "the stages it measures (issues 3–6)"),
    }
}

fn stage_name(stage: StageName) -> &'static str {
    match stage {
        StageName::Distill => "distill",
        StageName::Recommend => "recommend",
        StageName::Reward => "reward",
        StageName::Train => "train",
        StageName::All => "all",
    }
}

fn stage_issue(stage: StageName) -> &'static str {
    match stage {
        StageName::Distill => "the memory/distill work (issue 3)",
        StageName::Recommend => "the recommendation stage (issue 5)",
        StageName::Reward | StageName::Train => "the reward and trainer work (issue 6)",
        StageName::All => "the stages it runs (issues 3–6)",
    }
}

fn not_yet(command: &str, arrives_with: &str) -> Result<()> {
    bail!("`mrrec {command}` is not yet available in this build: it arrives with {arrives_with}")
}
