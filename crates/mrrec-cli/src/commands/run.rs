//! `mrrec run --stage …`: one stage until SIGINT/SIGTERM, as a pipeline of
//! one (`all`: every stage in this process, see [`super::pipeline`]).

use crate::cli::StageName;
use anyhow::Result;
use mrrec_config::pipeline::{all_stages, one_stage};
use mrrec_config::{Config, StageKind};

pub async fn stage(config: &Config, stage: StageName) -> Result<()> {
    let pipeline = match stage {
        StageName::Distill => one_stage(StageKind::Distill),
        StageName::Recommend => one_stage(StageKind::Recommend),
        StageName::Reward => one_stage(StageKind::Reward),
        StageName::Train => one_stage(StageKind::Train),
        StageName::All => all_stages(),
    };
    super::pipeline::run(config, &pipeline).await
}
