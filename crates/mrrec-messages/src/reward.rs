//! `mrrec.rewards`: the reward of one trajectory (DESIGN §5), keyed by `request_id`.

use crate::{validate, Message, MessageError, Topic};
use serde::{Deserialize, Serialize};

/// The terms of DESIGN §5's reward, before weighting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RewardComponents {
    /// 1 when the completion followed the protocol, else 0.
    pub format_ok: f64,
    pub ndcg_100: f64,
    pub ndcg_1000: f64,
    /// 1 when the answer cited retrieved memory, else 0.
    pub used_memory: f64,
}

/// The reward of one logged trajectory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reward {
    pub trajectory_id: String,
    pub request_id: String,
    pub user_id: String,
    pub policy_version: u32,
    pub target_item_id: String,
    /// 1-based rank of the target under the trajectory's profile, if ranked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_rank: Option<u64>,
    pub components: RewardComponents,
    pub total: f64,
    pub ts: i64,
    /// The rewarded trajectory itself, so the trainer needs no second join.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trajectory: Option<crate::Trajectory>,
}

impl Message for Reward {
    const TOPIC: Topic = Topic::Rewards;
    const KEY_FIELD: &'static str = "request_id";

    fn validate(&self) -> Result<(), MessageError> {
        validate::id("trajectory_id", &self.trajectory_id)?;
        validate::id("request_id", &self.request_id)?;
        validate::id("user_id", &self.user_id)?;
        validate::id("target_item_id", &self.target_item_id)?;
        let c = &self.components;
        for (field, value) in [
            ("components.format_ok", c.format_ok),
            ("components.ndcg_100", c.ndcg_100),
            ("components.ndcg_1000", c.ndcg_1000),
            ("components.used_memory", c.used_memory),
            ("total", self.total),
        ] {
            validate::number(field, value)?;
        }
        if let Some(trajectory) = &self.trajectory {
            trajectory.validate()?;
            if trajectory.trajectory_id != self.trajectory_id {
                return Err(MessageError::invalid(
                    "trajectory.trajectory_id",
                    "differs from the reward's trajectory_id",
                ));
            }
        }
        validate::ts("ts", self.ts)
    }

    fn key(&self) -> Option<&str> {
        Some(&self.request_id)
    }
}
