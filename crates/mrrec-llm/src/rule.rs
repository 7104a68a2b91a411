//! The `rule` policy (DESIGN §4, `llm.backend = "rule"`): a deterministic
//! policy with no model that answers through the same agent loop, grammar,
//! ranker, trajectories and responses as a trained one. It is at once
//!
//! - a production mode: mrrec without an LLM to run;
//! - the fallback: when the policy fails or runs out of time, the
//!   recommender answers with this rule;
//! - the teacher: `model init --sft` warm-starts a policy on its turns;
//! - the baseline every trained policy must beat (`mrrec eval`'s `rule` row
//!   and each `pipeline_*` row's `vs_rule`).
//!
//! The rule, in full (this is the one place it is written down):
//!
//! 1. First turn. When the prompt shows global memory, the rule retrieves the
//!    category that memory was chosen for (the category the request names,
//!    else the user's strongest one). Otherwise it thinks `find what they
//!    liked about {query}` and retrieves the request's words (its first six
//!    words, letters, digits and spaces only; `anything` without a request
//!    or when nothing is left).
//! 2. Second turn, the answer. With global memory, the profile is that
//!    category and the answer cites nothing. Without, the profile is the
//!    request's words plus the first eight words of the first memory entry
//!    retrieved, and the answer cites up to three retrieved entries.
//!
//! 3. Plans. Asked for `n > 1` samples of a first turn with global memory,
//!    completion `i` follows plan `i mod 4` ([`Plan`]), named by its
//!    `<think>` text, and the answer turn follows the plan the first turn
//!    named: *category* (no think: the answer above), *cite* (the category,
//!    citing up to three retrieved entries, whose items then seed the
//!    collaborative signal), *favourite* (the category and the user's
//!    favourite other one from the profile line), *titles* (the category and
//!    the first eight words of the first retrieved entry's liked titles).
//!    One sample, or any served answer (always completion 0), is the
//!    category plan: the rule serves as in 2. The other plans make a
//!    group's logged trajectories differ, so their rewards can tell plans
//!    apart (`mrrec eval --sft-plans` imitates the best one per request).
//!
//! The rule never retrieves more than once and never fails the grammar.

use crate::{Completion, Generation, GenerationRequest, Llm, LlmError, Role};
use async_trait::async_trait;
use mrrec_policy::protocol::{MEMORY_CLOSE, MEMORY_OPEN};
use mrrec_policy::turn::{parse_turn, Action};
use std::time::Duration;

/// The rule as an [`Llm`]. `version` is the policy version its answers
/// carry: 0 when it serves (`llm.backend = "rule"`), the version being
/// warm-started when it teaches.
#[derive(Debug, Clone, Default)]
pub struct RuleLlm {
    pub version: u32,
}

/// The request's query, from the first user turn the agent writes.
fn request_query(messages: &[crate::ChatMessage]) -> String {
    let line = messages
        .iter()
        .find(|m| m.role == Role::User)
        .and_then(|m| m.content.lines().next())
        .and_then(|l| l.strip_prefix("Request: "))
        .unwrap_or("anything");
    // A request of punctuation or emoji only leaves nothing to retrieve
    // with, and an empty retrieve breaks the protocol.
    match words(line, 6) {
        w if w.is_empty() => "anything".to_owned(),
        w => w,
    }
}

/// The category of the first global memory line of the prompt
/// (`- {category} across users: …`).
fn global_category(messages: &[crate::ChatMessage]) -> Option<String> {
    let first = messages.iter().find(|m| m.role == Role::User)?;
    first
        .content
        .lines()
        .skip_while(|l| !l.starts_with("Global memory:"))
        .skip(1)
        .take_while(|l| l.starts_with("- "))
        .find_map(|l| {
            l[2..]
                .split_once(" across users:")
                .map(|(c, _)| c.trim().to_owned())
        })
        .filter(|c| !c.is_empty())
}

/// (id, text) of each memory entry in a memory turn.
fn memory_entries(text: &str) -> Vec<(String, String)> {
    text.split(MEMORY_CLOSE)
        .filter_map(|part| {
            let rest = part.split_once(MEMORY_OPEN)?.1;
            let (id, body) = rest.split_once("\">")?;
            (id != "none").then(|| (id.to_owned(), body.to_owned()))
        })
        .collect()
}

/// What the rule's answer does with the category a prompt's global memory
/// names (module comment, rule 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    Category,
    Cite,
    Favourite,
    Titles,
}

impl Plan {
    /// Every plan, in the order completions follow them.
    pub const ALL: [Plan; 4] = [Plan::Category, Plan::Cite, Plan::Favourite, Plan::Titles];

