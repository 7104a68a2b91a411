//! Reading one assistant turn of the protocol (DESIGN §4):
//! `<think>…</think>` (optional), then `<retrieve>query</retrieve>` or
//! `<answer>{"profile":…,"memory_ids":[…]}</answer>`. Anything else is not a
//! turn (the caller falls back).

use crate::protocol::{
    ANSWER_CLOSE, ANSWER_OPEN, RETRIEVE_CLOSE, RETRIEVE_OPEN, THINK_CLOSE, THINK_OPEN,
};

/// What the turn asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Retrieve(String),
    Answer {
        profile: String,
        memory_ids: Vec<String>,
    },
}

/// One parsed turn.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    pub think: Option<String>,
    pub action: Action,
}

/// Parses a turn; `None` when it does not follow the protocol.
pub fn parse_turn(text: &str) -> Option<Turn> {
    let text = text.trim();
    let (think, rest) = match text.strip_prefix(THINK_OPEN) {
        Some(after) => {
            let (thought, rest) = after.split_once(THINK_CLOSE)?;
            (Some(thought.trim().to_owned()), rest.trim_start())
        }
        None => (None, text),
    };
    if let Some(body) = rest.strip_prefix(RETRIEVE_OPEN) {
        let query = body.strip_suffix(RETRIEVE_CLOSE)?.trim();
        if query.is_empty() || query.contains('<') {
            return None;
        }
        return Some(Turn {
            think,
            action: Action::Retrieve(query.to_owned()),
        });
    }
    let json = rest.strip_prefix(ANSWER_OPEN)?.strip_suffix(ANSWER_CLOSE)?;
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    let profile = value.get("profile")?.as_str()?.trim().to_owned();
    if profile.is_empty() {
        return None;
    }
    let memory_ids = value
        .get("memory_ids")
        .and_then(|ids| ids.as_array())
        .map(|ids| {
            ids.iter()
                .filter_map(|id| id.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Some(Turn {
        think,
        action: Action::Answer {
            profile,
            memory_ids,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_parse() {
        assert_eq!(
            parse_turn("<think>hm</think><retrieve>comedy</retrieve>"),
            Some(Turn {
                think: Some("hm".into()),
                action: Action::Retrieve("comedy".into())
            })
        );
        assert_eq!(
            parse_turn("<answer>{\"profile\":\"a comedy\",\"memory_ids\":[\"m1\"]}</answer>"),
            Some(Turn {
                think: None,
                action: Action::Answer {
                    profile: "a comedy".into(),
                    memory_ids: vec!["m1".into()]
                }
            })
        );
        for bad in [
            "",
            "<think>unclosed",
            "<retrieve></retrieve>",
            "<answer>{\"profile\":\"\"}</answer>",
            "<answer>not json</answer>",
            "<retrieve>a</retrieve>trailing",
        ] {
            assert_eq!(parse_turn(bad), None, "{bad:?}");
        }
    }
}
