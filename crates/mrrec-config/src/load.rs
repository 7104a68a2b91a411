//! Layering (defaults → file → environment) and error reporting.

use crate::Config;
use std::fmt;
use std::path::Path;

/// The embedded defaults: `config/default.toml`.
pub const DEFAULT_TOML: &str = include_str!("../../../config/default.toml");

/// Environment variables `MRREC__SECTION__KEY` override `section.key`.
pub const ENV_PREFIX: &str = "MRREC__";

/// Tables whose keys are free-form (passed through), so not checked against defaults.
const FREE_FORM_TABLES: &[&str] = &["kafka.properties"];

/// One problem with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Dotted key (`topics.partitions`), or the file for file-level problems.
    pub key: String,
    pub message: String,
}

/// Everything wrong with a configuration, all at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "invalid configuration ({} problem(s)):",
            self.issues.len()
        )?;
        for issue in &self.issues {
            writeln!(f, "  {}: {}", issue.key, issue.message)?;
        }
        Ok(())
    }
}

impl ConfigError {
    fn one(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            issues: vec![ConfigIssue {
                key: key.into(),
                message: message.into(),
            }],
        }
    }

    /// Whether some issue names `key`.
    pub fn mentions(&self, key: &str) -> bool {
        self.issues.iter().any(|i| i.key == key)
    }
}

pub(crate) fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    match file {
        None => load_str("", "<defaults>", env),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::one(path.display().to_string(), format!("cannot read: {e}"))
            })?;
            load_str(&text, &path.display().to_string(), env)
        }
    }
}

pub(crate) fn load_str(
    text: &str,
    origin: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let defaults: toml::Table = DEFAULT_TOML.parse().expect("config/default.toml parses");
    let overlay: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::one(origin, e.to_string().trim_end()))?;

    let mut issues = Vec::new();
    let mut merged = defaults.clone();
    merge(
        &mut merged,
        overlay.clone(),
        &defaults,
        "",
        origin,
        &mut issues,
    );
    apply_env(&mut merged, &defaults, env, &mut issues);

    // A section with a type error is reported and replaced by its defaults, so
    // the other sections still get their type and semantic checks.
    for (name, value) in merged.iter_mut() {
        if let Some(issue) = section_type_error(name, value.clone()) {
            issues.push(issue);
            if let Some(default) = defaults.get(name) {
                *value = default.clone();
            }
        }
    }

    let mut unknown = Vec::new();
    let parsed: Result<Config, _> =
        serde_path_to_error::deserialize(serde_ignored::Deserializer::new(
            toml::Value::Table(merged),
            &mut |path: serde_ignored::Path<'_>| unknown.push(path.to_string()),
        ));
    for key in unknown {
        if !issues.iter().any(|i: &ConfigIssue| i.key == key) {
            issues.push(ConfigIssue {
                key,
                message: "unknown key".into(),
            });
        }
    }
    match parsed {
        Ok(config) => {
            issues.extend(crate::validate::validate(&config));
            if issues.is_empty() {
                Ok(config)
            } else {
                Err(ConfigError { issues })
            }
        }
        Err(e) => {
            issues.push(type_issue("", e));
            Err(ConfigError { issues })
        }
    }
}

fn type_issue(section: &str, e: serde_path_to_error::Error<toml::de::Error>) -> ConfigIssue {
    let path = e.path().to_string();
    ConfigIssue {
        key: match (section, path.as_str()) {
            ("", _) => path,
            (_, ".") => section.to_owned(),
            _ => format!("{section}.{path}"),
        },
        // toml repeats the key on a second line; the key is already named.
        message: e
            .into_inner()
            .to_string()
            .lines()
            .next()
            .unwrap_or("")
            .to_owned(),
    }
}

