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
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
