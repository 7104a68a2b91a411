//! An evaluation dataset as one timeline (DESIGN §11, §13): the catalog,
//! every event in replay order, and every request placed in that order —
//! after every event it may know about and before every event it may not.
//! From the timeline come the baselines' cases (each request's history and
//! seen set) and what the pipeline's replay sends when.
//!
//! Where a request stands:
//! - MovieLens-100K (§11): right before its target rating, in the dataset's
//!   (timestamp, item id, user id) order, so the history is every rating
//!   before the target, as §11 defines it.
//! - JSON lines (§13): after every event with a `ts` below the request's and
//!   before every event at or after it (a request and its own target share a
//!   `ts` in §14's files).

use crate::baselines::{Case, Interaction};
use mrrec_datasets::{ReadReport, Target};
use mrrec_messages::{Event, EventKind, Item, Request};
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// Why a dataset could not be evaluated at all (single bad lines are
/// skipped and reported instead, in [`EvalData::report`]).
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The dataset's files could not be read or hold nothing usable.
    #[error(transparent)]
    Dataset(#[from] mrrec_datasets::DatasetError),
    /// The requests file could not be read.
    #[error("reading {}: {source}", path.display())]
    Requests {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// No test request survived the checks.
    #[error("{path}: no test requests to score{detail}")]
    NoTestRequests { path: String, detail: String },
}

/// Which targets a request belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// RL learns from these (their targets become outcomes).
    Valid,
    /// Only ever scored.
    Test,
}

/// One request of the protocol.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalRequest {
    pub request: Request,
    pub target: String,
    pub split: Split,
    /// How many events of [`EvalData::events`] come before it.
    pub at: usize,
}

/// A dataset ready for evaluation.
#[derive(Debug, Clone)]
pub struct EvalData {
    pub name: String,
    pub items: Vec<Item>,
    /// Every event, in replay order.
    pub events: Vec<Event>,
    /// Every request, in replay order (by `at`, then `ts`, then id).
    pub requests: Vec<EvalRequest>,
    /// `genre_popularity` (MovieLens) or `category_popularity`.
    pub category_row: &'static str,
    /// Lines skipped or normalised while reading, and requests left out.
    pub report: ReadReport,
}

impl EvalData {
    /// MovieLens-100K under DESIGN §11: per user a validation and a test
    /// request (ids `v-{user}`, `t-{user}`, top 100, §11's query), each
    /// right before its target rating.
    pub fn ml100k(dir: &Path) -> Result<Self, DataError> {
        let mut dataset = mrrec_datasets::ml100k(dir)?;
        // The loader puts every profile first; in time each belongs right
        // before its user's first rating (stable: ties keep the loader's
        // (timestamp, item, user) order, profiles first).
        dataset.events.sort_by_key(|e| e.ts);
        let split = mrrec_datasets::split(&dataset);
        let genres: HashMap<&str, &[String]> = dataset
            .items
            .iter()
            .map(|i| (i.item_id.as_str(), i.categories.as_slice()))
            .collect();
        // Where each target rating stands in the event order.
        let index: HashMap<(&str, &str, i64), usize> = dataset
            .events
            .iter()
            .enumerate()
            .filter(|(_, e)| e.kind == EventKind::Rate)
            .filter_map(|(i, e)| Some(((e.user_id.as_str(), e.item_id.as_deref()?, e.ts), i)))
            .collect();
        let mut requests = Vec::new();
        for u in &split.users {
            for (split, prefix, target) in
                [(Split::Valid, "v", &u.valid), (Split::Test, "t", &u.test)]
            {
                let Some(at) = index
                    .get(&(u.user_id.as_str(), target.item_id.as_str(), target.ts))
                    .copied()
                else {
                    continue;
                };
                requests.push(EvalRequest {
                    request: ml_request(prefix, &u.user_id, target, &genres),
                    target: target.item_id.clone(),
                    split,
                    at,
                });
            }
        }
        let mut data = Self {
            name: "ml-100k".into(),
            items: dataset.items,
            events: dataset.events,
            requests,
            category_row: "genre_popularity",
            report: ReadReport::default(),
        };
        data.sort_requests();
        Ok(data)
    }

    /// DESIGN §13's JSON lines. Bad lines are skipped and reported; so are
    /// requests without a known target, a `split`, or a unique id.
    pub fn jsonl(items: &Path, events: &Path, requests: &Path) -> Result<Self, DataError> {
        let (mut dataset, mut report) = mrrec_datasets::jsonl(items, events)?;
        // Stable: events of one ts keep their file order.
        dataset.events.sort_by_key(|e| e.ts);
        let text = std::fs::read(requests).map_err(|source| DataError::Requests {
            path: requests.to_owned(),
            source,
        })?;
        let catalog: HashSet<&str> = dataset.items.iter().map(|i| i.item_id.as_str()).collect();
        let mut ids = HashSet::new();
        let mut out = Vec::new();
        for (n, line) in text.split(|b| *b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match parse_request(line, &catalog) {
                Ok(r) if !ids.insert(r.request.request_id.clone()) => report.skip(
                    requests,
                    n + 1,
                    format!(
                        "request_id {:?} repeats an earlier request",
                        r.request.request_id
                    ),
                ),
                Ok(mut r) => {
                    r.at = dataset.events.partition_point(|e| e.ts < r.request.ts);
                    report.read += 1;
                    out.push(r);
                }
                Err(reason) => report.skip(requests, n + 1, reason),
            }
        }
        if !out.iter().any(|r| r.split == Split::Test) {
            let detail = report
                .skipped
                .iter()
                .find(|s| s.file == requests.display().to_string())
                .map_or(String::new(), |s| {
                    format!(" ({} lines skipped, the first: {s})", report.skipped.len())
                });
            return Err(DataError::NoTestRequests {
                path: requests.display().to_string(),
                detail,
            });
        }
        let mut data = Self {
            name: requests.display().to_string(),
            items: dataset.items,
            events: dataset.events,
            requests: out,
            category_row: "category_popularity",
            report,
        };
        data.sort_requests();
        Ok(data)
    }