/// The first type error in one section, if any.
fn section_type_error(name: &str, value: toml::Value) -> Option<ConfigIssue> {
    fn check<T: serde::de::DeserializeOwned>(
        name: &str,
        value: toml::Value,
    ) -> Option<ConfigIssue> {
        serde_path_to_error::deserialize::<_, T>(value)
            .err()
            .map(|e| type_issue(name, e))
    }
    use crate::*;
    match name {
        "kafka" => check::<KafkaConfig>(name, value),
        "topics" => check::<TopicsConfig>(name, value),
        "store" => check::<StoreConfig>(name, value),
        "index" => check::<IndexConfig>(name, value),
        "llm" => check::<LlmConfig>(name, value),
        "agent" => check::<AgentConfig>(name, value),
        "reward" => check::<RewardConfig>(name, value),
        "train" => check::<TrainConfig>(name, value),
        "policy" => check::<PolicyConfig>(name, value),
        "metrics" => check::<MetricsConfig>(name, value),
        "stream" => check::<StreamConfig>(name, value),
        "distill" => check::<DistillConfig>(name, value),
        "recommend" => check::<RecommendConfig>(name, value),
        _ => None,
    }
}

/// Overlays `overlay` onto `base`, reporting keys the defaults do not know.
fn merge(
    base: &mut toml::Table,
    overlay: toml::Table,
    defaults: &toml::Table,
    prefix: &str,
    origin: &str,
    issues: &mut Vec<ConfigIssue>,
) {
    for (key, value) in overlay {
        let path = join(prefix, &key);
        let known = defaults.get(&key);
        match (known, value) {
            (Some(toml::Value::Table(known)), toml::Value::Table(sub))
                if !FREE_FORM_TABLES.contains(&path.as_str()) =>
            {
                let target = base
                    .entry(key)
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                if let toml::Value::Table(target) = target {
                    merge(target, sub, known, &path, origin, issues);
                }
            }
            (None, _) if !FREE_FORM_TABLES.contains(&prefix) => issues.push(ConfigIssue {
                key: path,
                message: format!("unknown key (in {origin})"),
            }),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Applies `MRREC__SECTION__KEY=value`. A value replacing a non-string default is
/// parsed as TOML (`12`, `true`, `["a"]`); anything else stays a string.
fn apply_env(
    merged: &mut toml::Table,
    defaults: &toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
    issues: &mut Vec<ConfigIssue>,
) {
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX))
        .collect();
    vars.sort();
    for (name, raw) in vars {
        let segments: Vec<String> = name[ENV_PREFIX.len()..]
            .split("__")
            .map(str::to_lowercase)
            .collect();
        let key = segments.join(".");
        if segments.len() < 2 || segments.iter().any(String::is_empty) {
            issues.push(ConfigIssue {
                key: name.clone(),
                message: "expected MRREC__SECTION__KEY".into(),
            });
            continue;
        }
        let (parents, leaf) = segments.split_at(segments.len() - 1);
        let parent_path = parents.join(".");
        let free_form = FREE_FORM_TABLES.contains(&parent_path.as_str());
        let default = lookup(defaults, &segments);
        if default.is_none() && !free_form {
            issues.push(ConfigIssue {
                key,
                message: format!("unknown key (from environment variable {name})"),
            });
            continue;
        }
        let value = match default {
            Some(toml::Value::String(_)) | None => toml::Value::String(raw),
            Some(_) => match format!("v = {raw}").parse::<toml::Table>() {
                Ok(mut table) => table.remove("v").expect("parsed key"),
                Err(_) => toml::Value::String(raw),
            },
        };
        insert_at(merged, parents, leaf[0].clone(), value);
    }
}

fn insert_at(table: &mut toml::Table, parents: &[String], leaf: String, value: toml::Value) {
    match parents.split_first() {
        None => {
            table.insert(leaf, value);
        }
        Some((first, rest)) => {
            let entry = table
                .entry(first.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(child) = entry {
                insert_at(child, rest, leaf, value);
            }
        }
    }
}

fn lookup<'a>(table: &'a toml::Table, path: &[String]) -> Option<&'a toml::Value> {
    let (first, rest) = path.split_first()?;
    let value = table.get(first)?;
    if rest.is_empty() {
        return Some(value);
    }
    match value {
        toml::Value::Table(t) => lookup(t, rest),
        _ => None,
    }
}
