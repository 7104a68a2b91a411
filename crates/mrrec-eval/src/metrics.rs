//! Metrics of one target per request under a full ranking.

use serde::Serialize;
use std::cmp::Ordering;
use std::collections::HashMap;

/// DESIGN §11's tie order: numeric ids by value, others as text.
pub fn id_order(a: &str, b: &str) -> Ordering {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => a.cmp(b),
    }
}

/// 1-based rank of `target` among `candidates` under `scores` (missing = 0),
/// higher first, ties by item id ascending. `None` if the target is not a
/// candidate.
pub fn rank_of(scores: &HashMap<&str, f64>, candidates: &[&str], target: &str) -> Option<usize> {
    if !candidates.contains(&target) {
        return None;
    }
    let score = |id: &str| {
        scores
            .get(id)
            .copied()
            .filter(|s| s.is_finite())
            .unwrap_or(0.0)
    };
    let t = score(target);
    let ahead = candidates
        .iter()
        .filter(|c| **c != target)
        .filter(|c| {
            let s = score(c);
            s > t || (s == t && id_order(c, target) == Ordering::Less)
        })
        .count();
    Some(ahead + 1)
}

/// Sums of the four metrics over requests.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Metrics {
    pub requests: usize,
    pub recall10: f64,
    pub ndcg10: f64,
    pub recall100: f64,
    pub ndcg100: f64,
}

impl Metrics {
    /// Adds one request whose target ranked `rank` (`None`: not ranked).
    pub fn add(&mut self, rank: Option<usize>) {
        self.requests += 1;
        if let Some(r) = rank {
            let gain = 1.0 / ((r as f64) + 1.0).log2();
            if r <= 10 {
                self.recall10 += 1.0;
                self.ndcg10 += gain;
            }
            if r <= 100 {
                self.recall100 += 1.0;
                self.ndcg100 += gain;
            }
        }
    }

    /// The means, as a named row.
    pub fn row(&self, name: &str) -> Row {
        let n = self.requests.max(1) as f64;
        Row {
            name: name.to_owned(),
            recall_at_10: self.recall10 / n,
            ndcg_at_10: self.ndcg10 / n,
            recall_at_100: self.recall100 / n,
            ndcg_at_100: self.ndcg100 / n,
            vs_rule: None,
        }
    }
}

/// NDCG@10 of one request whose target ranked `rank`.
pub fn ndcg_at_10(rank: Option<usize>) -> f64 {
    match rank {
        Some(r) if r <= 10 => 1.0 / ((r as f64) + 1.0).log2(),
        _ => 0.0,
    }
}

/// A mean and its 95 % bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interval {
    pub mean: f64,
    pub lo: f64,
    pub hi: f64,
}

/// Resamples of a bootstrap (DESIGN §11: 1,000, seeded).
pub const RESAMPLES: usize = 1000;
/// The bootstrap's seed: every run of a report resamples the same users.
pub const BOOTSTRAP_SEED: u64 = 2026;

/// The mean of `values` and its 95 % percentile bootstrap interval over
/// `resamples` resamples with replacement, drawn from `seed`. For a paired
/// comparison pass the per-user differences (DESIGN §11's `vs_rule`).
pub fn bootstrap(values: &[f64], resamples: usize, seed: u64) -> Interval {
    let n = values.len();
    if n == 0 {
        return Interval {
            mean: f64::NAN,
            lo: f64::NAN,
            hi: f64::NAN,
        };
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let mut rng = SplitMix64(seed);
    let mut means: Vec<f64> = (0..resamples.max(1))
        .map(|_| {
            (0..n)
                .map(|_| values[(rng.next() % n as u64) as usize])
                .sum::<f64>()
                / n as f64
        })
        .collect();
    means.sort_by(f64::total_cmp);
    let at = |q: f64| means[((q * means.len() as f64) as usize).min(means.len() - 1)];
    Interval {
        mean,
        lo: at(0.025),
        hi: at(0.975),
    }
}

/// A small seeded generator (SplitMix64): the same seed gives the same
/// resamples on every machine.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A row's NDCG@10 against the `rule` row's on the same users (DESIGN §11).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct VsRule {
    /// Mean over users of (this row's NDCG@10 − rule's).
    #[serde(rename = "ndcg@10_diff")]
    pub diff: f64,
    pub lo: f64,
    pub hi: f64,
}

