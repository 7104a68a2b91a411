//! Datasets as mrrec messages. MovieLens-100K's licence forbids
//! redistribution: it is read from a directory the user points at, never copied
//! into the project.

use mrrec_messages::{Event, EventKind, Item, Message, MessageError};
use std::path::{Path, PathBuf};

/// Why a dataset could not be read. A bad line of a JSON-lines file is not
/// one (it is skipped and reported in [`ReadReport`]); MovieLens' fixed
/// files fail on the first bad line, which the error names.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A line (or file) that does not have MovieLens' shape: `place` is
    /// `file:line` or the file's path.
    #[error("{place}: {problem}")]
    Format { place: String, problem: String },
    /// A record that is not a valid message.
    #[error("{place}: {source}")]
    Invalid { place: String, source: MessageError },
    #[error("{}: no valid line ({skipped} skipped; the first: {first})", path.display())]
    NoValidLine {
        path: PathBuf,
        skipped: usize,
        first: String,
    },
    #[error("{}: no lines", path.display())]
    Empty { path: PathBuf },
}

type Result<T, E = DatasetError> = std::result::Result<T, E>;

fn format_error(place: impl Into<String>, problem: impl Into<String>) -> DatasetError {
    DatasetError::Format {
        place: place.into(),
        problem: problem.into(),
    }
}

fn read_error(path: &Path) -> impl FnOnce(std::io::Error) -> DatasetError {
    let path = path.to_owned();
    move |source| DatasetError::Read { path, source }
}

pub mod synthetic;

/// A dataset as messages, in the order they are produced.
pub struct Dataset {
    pub items: Vec<Item>,
    pub events: Vec<Event>,
}

/// Reads a file as ISO-8859-1 (MovieLens' encoding): each byte is one char.
fn latin1(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(read_error(path))?;
    Ok(bytes.into_iter().map(char::from).collect())
}

fn field<'a>(fields: &[&'a str], i: usize, file: &str, line: usize) -> Result<&'a str> {
    fields.get(i).copied().ok_or_else(|| {
        format_error(
            format!("{file}:{line}"),
            format!("expected at least {} fields", i + 1),
        )
    })
}

/// MovieLens-100K from its directory: items from u.item (title, genres without
/// `unknown`, year), `profile` events from u.user, then every rating of u.data
/// as a `rate` event in (timestamp, item id, user id) order.
pub fn ml100k(dir: &Path) -> Result<Dataset> {
    let genres: Vec<String> = latin1(&dir.join("u.genre"))?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split('|').next().unwrap_or_default().to_owned())
        .collect();
    if genres.len() != 19 {
        return Err(format_error(
            dir.join("u.genre").display().to_string(),
            format!("expected 19 genres, found {}", genres.len()),
        ));
    }
    let mut items = Vec::new();
    for (n, line) in latin1(&dir.join("u.item"))?.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('|').collect();
        if fields.len() != 24 {
            return Err(format_error(
                format!("u.item:{}", n + 1),
                format!("expected 24 fields, found {}", fields.len()),
            ));
        }
        let categories = genres
            .iter()
            .zip(&fields[5..])
            .filter(|(g, flag)| **flag == "1" && g.as_str() != "unknown")
            .map(|(g, _)| g.clone())
            .collect();
        let year = fields[2]
            .rsplit('-')
            .next()
            .and_then(|y| y.parse::<i64>().ok());
        let item = Item {
            item_id: fields[0].to_owned(),
            title: fields[1].to_owned(),
            categories,
            description: None,
            attrs: year
                .map(|y| serde_json::from_value(serde_json::json!({ "year": y })).expect("object")),
        };
        let mut item = item;
        item.normalize();
        item.validate().map_err(|source| DatasetError::Invalid {
            place: format!("u.item:{}", n + 1),
            source,
        })?;
        items.push(item);
    }

    let mut ratings: Vec<(i64, String, String, f64)> = Vec::new();
    for (n, line) in latin1(&dir.join("u.data"))?.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        let parse_err = || format_error(format!("u.data:{}", n + 1), "bad number");
        let user = field(&fields, 0, "u.data", n + 1)?.to_owned();
        let item = field(&fields, 1, "u.data", n + 1)?.to_owned();
        let rating: f64 = field(&fields, 2, "u.data", n + 1)?
            .parse()
            .map_err(|_| parse_err())?;
        let ts: i64 = field(&fields, 3, "u.data", n + 1)?
            .parse()
            .map_err(|_| parse_err())?;
        ratings.push((ts * 1000, item, user, rating));
    }
    let numeric = |s: &str| s.parse::<u64>().unwrap_or(u64::MAX);
    ratings.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| numeric(&a.1).cmp(&numeric(&b.1)))
            .then_with(|| numeric(&a.2).cmp(&numeric(&b.2)))
    });
    let mut first_ts: std::collections::HashMap<&str, i64> = std::collections::HashMap::new();
    for (ts, _, user, _) in &ratings {
        first_ts.entry(user.as_str()).or_insert(*ts);
    }

    let mut events = Vec::new();
    for (n, line) in latin1(&dir.join("u.user"))?.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('|').collect();
        if fields.len() != 5 {
            return Err(format_error(
                format!("u.user:{}", n + 1),
                format!("expected 5 fields, found {}", fields.len()),
            ));
        }
        let user = fields[0].to_owned();
        let age: i64 = fields[1]
            .parse()
            .map_err(|_| format_error(format!("u.user:{}", n + 1), "bad age"))?;
        let event = Event {
            event_id: format!("ml-profile-{user}"),
            kind: EventKind::Profile,
            item_id: None,
            value: None,
            text: None,
            attrs: Some(
                serde_json::from_value(serde_json::json!({
                    "age": age, "gender": fields[2], "occupation": fields[3], "zip": fields[4],
                }))
                .expect("object"),
            ),
            ts: first_ts.get(user.as_str()).copied().unwrap_or(0),
            user_id: user,
        };
        event.validate().map_err(|source| DatasetError::Invalid {
            place: format!("u.user:{}", n + 1),
            source,
        })?;
        events.push(event);
    }
    for (ts, item, user, rating) in ratings {
        events.push(Event {
            event_id: format!("ml-{user}-{item}"),
            user_id: user,
            kind: EventKind::Rate,
            item_id: Some(item),
            value: Some(rating),
            text: None,
            attrs: None,
            ts,
        });
    }
    Ok(Dataset { items, events })
}

