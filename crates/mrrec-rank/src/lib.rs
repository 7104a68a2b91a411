//! The fused ranking of the catalog (DESIGN §4), below every stage that
//! ranks: the recommend stage answers a request with it, and the reward
//! stage ranks the catalog with a trajectory's answer to find where the
//! request's target lands (DESIGN §5). Nothing here runs an LLM, so a
//! stage that only ranks does not link one.
//!
//! - [`fusion`]: the signals (BM25 of the profile, the categories it names,
//!   co-occurrence with seed items, popularity), each put on one scale and
//!   summed with [`FusionWeights`]; ties go to the smaller item id.
//! - [`Ranker`]: reads those signals for one user and one answer
//!   ([`Cited`]) from memory and the item index.
//! - [`catalog`]: the catalog-wide facts (categories, popularity) a ranker
//!   re-reads once per refresh interval.

pub mod catalog;
pub mod fusion;
mod ranker;

pub use fusion::{fuse, FusionWeights, Scaling, Signals};
pub use ranker::{named_categories, query_categories, Cited, Ranker};

use mrrec_config::Config;
use std::time::Duration;

/// What the ranker reads from the configuration (`recommend.*` and how
/// distill counts co-occurrence).
#[derive(Debug, Clone)]
pub struct RankSettings {
    /// Items BM25 and co-occurrence each put forward before fusion.
    pub candidates: usize,
    /// Recent positive items that seed co-occurrence when an answer cites
    /// no memory with items.
    pub recent_items: usize,
    pub weights: FusionWeights,
    /// How co-occurrence counts become the collaborative signal.
    pub collaborative: mrrec_config::CollaborativeScore,
    /// How distill counts co-occurrence (`distill.co_occurrence_*`): what
    /// a stored outcome added, which the reward's ranking takes back out.
    pub counting: mrrec_memory::CoOccurrence,
    /// How long catalog facts are reused before they are read again.
    pub refresh: Duration,
}

impl RankSettings {
    pub fn from_config(config: &Config) -> Self {
        let r = &config.recommend;
        Self {
            candidates: r.candidates as usize,
            recent_items: r.recent_items as usize,
            weights: FusionWeights {
                bm25: r.weight_bm25,
                category: r.weight_category,
                collaborative: r.weight_collaborative,
                popularity: r.weight_popularity,
                scaling: match r.fusion {
                    mrrec_config::Fusion::Max => Scaling::Max,
                    mrrec_config::Fusion::Zscore => Scaling::ZScore,
                },
            },
            collaborative: r.collaborative,
            counting: mrrec_memory::CoOccurrence {
                window: config.distill.co_occurrence_window,
                both_ways: config.distill.co_occurrence_both_ways,
            },
            refresh: Duration::from_millis(r.refresh_ms),
        }
    }
}
