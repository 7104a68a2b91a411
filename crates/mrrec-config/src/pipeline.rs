//! Pipeline definitions (`pipelines/*.toml`, `mrrec run --pipeline F`):
//! which stages one process runs, with what consumer group and parallelism.
//! Parsing rejects unknown keys and checks the whole file, reporting every
//! problem at once like the configuration does.

use crate::{Config, ConfigError, ConfigIssue};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;

/// A stage a pipeline can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageKind {
    Distill,
    Recommend,
    Reward,
    Train,
}

impl StageKind {
    /// Every stage, in the order a process starts them (writers of the
    /// indexes before their readers).
    pub const ALL: [StageKind; 4] = [
        StageKind::Distill,
        StageKind::Recommend,
        StageKind::Reward,
        StageKind::Train,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StageKind::Distill => "distill",
            StageKind::Recommend => "recommend",
            StageKind::Reward => "reward",
            StageKind::Train => "train",
        }
    }

    /// The topics (without prefix) the stage consumes.
    pub fn reads(self) -> &'static [&'static str] {
        match self {
            StageKind::Distill => &["items", "events", "outcomes"],
            StageKind::Recommend => &["requests"],
            StageKind::Reward => &["trajectories", "outcomes"],
            StageKind::Train => &["rewards"],
        }
    }

    /// The topics (without prefix) the stage produces to (besides `dlq`).
    pub fn writes(self) -> &'static [&'static str] {
        match self {
            StageKind::Distill => &[],
            StageKind::Recommend => &["responses", "trajectories"],
            StageKind::Reward => &["rewards"],
            StageKind::Train => &["policy"],
        }
    }
}

impl fmt::Display for StageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One pipeline file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    /// Shown in logs and on start.
    pub name: String,
    /// What the pipeline is for.
    #[serde(default)]
    pub description: String,
    /// Consumer group ids are `{group_prefix}{stage}`; default
    /// `kafka.group_prefix`. Processes running the same stage with the same
    /// prefix share its partitions (that is how a stage scales out).
    #[serde(default)]
    pub group_prefix: Option<String>,
    /// The stages this process runs, each at most once.
    pub stages: Vec<PipelineStage>,
}

/// A stage of a pipeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineStage {
    pub stage: StageKind,
    /// Records this stage works on at once within the process — for
    /// `recommend`, requests answered concurrently (`recommend.concurrency`);
    /// for the others, the batch size (`distill.batch_max_records`,
    /// `stream.batch_max_records`). Default:
    /// the configuration's value.
    #[serde(default)]
    pub parallelism: Option<u32>,
}

/// `mrrec run --stage X` (and `mrrec train`): a pipeline of one stage.
pub fn one_stage(stage: StageKind) -> Pipeline {
    Pipeline {
        name: stage.as_str().into(),
        description: format!("the {stage} stage alone"),
        group_prefix: None,
        stages: vec![PipelineStage {
            stage,
            parallelism: None,
        }],
    }
}

/// The whole-process pipeline `mrrec run --stage all` runs.
pub fn all_stages() -> Pipeline {
    Pipeline {
        name: "all".into(),
        description: "every stage in one process".into(),
        group_prefix: None,
        stages: StageKind::ALL
            .iter()
            .map(|&stage| PipelineStage {
                stage,
                parallelism: None,
            })
            .collect(),
    }
}