/// What reading JSON lines met besides good lines: lines whose free text
/// was normalised (tabs, newlines → spaces) and lines skipped as broken,
/// each with its file, line number and reason.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReadReport {
    /// Lines read into messages.
    pub read: usize,
    /// Of those, lines whose text was normalised.
    pub normalized: usize,
    pub skipped: Vec<Skipped>,
}

/// One line left out.
#[derive(Debug, Clone, PartialEq)]
pub struct Skipped {
    pub file: String,
    /// 1-based.
    pub line: usize,
    pub reason: String,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.reason)
    }
}

/// Skipped lines a summary names one by one; the rest are counted.
const NAMED_SKIPS: usize = 20;

impl ReadReport {
    /// Adds `other`'s counts and skipped lines to this report.
    pub fn merge(&mut self, other: ReadReport) {
        self.read += other.read;
        self.normalized += other.normalized;
        self.skipped.extend(other.skipped);
    }

    /// Records a line left out.
    pub fn skip(&mut self, file: &Path, line: usize, reason: impl Into<String>) {
        self.skipped.push(Skipped {
            file: file.display().to_string(),
            line,
            reason: reason.into(),
        });
    }

    /// Lines for a person: each skipped line (the first 20, then a count)
    /// and one line of totals.
    pub fn summary(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .skipped
            .iter()
            .take(NAMED_SKIPS)
            .map(|s| format!("skipped {s}"))
            .collect();
        if self.skipped.len() > NAMED_SKIPS {
            lines.push(format!(
                "… and {} more skipped lines",
                self.skipped.len() - NAMED_SKIPS
            ));
        }
        lines.push(format!(
            "{} lines read, {} with tabs or newlines normalised to spaces, {} skipped",
            self.read,
            self.normalized,
            self.skipped.len()
        ));
        lines
    }
}

/// Items and events as DESIGN §2 JSON lines. Every line is validated; a
/// bad line is skipped and reported (file, line, reason), and the read goes
/// on. Only an unreadable file, or one with no good line, fails.
pub fn jsonl(items: &Path, events: &Path) -> Result<(Dataset, ReadReport)> {
    let (items, mut report) = read_jsonl(items)?;
    let (events, events_report) = read_jsonl(events)?;
    report.merge(events_report);
    Ok((Dataset { items, events }, report))
}

