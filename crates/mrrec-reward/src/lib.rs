//! DESIGN §5's reward of one trajectory (MR.Rec Eq. 10):
//! `r = 0.1·format_ok + 5·(NDCG@100 + NDCG@1000) + 0.1·used_memory`, where
//! the NDCGs are of the request's target item in the ranking the
//! trajectory's profile produces over the catalog. One relevant item per
//! request, so the ideal DCG is 1 and NDCG@K = 1/log2(rank + 1) for a rank
//! within K, else 0. Which outcome is the target, and the weighting, live
//! here; ranking the catalog is the recommender's (the reward stage calls it).
//! [`stage`] is `mrrec run --stage reward`: the join of trajectories and
//! outcomes that produces `mrrec.rewards`.

pub mod stage;

pub use stage::{describe_metrics, open_stage, runner_settings, OpenError, RewardStage, STAGE};

use mrrec_messages::{EventKind, Outcome, Reward, RewardComponents, Trajectory};

/// Weight of the format term.
pub const FORMAT_WEIGHT: f64 = 0.1;
/// Weight of each NDCG term.
pub const NDCG_WEIGHT: f64 = 5.0;
/// Weight of the memory term.
pub const MEMORY_WEIGHT: f64 = 0.1;
/// The deepest rank the reward looks at (NDCG@1000).
pub const DEEPEST_RANK: u64 = 1000;

/// Whether `outcome` is a positive outcome that can be a request's target:
/// a click, a purchase, or a rating of at least 4.
pub fn is_positive(outcome: &Outcome) -> bool {
    let event = &outcome.event;
    event.item_id.is_some()
        && match event.kind {
            EventKind::Click | EventKind::Purchase => true,
            EventKind::Rate => event.value.is_some_and(|v| v >= 4.0),
            _ => false,
        }
}

/// NDCG@`k` of a single relevant item at 1-based `rank` (`None`: not ranked).
pub fn ndcg_at(rank: Option<u64>, k: u64) -> f64 {
    match rank {
        Some(rank) if rank >= 1 && rank <= k => 1.0 / ((rank + 1) as f64).log2(),
        _ => 0.0,
    }
}

/// The reward's terms for a trajectory whose target sits at `target_rank`.
pub fn components(
    format_ok: bool,
    used_memory: bool,
    target_rank: Option<u64>,
) -> RewardComponents {
    RewardComponents {
        format_ok: f64::from(u8::from(format_ok)),
        ndcg_100: ndcg_at(target_rank, 100),
        ndcg_1000: ndcg_at(target_rank, DEEPEST_RANK),
        used_memory: f64::from(u8::from(used_memory)),
    }
}

/// The weighted total of DESIGN §5.
pub fn total(c: &RewardComponents) -> f64 {
    FORMAT_WEIGHT * c.format_ok
        + NDCG_WEIGHT * (c.ndcg_100 + c.ndcg_1000)
        + MEMORY_WEIGHT * c.used_memory
}

/// The reward record of `trajectory`, whose request's target is `target`,
/// ranked at `target_rank` under the trajectory's profile.
pub fn reward(trajectory: &Trajectory, target: &str, target_rank: Option<u64>, ts: i64) -> Reward {
    let components = components(
        trajectory.format_ok,
        !trajectory.memory_ids.is_empty(),
        target_rank,
    );
    Reward {
        trajectory_id: trajectory.trajectory_id.clone(),
        request_id: trajectory.request_id.clone(),
        user_id: trajectory.user_id.clone(),
        policy_version: trajectory.policy_version,
        target_item_id: target.to_owned(),
        target_rank,
        total: total(&components),
        components,
        ts,
        trajectory: Some(trajectory.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mrrec_messages::Event;
    use proptest::prelude::*;

    fn outcome(kind: EventKind, item: Option<&str>, value: Option<f64>) -> Outcome {
        Outcome {
            request_id: "r1".into(),
            event: Event {
                event_id: "e1".into(),
                user_id: "u1".into(),
                kind,
                item_id: item.map(str::to_owned),
                value,
                text: None,
                attrs: None,
                ts: 1,
            },
        }
    }

    #[test]
    fn targets_are_clicks_purchases_and_ratings_of_four_or_more() {
        assert!(is_positive(&outcome(EventKind::Click, Some("i1"), None)));
        assert!(is_positive(&outcome(EventKind::Purchase, Some("i1"), None)));
        assert!(is_positive(&outcome(
            EventKind::Rate,
            Some("i1"),
            Some(4.0)
        )));
        assert!(!is_positive(&outcome(
            EventKind::Rate,
            Some("i1"),
            Some(3.5)
        )));
        assert!(!is_positive(&outcome(EventKind::Rate, Some("i1"), None)));
        assert!(!is_positive(&outcome(EventKind::View, Some("i1"), None)));
        assert!(!is_positive(&outcome(EventKind::Dismiss, Some("i1"), None)));
        assert!(!is_positive(&outcome(EventKind::Click, None, None)));
    }

    #[test]
    fn ndcg_of_one_relevant_item() {
        assert_eq!(ndcg_at(Some(1), 100), 1.0);
        assert!((ndcg_at(Some(3), 100) - 0.5).abs() < 1e-12);
        assert_eq!(ndcg_at(Some(100), 100), 1.0 / 101f64.log2());
        assert_eq!(ndcg_at(Some(101), 100), 0.0);
        assert!(ndcg_at(Some(101), 1000) > 0.0);
        assert_eq!(ndcg_at(None, 1000), 0.0);
        assert_eq!(ndcg_at(Some(0), 1000), 0.0);
    }

    #[test]
    fn the_total_weights_the_terms_as_design_says() {
        // Target first, protocol followed, memory cited: 0.1 + 5·(1 + 1) + 0.1.
        let best = components(true, true, Some(1));
        assert!((total(&best) - 10.2).abs() < 1e-12);
        // Nothing ranked, nothing followed.
        assert_eq!(total(&components(false, false, None)), 0.0);
        // Rank 3: 5·(0.5 + 0.5) = 5, plus format only.
        assert!((total(&components(true, false, Some(3))) - 5.1).abs() < 1e-12);
    }

    proptest! {
        #[test]
        fn a_better_rank_never_earns_less(a in 1u64..2000, b in 1u64..2000, f: bool, m: bool) {
            let (better, worse) = (a.min(b), a.max(b));
            let high = total(&components(f, m, Some(better)));
            let low = total(&components(f, m, Some(worse)));
            prop_assert!(high >= low);
            prop_assert!(low >= total(&components(f, m, None)));
            prop_assert!(high <= 10.2 + 1e-12);
        }
    }
}
