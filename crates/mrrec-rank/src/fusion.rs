//! Turning the ideal item profile into a ranked list (DESIGN §4): BM25 of the
//! profile over the catalog and the catalog categories it names, fused with
//! collaborative signals (co-occurrence with the user's recent positive
//! items) and popularity. Each signal is put on one scale ([`Scaling`]:
//! divided by its best candidate's, or standardised over the candidates),
//! then summed with the configured weights; seen items are excluded; ties go to the smaller item id
//! (DESIGN §11), so a ranking is deterministic.

use mrrec_messages::ScoredItem;
use std::collections::{HashMap, HashSet};

/// How much each signal counts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FusionWeights {
    pub bm25: f64,
    /// Items filed under a category the profile names.
    pub category: f64,
    pub collaborative: f64,
    pub popularity: f64,
    /// How the signals are put on one scale.
    pub scaling: Scaling,
}

/// Raw scores per item id, one map per signal (missing = 0).
#[derive(Debug, Clone, Default)]
pub struct Signals {
    pub bm25: HashMap<String, f64>,
    /// Per item, how many of the categories the profile names it is filed under.
    pub category: HashMap<String, f64>,
    pub collaborative: HashMap<String, f64>,
    pub popularity: HashMap<String, f64>,
}

/// `scores` divided by their best (non-finite and negative count as 0).
fn scaled(scores: &HashMap<String, f64>) -> impl Fn(&str) -> f64 + '_ {
    let value = raw(scores);
    let max = scores.keys().map(|id| value(id)).fold(0.0_f64, f64::max);
    move |id: &str| if max > 0.0 { value(id) / max } else { 0.0 }
}

/// How each signal is put on a common scale before the weighted sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scaling {
    /// Divided by its best candidate's score: [0, 1].
    #[default]
    Max,
    /// Standardised over the candidates (z-score, missing = 0), as the
    /// `hybrid` baseline does: a few outstanding candidates of one signal
    /// stay far ahead instead of being flattened to 1.
    ZScore,
}

/// A signal's value per candidate, 0 where it has none (or a non-finite
/// or negative one).
fn raw<'a>(scores: &'a HashMap<String, f64>) -> impl Fn(&str) -> f64 + 'a {
    move |id: &str| match scores.get(id) {
        Some(v) if v.is_finite() && *v > 0.0 => *v,
        _ => 0.0,
    }
}

/// `scores` standardised over `candidates` (0 for all when they are equal).
/// The candidates come sorted, so the sums (and the ranking) do not depend
/// on a hash order.
fn standardised<'a>(
    scores: &'a HashMap<String, f64>,
    candidates: &[&String],
) -> impl Fn(&str) -> f64 + 'a {
    let value = raw(scores);
    let n = candidates.len().max(1) as f64;
    let mean = candidates.iter().map(|id| value(id)).sum::<f64>() / n;
    let var = candidates
        .iter()
        .map(|id| (value(id) - mean).powi(2))
        .sum::<f64>()
        / n;
    let sd = var.sqrt();
    move |id: &str| {
        if sd > 0.0 {
            (value(id) - mean) / sd
        } else {
            0.0
        }
    }
}