/// Messages of one kind from a JSON-lines file (blank lines skipped). A
/// line that does not decode is skipped and reported; free text with tabs
/// or newlines is normalised and counted. Fails only when the file cannot
/// be read or holds no good line at all.
pub fn read_jsonl<M: Message>(path: &Path) -> Result<(Vec<M>, ReadReport)> {
    let text = std::fs::read(path).map_err(read_error(path))?;
    let mut out = Vec::new();
    let mut report = ReadReport::default();
    for (n, line) in text.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match mrrec_messages::decode_normalized::<M>(line) {
            Ok((message, normalized)) => {
                out.push(message);
                report.read += 1;
                report.normalized += usize::from(normalized);
            }
            Err(e) => report.skip(path, n + 1, e.to_string()),
        }
    }
    if out.is_empty() {
        match report.skipped.first() {
            Some(first) => {
                return Err(DatasetError::NoValidLine {
                    path: path.to_owned(),
                    skipped: report.skipped.len(),
                    first: first.to_string(),
                })
            }
            None => {
                return Err(DatasetError::Empty {
                    path: path.to_owned(),
                })
            }
        }
    }
    Ok((out, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("mrrec-datasets-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn jsonl_skips_bad_lines_naming_file_line_and_reason_and_goes_on() {
        let d = dir("jsonl");
        std::fs::write(
            d.join("items.jsonl"),
            "{\"item_id\":\"i1\",\"title\":\"A\"}\n\n",
        )
        .unwrap();
        std::fs::write(
            d.join("events.jsonl"),
            "{\"event_id\":\"e1\",\"user_id\":\"u\",\"kind\":\"view\",\"item_id\":\"i1\",\"ts\":1}\n\
             {\"event_id\":\"e2\",\"user_id\":\"u\",\"kind\":\"teleport\",\"ts\":1}\n",
        )
        .unwrap();
        let (dataset, report) = jsonl(&d.join("items.jsonl"), &d.join("events.jsonl")).unwrap();
        assert_eq!((dataset.items.len(), dataset.events.len()), (1, 1));
        assert_eq!((report.read, report.skipped.len()), (2, 1));
        let skipped = report.skipped[0].to_string();
        assert!(skipped.contains("events.jsonl:2"), "{skipped}");
        assert!(skipped.contains("teleport"), "{skipped}");
        let summary = report.summary().join("\n");
        assert!(summary.contains("events.jsonl:2"), "{summary}");
        assert!(summary.contains("1 skipped"), "{summary}");

        // A title with a tab is text: normalised and counted, not refused.
        std::fs::write(
            d.join("items.jsonl"),
            "{\"item_id\":\"i1\",\"title\":\"Lab\\tcoat\"}\n{\"item_id\":\"i2\",\"title\":\"B\"}\n",
        )
        .unwrap();
        let (dataset, report) = jsonl(&d.join("items.jsonl"), &d.join("events.jsonl")).unwrap();
        assert_eq!(dataset.items[0].title, "Lab coat");
        assert_eq!(report.normalized, 1);

        // Only a file with nothing usable fails, saying why.
        std::fs::write(d.join("bad.jsonl"), "not json\n").unwrap();
        let message = format!(
            "{:#}",
            read_jsonl::<Item>(&d.join("bad.jsonl")).err().unwrap()
        );
        assert!(message.contains("bad.jsonl:1"), "{message}");
        assert!(jsonl(&d.join("missing"), &d.join("events.jsonl")).is_err());
    }

    #[test]
    fn malformed_movielens_files_are_refused_with_their_line() {
        let d = dir("ml");
        let genres: String = (0..19).map(|i| format!("g{i}|{i}\n")).collect();
        std::fs::write(d.join("u.genre"), genres).unwrap();
        std::fs::write(d.join("u.item"), "1|Toy Story (1995)|01-Jan-1995\n").unwrap();
        std::fs::write(d.join("u.data"), "").unwrap();
        std::fs::write(d.join("u.user"), "").unwrap();
        let message = format!("{:#}", ml100k(&d).err().unwrap());
        assert!(message.contains("u.item:1"), "{message}");

        let flags = ["0"; 19].join("|");
        std::fs::write(
            d.join("u.item"),
            format!("1|Toy Story (1995)|01-Jan-1995||url|{flags}\n"),
        )
        .unwrap();
        std::fs::write(d.join("u.data"), "1\t1\tfive\t881250949\n").unwrap();
        let message = format!("{:#}", ml100k(&d).err().unwrap());
        assert!(message.contains("u.data:1"), "{message}");

        std::fs::write(d.join("u.data"), "1\t1\t5\t881250949\n").unwrap();
        std::fs::write(d.join("u.user"), "1|old|M|technician|85711\n").unwrap();
        let message = format!("{:#}", ml100k(&d).err().unwrap());
        assert!(message.contains("u.user:1"), "{message}");

        std::fs::write(d.join("u.user"), "1|24|M|technician|85711\n").unwrap();
        let dataset = ml100k(&d).unwrap();
        assert_eq!((dataset.items.len(), dataset.events.len()), (1, 2));
        assert!(ml100k(&d.join("nowhere")).is_err());
    }
}

/// A request's target under DESIGN §11: an item the user rated ≥ 4.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub item_id: String,
    pub rating: f64,
    pub ts: i64,
}

/// One user's DESIGN §11 targets.
#[derive(Debug, Clone, PartialEq)]
pub struct UserTargets {
    pub user_id: String,
    /// The last item rated ≥ 4 before the test target.
    pub valid: Target,
    /// The last item rated ≥ 4.
    pub test: Target,
}