    pub fn name(self) -> &'static str {
        match self {
            Plan::Category => "category",
            Plan::Cite => "cite",
            Plan::Favourite => "favourite",
            Plan::Titles => "titles",
        }
    }

    /// The first turn's `<think>` text that names the plan.
    fn think(self) -> Option<&'static str> {
        match self {
            Plan::Category => None,
            Plan::Cite => Some("cite what they liked"),
            Plan::Favourite => Some("add their favourite category"),
            Plan::Titles => Some("match titles they liked"),
        }
    }

    /// The plan a first turn's think names (the category plan for any
    /// other text, or none).
    pub fn named_by(think: Option<&str>) -> Plan {
        Plan::ALL
            .into_iter()
            .find(|p| p.think().is_some() && p.think() == think)
            .unwrap_or(Plan::Category)
    }

    /// The plan of a chat's first assistant turn.
    fn of(messages: &[crate::ChatMessage]) -> Plan {
        let think = messages
            .iter()
            .find(|m| m.role == Role::Assistant)
            .and_then(|m| parse_turn(&m.content))
            .and_then(|t| t.think);
        Plan::named_by(think.as_deref())
    }

    fn first_turn(self, category: &str) -> String {
        match self.think() {
            Some(think) => format!("<think>{think}</think><retrieve>{category}</retrieve>"),
            None => format!("<retrieve>{category}</retrieve>"),
        }
    }
}

/// The user's favourite category other than `category`, from the prompt's
/// profile line (`… Favours Drama (+0.52), Comedy (+0.31).`).
fn favourite_besides(messages: &[crate::ChatMessage], category: &str) -> Option<String> {
    let first = messages.iter().find(|m| m.role == Role::User)?;
    let profile = first
        .content
        .lines()
        .find_map(|l| l.strip_prefix("Profile: "))?;
    let favours = profile.split_once("Favours ")?.1;
    let favours = favours.split_once(". ").map_or(favours, |(f, _)| f);
    favours
        .split("), ")
        .filter_map(|part| part.rsplit_once(" (").map(|(name, _)| name.trim()))
        .find(|name| !name.is_empty() && !name.eq_ignore_ascii_case(category))
        .map(str::to_owned)
}