/// The top `k` items by fused score, leaving out `exclude`.
pub fn fuse(
    signals: &Signals,
    weights: FusionWeights,
    exclude: &HashSet<String>,
    k: usize,
) -> Vec<ScoredItem> {
    let mut candidates: Vec<&String> = signals
        .bm25
        .keys()
        .chain(signals.category.keys())
        .chain(signals.collaborative.keys())
        .chain(signals.popularity.keys())
        .filter(|id| !exclude.contains(*id))
        .collect();
    candidates.sort();
    candidates.dedup();
    let scale = |scores| -> Box<dyn Fn(&str) -> f64 + '_> {
        match weights.scaling {
            Scaling::Max => Box::new(scaled(scores)),
            Scaling::ZScore => Box::new(standardised(scores, &candidates)),
        }
    };
    let (bm25, category, collaborative, popularity) = (
        scale(&signals.bm25),
        scale(&signals.category),
        scale(&signals.collaborative),
        scale(&signals.popularity),
    );
    let mut ranked: Vec<ScoredItem> = candidates
        .iter()
        .map(|id| ScoredItem {
            item_id: (*id).clone(),
            score: weights.bm25 * bm25(id)
                + weights.category * category(id)
                + weights.collaborative * collaborative(id)
                + weights.popularity * popularity(id),
        })
        .collect();
    ranked.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| a.item_id.cmp(&b.item_id))
    });
    ranked.truncate(k);
    ranked
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEIGHTS: FusionWeights = FusionWeights {
        bm25: 1.0,
        category: 2.0,
        collaborative: 0.5,
        popularity: 0.2,
        scaling: Scaling::Max,
    };

    fn map(pairs: &[(&str, f64)]) -> HashMap<String, f64> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    #[test]
    fn signals_are_scaled_weighted_and_seen_items_left_out() {
        let signals = Signals {
            bm25: map(&[("a", 10.0), ("b", 5.0), ("seen", 20.0)]),
            collaborative: map(&[("b", 4.0), ("c", 2.0)]),
            popularity: map(&[("a", 1.0), ("b", 1.0), ("c", 100.0), ("d", 50.0)]),
            ..Signals::default()
        };
        let exclude: HashSet<String> = ["seen".to_owned()].into();
        let ranked = fuse(&signals, WEIGHTS, &exclude, 10);
        let ids: Vec<&str> = ranked.iter().map(|s| s.item_id.as_str()).collect();
        // a: 1.0·(10/20) + 0 + 0.2·0.01; b: 0.25 + 0.5·1 + 0.002; c: 0.25 + 0.2; d: 0.1
        assert_eq!(ids, ["b", "a", "c", "d"]);
        assert!(
            (ranked[0].score - 0.752).abs() < 1e-9,
            "{}",
            ranked[0].score
        );
    }

    #[test]
    fn items_of_a_named_category_rise_by_its_weight() {
        let signals = Signals {
            bm25: map(&[("a", 10.0)]),
            // `c` is filed under both categories the profile names, `d` under one.
            category: map(&[("c", 2.0), ("d", 1.0)]),
            popularity: map(&[("a", 1.0), ("c", 1.0), ("d", 2.0)]),
            ..Signals::default()
        };
        let ranked = fuse(&signals, WEIGHTS, &HashSet::new(), 10);
        let ids: Vec<&str> = ranked.iter().map(|s| s.item_id.as_str()).collect();
        // c: 2.0·1 + 0.2·0.5; d: 2.0·0.5 + 0.2·1; a: 1.0 + 0.2·0.5
        assert_eq!(ids, ["c", "d", "a"]);
        assert!((ranked[0].score - 2.1).abs() < 1e-9, "{}", ranked[0].score);
    }

    #[test]
    fn z_scores_keep_an_outstanding_candidate_ahead() {
        // One collaborative neighbour far above the rest, against an
        // in-category indicator that many items share.
        let mut collaborative = map(&[("star", 50.0)]);
        let mut category = HashMap::new();
        for i in 0..20 {
            collaborative.insert(format!("n{i:02}"), 1.0);
            category.insert(format!("c{i:02}"), 1.0);
        }
        let signals = Signals {
            category,
            collaborative,
            ..Signals::default()
        };
        let weights = FusionWeights {
            bm25: 0.0,
            category: 1.0,
            collaborative: 1.0,
            popularity: 0.0,
            scaling: Scaling::Max,
        };
        let top = |scaling| {
            fuse(
                &signals,
                FusionWeights { scaling, ..weights },
                &HashSet::new(),
                1,
            )
        };
        // Max scaling: the star (1.0) ties with every in-category item (1.0).
        assert_eq!(top(Scaling::Max)[0].item_id, "c00");
        assert_eq!(top(Scaling::ZScore)[0].item_id, "star");
    }

    #[test]
    fn ties_go_to_the_smaller_id_and_k_is_respected() {
        let signals = Signals {
            popularity: map(&[("b", 1.0), ("a", 1.0), ("c", 1.0)]),
            ..Signals::default()
        };
        let ranked = fuse(&signals, WEIGHTS, &HashSet::new(), 2);
        let ids: Vec<&str> = ranked.iter().map(|s| s.item_id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
    }

    #[test]
    fn non_finite_and_negative_scores_count_as_nothing() {
        let signals = Signals {
            bm25: map(&[("a", f64::NAN), ("b", -1.0), ("c", 1.0)]),
            ..Signals::default()
        };
        let ranked = fuse(&signals, WEIGHTS, &HashSet::new(), 3);
        assert_eq!(ranked[0].item_id, "c");
        assert!(ranked.iter().all(|s| s.score.is_finite()));
    }
}