/// DESIGN §11's split: per user the test target (last rating ≥ 4) and the
/// validation target (the last rating ≥ 4 before it); the events before
/// each user's validation target are the history requests for validation
/// targets are answered on. Users without two ratings ≥ 4 have no
/// validation target and are left out of `users` (their events stay).
#[derive(Debug, Clone)]
pub struct Split {
    pub users: Vec<UserTargets>,
    /// Every non-rating event, and each user's ratings before the
    /// validation target (all of them for users without targets), in order.
    pub valid_history: Vec<Event>,
}

/// Splits `dataset` (events in time order, as [`ml100k`] gives them).
pub fn split(dataset: &Dataset) -> Split {
    use std::collections::HashMap;
    let mut positions: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, e) in dataset.events.iter().enumerate() {
        if e.kind == EventKind::Rate && e.item_id.is_some() {
            positions.entry(e.user_id.as_str()).or_default().push(i);
        }
    }
    let positive = |i: &usize| dataset.events[*i].value.is_some_and(|v| v >= 4.0);
    let target = |i: usize| {
        let e = &dataset.events[i];
        Target {
            item_id: e.item_id.clone().unwrap_or_default(),
            rating: e.value.unwrap_or_default(),
            ts: e.ts,
        }
    };
    let mut cut: HashMap<&str, usize> = HashMap::new();
    let mut users = Vec::new();
    for (user, list) in &positions {
        let Some(t) = list.iter().rposition(positive) else {
            continue;
        };
        let Some(v) = list[..t].iter().rposition(positive) else {
            continue;
        };
        cut.insert(user, list[v]);
        users.push(UserTargets {
            user_id: (*user).to_owned(),
            valid: target(list[v]),
            test: target(list[t]),
        });
    }
    let numeric = |s: &str| s.parse::<u64>().unwrap_or(u64::MAX);
    users.sort_by(|a, b| {
        numeric(&a.user_id)
            .cmp(&numeric(&b.user_id))
            .then_with(|| a.user_id.cmp(&b.user_id))
    });
    let valid_history = dataset
        .events
        .iter()
        .enumerate()
        .filter(|(i, e)| {
            e.kind != EventKind::Rate || cut.get(e.user_id.as_str()).is_none_or(|c| i < c)
        })
        .map(|(_, e)| e.clone())
        .collect();
    Split {
        users,
        valid_history,
    }
}

/// DESIGN §11's query for `user_id` whose target has `genres` (in u.genre
/// order, without `unknown`).
pub fn query_for(user_id: &str, genres: &[String]) -> String {
    const TEMPLATES: [&str; 4] = [
        "Looking for a {g} movie",
        "Any good {g} films to watch tonight?",
        "I'm in the mood for something {g}",
        "Recommend me a {g} movie please",
    ];
    let n: usize = user_id.parse().unwrap_or(0);
    let genre = if genres.is_empty() {
        "good".to_owned()
    } else {
        genres[n % genres.len()].to_lowercase()
    };
    TEMPLATES[n % 4].replace("{g}", &genre)
}

#[cfg(test)]
mod split_tests {
    use super::*;

    fn rate(user: &str, item: &str, value: f64, ts: i64) -> Event {
        Event {
            event_id: format!("{user}-{item}"),
            user_id: user.into(),
            kind: EventKind::Rate,
            item_id: Some(item.into()),
            value: Some(value),
            text: None,
            attrs: None,
            ts,
        }
    }

    #[test]
    fn targets_are_the_last_two_positive_ratings_and_history_stops_before_the_first() {
        let dataset = Dataset {
            items: Vec::new(),
            events: vec![
                rate("1", "a", 5.0, 1),
                rate("2", "a", 4.0, 1),
                rate("1", "b", 4.0, 2),
                rate("1", "c", 2.0, 3),
                rate("1", "d", 5.0, 4),
                rate("1", "e", 1.0, 5),
                rate("2", "b", 2.0, 6),
            ],
        };
        let split = split(&dataset);
        assert_eq!(split.users.len(), 1, "user 2 has one positive rating");
        let u = &split.users[0];
        assert_eq!(
            (u.valid.item_id.as_str(), u.test.item_id.as_str()),
            ("b", "d")
        );
        let history: Vec<&str> = split
            .valid_history
            .iter()
            .map(|e| e.event_id.as_str())
            .collect();
        assert_eq!(history, vec!["1-a", "2-a", "2-b"]);
    }

    #[test]
    fn the_query_follows_design_11() {
        let genres = vec!["Action".to_owned(), "Comedy".to_owned()];
        assert_eq!(
            query_for("1", &genres),
            "Any good comedy films to watch tonight?"
        );
        assert_eq!(query_for("4", &genres), "Looking for a action movie");
        assert_eq!(query_for("7", &[]), "Recommend me a good movie please");
    }
}