/// Up to `n` words (letters, digits, spaces) of `text`.
fn words(text: &str, n: usize) -> String {
    text.chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ')
        .collect::<String>()
        .split_whitespace()
        .take(n)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The titles an entry says the user liked (`… Liked: A; B.`), else the
/// entry's text.
fn liked_titles(entry: &str) -> &str {
    entry
        .split_once("Liked: ")
        .map_or(entry, |(_, liked)| liked)
}

/// The rule's first turn for each of `n` samples (module comment, rules 1
/// and 3).
fn first_turns(messages: &[crate::ChatMessage], n: usize) -> Vec<String> {
    match global_category(messages) {
        Some(category) => (0..n)
            .map(|i| Plan::ALL[i % Plan::ALL.len()].first_turn(&category))
            .collect(),
        None => vec![rule_turn(messages); n],
    }
}

/// The rule's next turn for a chat.
pub fn rule_turn(messages: &[crate::ChatMessage]) -> String {
    let query = request_query(messages);
    let retrieved = messages
        .iter()
        .filter(|m| m.role == Role::Assistant)
        .any(|m| {
            matches!(
                parse_turn(&m.content).map(|t| t.action),
                Some(Action::Retrieve(_))
            )
        });
    let category = global_category(messages);
    if !retrieved {
        return match &category {
            Some(category) => format!("<retrieve>{category}</retrieve>"),
            None => format!(
                "<think>find what they liked about {query}</think><retrieve>{query}</retrieve>"
            ),
        };
    }
    let entries: Vec<(String, String)> = messages
        .iter()
        .filter(|m| m.role == Role::User)
        .skip(1)
        .flat_map(|m| memory_entries(&m.content))
        .collect();
    let mut profile = query.clone();
    // With a category the answer cites nothing unless its plan is to:
    // copying 17-character entry ids is what a tiny warm-started policy
    // fails at, and a wrong id only forfeits DESIGN §5's small memory term.
    let plan = Plan::of(messages);
    let cited = match (&category, plan) {
        (Some(_), Plan::Cite) | (None, _) => 3,
        (Some(_), _) => 0,
    };
    if let Some(category) = category {
        profile = match plan {
            Plan::Category | Plan::Cite => category,
            Plan::Favourite => match favourite_besides(messages, &category) {
                Some(favourite) => format!("{category} {favourite}"),
                None => category,
            },
            Plan::Titles => match entries.first() {
                Some((_, text)) => format!("{category} {}", words(liked_titles(text), 8)),
                None => category,
            },
        };
    } else if let Some((_, text)) = entries.first() {
        profile = format!("{profile} {}", words(text, 8));
    }
    let ids: Vec<String> = entries
        .iter()
        .take(cited)
        .map(|(id, _)| serde_json::Value::String(id.clone()).to_string())
        .collect();
    format!(
        "<answer>{{\"profile\":{},\"memory_ids\":[{}]}}</answer>",
        serde_json::Value::String(profile.trim().to_owned()),
        ids.join(",")
    )
}

#[async_trait]
impl Llm for RuleLlm {
    async fn generate(&self, request: GenerationRequest) -> Result<Generation, LlmError> {
        crate::validate_request(&request)?;
        let first = !request.messages.iter().any(|m| m.role == Role::Assistant);
        let texts = if first {
            first_turns(&request.messages, request.n)
        } else {
            vec![rule_turn(&request.messages); request.n]
        };
        Ok(Generation {
            completions: texts
                .into_iter()
                .map(|text| Completion {
                    text,
                    finish_reason: "stop".into(),
                })
                .collect(),
            policy_version: self.version,
            model: "rule".into(),
            prompt_tokens: 0,
            completion_tokens: 0,
            elapsed: Duration::ZERO,
        })
    }

    fn backend(&self) -> &'static str {
        "rule"
    }

    fn serving_version(&self) -> Option<u32> {
        Some(self.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ChatMessage;

    /// A request of punctuation or emoji still gets a turn that follows
    /// the protocol.
    #[test]
    fn a_request_without_words_still_follows_the_protocol() {
        for query in ["???", "🙂🙂", "   "] {
            let messages = vec![
                ChatMessage::system("s"),
                ChatMessage::user(format!(
                    "Request: {query}\nGlobal memory:\nnone\nProfile: p"
                )),
            ];
            let turn = rule_turn(&messages);
            assert!(parse_turn(&turn).is_some(), "{query:?} gave {turn:?}");
            assert!(turn.contains("<retrieve>anything</retrieve>"), "{turn}");
        }
    }

    fn prompt() -> Vec<ChatMessage> {
        vec![
            ChatMessage::system("s"),
            ChatMessage::user(
                "Request: a war film\nGlobal memory:\n- War across users: chosen\n\
                 Profile: Profile: 40 events across 6 categories. \
                 Favours War (+0.60), Drama (+0.42), Comedy (+0.10). Avoids Horror (-0.30).",
            ),
        ]
    }

    /// The answer turn after `first`, with two retrieved entries.
    fn answer_after(first: &str) -> String {
        let mut messages = prompt();
        messages.push(ChatMessage::assistant(first));
        messages.push(ChatMessage::user(format!(
            "{MEMORY_OPEN}p:u1:War\">War: 9 interactions. Liked: Glory; Das Boot; Patton.{MEMORY_CLOSE}\
             {MEMORY_OPEN}b:u1:7\">rated \"Glory\" 5/5{MEMORY_CLOSE}"
        )));
        rule_turn(&messages)
    }

    /// Sampled `n` times, the first turn follows the four plans in order;
    /// each answer follows the plan its first turn named, and one sample
    /// is the category plan (what the rule serves).
    #[tokio::test]
    async fn samples_follow_the_plans_and_one_sample_is_the_served_rule() {
        let request = |n| GenerationRequest {
            messages: prompt(),
            grammar: None,
            sampling: crate::Sampling::greedy(64),
            n,
        };
        let rule = RuleLlm::default();
        let one = rule.generate(request(1)).await.unwrap();
        assert_eq!(one.completions.len(), 1);
        assert_eq!(one.completions[0].text, "<retrieve>War</retrieve>");
        let four = rule.generate(request(6)).await.unwrap();
        let firsts: Vec<&str> = four.completions.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(firsts[0], "<retrieve>War</retrieve>");
        assert_eq!(firsts[4], firsts[0]);
        let answers: Vec<String> = firsts[..4].iter().map(|f| answer_after(f)).collect();
        assert_eq!(
            answers,
            [
                r#"<answer>{"profile":"War","memory_ids":[]}</answer>"#,
                r#"<answer>{"profile":"War","memory_ids":["p:u1:War","b:u1:7"]}</answer>"#,
                r#"<answer>{"profile":"War Drama","memory_ids":[]}</answer>"#,
                r#"<answer>{"profile":"War Glory Das Boot Patton","memory_ids":[]}</answer>"#,
            ]
        );
        for (first, plan) in firsts.iter().zip(Plan::ALL) {
            let think = parse_turn(first).unwrap().think;
            assert_eq!(Plan::named_by(think.as_deref()), plan);
        }
    }

    /// A profile line without favourites, or whose only favourite is the
    /// category, leaves the favourite plan with the category alone.
    #[test]
    fn the_favourite_plan_without_another_favourite_names_the_category() {
        let mut messages = vec![
            ChatMessage::system("s"),
            ChatMessage::user(
                "Request: war\nGlobal memory:\n- War across users: x\nProfile: Favours War (+0.60).",
            ),
        ];
        assert_eq!(favourite_besides(&messages, "War"), None);
        messages[1] = ChatMessage::user(
            "Request: war\nGlobal memory:\n- War across users: x\nProfile: no history yet",
        );
        assert_eq!(favourite_besides(&messages, "War"), None);
    }
}