impl Pipeline {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Pipeline, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            issues: vec![ConfigIssue {
                key: origin.clone(),
                message: format!("cannot read the pipeline: {e}"),
            }],
        })?;
        Self::parse(&text, &origin)
    }

    /// Parses and checks a pipeline's text (`origin` names it in errors).
    pub fn parse(text: &str, origin: &str) -> Result<Pipeline, ConfigError> {
        let pipeline: Pipeline = toml::from_str(text).map_err(|e| ConfigError {
            issues: vec![ConfigIssue {
                key: origin.to_owned(),
                message: e.to_string().trim_end().to_owned(),
            }],
        })?;
        let mut issues = Vec::new();
        let mut issue = |key: &str, message: String| {
            issues.push(ConfigIssue {
                key: format!("{origin}: {key}"),
                message,
            })
        };
        if pipeline.name.trim().is_empty() {
            issue("name", "is empty".into());
        }
        if pipeline.stages.is_empty() {
            issue("stages", "names no stage".into());
        }
        let mut seen = Vec::new();
        for (i, s) in pipeline.stages.iter().enumerate() {
            if seen.contains(&s.stage) {
                issue(
                    &format!("stages[{i}]"),
                    format!(
                        "{} appears twice (scale a stage out with more processes, or with parallelism)",
                        s.stage
                    ),
                );
            }
            seen.push(s.stage);
            if let Some(p) = s.parallelism {
                if !(1..=10_000).contains(&p) {
                    issue(
                        &format!("stages[{i}].parallelism"),
                        format!("{p} is not between 1 and 10000"),
                    );
                }
                if s.stage == StageKind::Train && p != 1 {
                    issue(
                        &format!("stages[{i}].parallelism"),
                        "the trainer runs one round at a time: it must be 1".into(),
                    );
                }
            }
        }
        if let Some(prefix) = &pipeline.group_prefix {
            if prefix.is_empty() || prefix.chars().any(char::is_whitespace) {
                issue(
                    "group_prefix",
                    format!("{prefix:?} must be non-empty, without spaces"),
                );
            }
        }
        if issues.is_empty() {
            Ok(pipeline)
        } else {
            Err(ConfigError { issues })
        }
    }

    /// The stages in start order (index writers before readers).
    pub fn ordered(&self) -> Vec<&PipelineStage> {
        let mut stages: Vec<&PipelineStage> = self.stages.iter().collect();
        stages.sort_by_key(|s| s.stage);
        stages
    }

    /// Whether this process runs `stage`.
    pub fn runs(&self, stage: StageKind) -> bool {
        self.stages.iter().any(|s| s.stage == stage)
    }

    /// `config` as this pipeline's stages see it: its group prefix and each
    /// stage's parallelism applied.
    pub fn apply(&self, config: &Config, stage: &PipelineStage) -> Config {
        let mut config = config.clone();
        if let Some(prefix) = &self.group_prefix {
            config.kafka.group_prefix = prefix.clone();
        }
        if let Some(p) = stage.parallelism {
            match stage.stage {
                StageKind::Recommend => config.recommend.concurrency = p,
                StageKind::Distill => config.distill.batch_max_records = p as usize,
                StageKind::Reward | StageKind::Train => {
                    config.stream.batch_max_records = p as usize
                }
            }
        }
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipeline_parses_and_orders_its_stages() {
        let p = Pipeline::parse(
            "name = \"learning\"\ngroup_prefix = \"team-a-\"\n[[stages]]\nstage = \"train\"\n[[stages]]\nstage = \"reward\"\nparallelism = 64\n",
            "learning.toml",
        )
        .unwrap();
        let order: Vec<StageKind> = p.ordered().iter().map(|s| s.stage).collect();
        assert_eq!(order, [StageKind::Reward, StageKind::Train]);
        assert!(p.runs(StageKind::Train) && !p.runs(StageKind::Distill));
        let config = Config::load(None).unwrap();
        let reward = p.apply(&config, &p.stages[1]);
        assert_eq!(reward.group_id("reward"), "team-a-reward");
        assert_eq!(reward.stream.batch_max_records, 64);
        assert_eq!(all_stages().stages.len(), 4);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = Pipeline::parse(
            "name = \"\"\ngroup_prefix = \"a b\"\n[[stages]]\nstage = \"train\"\nparallelism = 2\n[[stages]]\nstage = \"train\"\n[[stages]]\nstage = \"reward\"\nparallelism = 0\n",
            "bad.toml",
        )
        .unwrap_err();
        let text = err.to_string();
        for needle in [
            "bad.toml: name",
            "stages[1]",
            "appears twice",
            "must be 1",
            "stages[2].parallelism",
            "group_prefix",
        ] {
            assert!(text.contains(needle), "{needle} missing in {text}");
        }
        let err = Pipeline::parse("name = \"x\"\nstages = []\nthreads = 4\n", "u.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("threads"), "{err}");
        let err = Pipeline::parse("name = \"x\"\n[[stages]]\nstage = \"index\"\n", "s.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("index"), "{err}");
        let err = Pipeline::load(Path::new("/no/such/pipeline.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/no/such/pipeline.toml"), "{err}");
    }
}