    fn sort_requests(&mut self) {
        self.requests.sort_by(|a, b| {
            (a.at, a.request.ts, &a.request.request_id).cmp(&(
                b.at,
                b.request.ts,
                &b.request.request_id,
            ))
        });
    }

    /// Requests of `split`, in replay order.
    pub fn of(&self, split: Split) -> impl Iterator<Item = &EvalRequest> {
        self.requests.iter().filter(move |r| r.split == split)
    }

    /// Every interaction of the dataset (what popularity counts, by time).
    pub fn interactions(&self) -> Vec<Interaction> {
        Interaction::from_events(&self.events)
    }

    /// The baselines' case of each request of `split`, in replay order:
    /// the user's interactions and every item they had an event about,
    /// before the request (none when the request sets `exclude_seen: false`:
    /// then, as for the pipeline, every item is a candidate).
    pub fn cases(&self, split: Split) -> Vec<Case> {
        let mut history: HashMap<&str, Vec<String>> = HashMap::new();
        let mut seen: HashMap<&str, HashSet<String>> = HashMap::new();
        let mut next = 0;
        let mut cases = Vec::new();
        for r in self.of(split) {
            while next < r.at.min(self.events.len()) {
                let e = &self.events[next];
                if let Some(item) = &e.item_id {
                    seen.entry(e.user_id.as_str())
                        .or_default()
                        .insert(item.clone());
                    if Interaction::counts(e) {
                        history
                            .entry(e.user_id.as_str())
                            .or_default()
                            .push(item.clone());
                    }
                }
                next += 1;
            }
            let user = r.request.user_id.as_str();
            cases.push(Case {
                user: user.to_owned(),
                query: r.request.query.clone().unwrap_or_default(),
                history: history.get(user).cloned().unwrap_or_default(),
                seen: if r.request.exclude_seen {
                    seen.get(user).cloned().unwrap_or_default()
                } else {
                    HashSet::new()
                },
                target: r.target.clone(),
                target_ts: r.request.ts,
            });
        }
        cases
    }

    /// Each user's interactions, oldest first, up to the user's first
    /// request of `split` (all of them for users without one): what
    /// item-kNN's co-occurrences are counted over. No target of `split` is
    /// in them (a target comes at or after its request).
    pub fn histories(&self, split: Split) -> Vec<Vec<String>> {
        let mut cut: HashMap<&str, usize> = HashMap::new();
        for r in self.of(split) {
            let at = cut.entry(r.request.user_id.as_str()).or_insert(r.at);
            *at = (*at).min(r.at);
        }
        let mut histories: HashMap<&str, Vec<String>> = HashMap::new();
        for (i, e) in self.events.iter().enumerate() {
            if !Interaction::counts(e) || cut.get(e.user_id.as_str()).is_some_and(|c| i >= *c) {
                continue;
            }
            if let Some(item) = &e.item_id {
                histories
                    .entry(e.user_id.as_str())
                    .or_default()
                    .push(item.clone());
            }
        }
        let mut users: Vec<(&str, Vec<String>)> = histories.into_iter().collect();
        users.sort_by(|a, b| a.0.cmp(b.0));
        users.into_iter().map(|(_, h)| h).collect()
    }
}

/// A MovieLens request for `target` (DESIGN §11's query; top 100).
fn ml_request(
    prefix: &str,
    user: &str,
    target: &Target,
    genres: &HashMap<&str, &[String]>,
) -> Request {
    Request {
        request_id: format!("{prefix}-{user}"),
        user_id: user.to_owned(),
        query: Some(mrrec_datasets::query_for(
            user,
            genres.get(target.item_id.as_str()).copied().unwrap_or(&[]),
        )),
        k: 100,
        exclude_seen: true,
        ts: target.ts,
    }
}

/// One line of a §13 requests file; the reason it is unusable otherwise.
fn parse_request(line: &[u8], catalog: &HashSet<&str>) -> Result<EvalRequest, String> {
    let (request, _) =
        mrrec_messages::decode_normalized::<Request>(line).map_err(|e| e.to_string())?;
    let value: serde_json::Value = serde_json::from_slice(line).map_err(|e| e.to_string())?;
    let target = value["target_item_id"]
        .as_str()
        .ok_or("no target_item_id")?
        .to_owned();
    if !catalog.contains(target.as_str()) {
        return Err(format!("target_item_id {target:?} is not in the catalog"));
    }
    let split = match value["split"].as_str() {
        Some("valid") => Split::Valid,
        Some("test") => Split::Test,
        other => {
            return Err(format!(
                "split must be \"valid\" or \"test\", not {other:?}"
            ))
        }
    };
    Ok(EvalRequest {
        request,
        target,
        split,
        at: 0,
    })
}