impl VsRule {
    /// From per-user differences.
    pub fn from_diffs(diffs: &[f64]) -> Self {
        let i = bootstrap(diffs, RESAMPLES, BOOTSTRAP_SEED);
        Self {
            diff: i.mean,
            lo: i.lo,
            hi: i.hi,
        }
    }

    /// Whether the interval lies above 0: the policy earns its place.
    pub fn above_zero(&self) -> bool {
        self.lo > 0.0
    }
}

/// One row of the report (DESIGN §12's keys).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub name: String,
    #[serde(rename = "recall@10")]
    pub recall_at_10: f64,
    #[serde(rename = "ndcg@10")]
    pub ndcg_at_10: f64,
    #[serde(rename = "recall@100")]
    pub recall_at_100: f64,
    #[serde(rename = "ndcg@100")]
    pub ndcg_at_100: f64,
    /// Pipeline rows: against the `rule` row (DESIGN §11, §12).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vs_rule: Option<VsRule>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bootstrap_is_seeded_and_brackets_the_mean() {
        let diffs: Vec<f64> = (0..200).map(|i| f64::from(i % 7) / 10.0 - 0.2).collect();
        let a = bootstrap(&diffs, RESAMPLES, BOOTSTRAP_SEED);
        let b = bootstrap(&diffs, RESAMPLES, BOOTSTRAP_SEED);
        assert_eq!(a, b, "same seed, same interval");
        assert!(a.lo < a.mean && a.mean < a.hi, "{a:?}");
        let mean = diffs.iter().sum::<f64>() / diffs.len() as f64;
        assert!((a.mean - mean).abs() < 1e-12);
        // A constant difference has no spread; zeros are not above zero.
        let flat = VsRule::from_diffs(&[0.25; 50]);
        assert_eq!((flat.lo, flat.hi), (0.25, 0.25));
        assert!(flat.above_zero());
        assert!(!VsRule::from_diffs(&[0.0; 50]).above_zero());
        // Noise around zero gives an interval that holds zero.
        let noise: Vec<f64> = (0..300)
            .map(|i| if i % 2 == 0 { 0.3 } else { -0.3 })
            .collect();
        let v = VsRule::from_diffs(&noise);
        assert!(v.lo < 0.0 && v.hi > 0.0, "{v:?}");
        assert!(bootstrap(&[], 10, 1).mean.is_nan());
        assert_eq!(ndcg_at_10(Some(1)), 1.0);
        assert_eq!(ndcg_at_10(Some(11)), 0.0);
        assert_eq!(ndcg_at_10(None), 0.0);
    }

    #[test]
    fn ranks_break_ties_by_numeric_id_and_metrics_follow() {
        let scores: HashMap<&str, f64> = [("10", 1.0), ("2", 1.0), ("3", 2.0)].into();
        let candidates = ["2", "3", "10", "11"];
        assert_eq!(rank_of(&scores, &candidates, "3"), Some(1));
        assert_eq!(rank_of(&scores, &candidates, "2"), Some(2));
        assert_eq!(rank_of(&scores, &candidates, "10"), Some(3));
        assert_eq!(rank_of(&scores, &candidates, "11"), Some(4));
        assert_eq!(rank_of(&scores, &candidates, "99"), None);
        let mut m = Metrics::default();
        m.add(Some(1));
        m.add(Some(3));
        m.add(Some(50));
        m.add(None);
        let row = m.row("x");
        assert!((row.recall_at_10 - 0.5).abs() < 1e-12);
        assert!((row.recall_at_100 - 0.75).abs() < 1e-12);
        let ndcg10 = (1.0 + 1.0 / 4f64.log2()) / 4.0;
        assert!((row.ndcg_at_10 - ndcg10).abs() < 1e-12);
        assert!((row.ndcg_at_100 - (ndcg10 + 1.0 / 51f64.log2() / 4.0)).abs() < 1e-12);
    }
}
