//! The topics of DESIGN §2 and their names under a configurable prefix.

use std::fmt;

/// One mrrec topic. Its full name is `{prefix}{suffix}` (prefix `mrrec.` by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    Items,
    Events,
    Outcomes,
    Requests,
    Responses,
    Trajectories,
    Rewards,
    Policy,
    Dlq,
}

impl Topic {
    /// Every topic, in DESIGN §2 order.
    pub const ALL: [Topic; 9] = [
        Topic::Items,
        Topic::Events,
        Topic::Outcomes,
        Topic::Requests,
        Topic::Responses,
        Topic::Trajectories,
        Topic::Rewards,
        Topic::Policy,
        Topic::Dlq,
    ];

    /// The name after the prefix.
    pub fn suffix(self) -> &'static str {
        match self {
            Topic::Items => "items",
            Topic::Events => "events",
            Topic::Outcomes => "outcomes",
            Topic::Requests => "requests",
            Topic::Responses => "responses",
            Topic::Trajectories => "trajectories",
            Topic::Rewards => "rewards",
            Topic::Policy => "policy",
            Topic::Dlq => "dlq",
        }
    }

    /// The full topic name under `prefix` (e.g. `mrrec.` → `mrrec.events`).
    pub fn name(self, prefix: &str) -> String {
        format!("{prefix}{}", self.suffix())
    }

    /// The item catalog is a changelog: only the latest record per key matters.
    pub fn is_compacted(self) -> bool {
        matches!(self, Topic::Items)
    }

    /// Policy announcements must stay totally ordered, so that topic has one partition.
    pub fn single_partition(self) -> bool {
        matches!(self, Topic::Policy)
    }

    /// The topic whose full name under `prefix` is `name`, if any.
    pub fn from_name(prefix: &str, name: &str) -> Option<Topic> {
        let suffix = name.strip_prefix(prefix)?;
        Topic::ALL.into_iter().find(|t| t.suffix() == suffix)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.suffix())
    }
}
