//! The agent protocol's fixed text (DESIGN §4): the tags the policy writes,
//! the special tokens of the chat format, the chat template, and a Rust
//! rendering of that template that gives exactly the text the engine renders
//! (the trainer tokenizes this text to recompute log-probs).

use serde::{Deserialize, Serialize};

/// End of sequence; also ends every assistant turn.
pub const EOS: &str = "<|endoftext|>";
/// Opens a system turn.
pub const SYSTEM: &str = "<|system|>";
/// Opens a user turn (the request, and memory the system inserts).
pub const USER: &str = "<|user|>";
/// Opens an assistant turn (text the policy writes).
pub const ASSISTANT: &str = "<|assistant|>";

/// Special tokens: never produced from user text, skipped when decoding.
pub const SPECIAL_TOKENS: [&str; 4] = [EOS, SYSTEM, USER, ASSISTANT];

pub const THINK_OPEN: &str = "<think>";
pub const THINK_CLOSE: &str = "</think>";
pub const RETRIEVE_OPEN: &str = "<retrieve>";
pub const RETRIEVE_CLOSE: &str = "</retrieve>";
pub const MEMORY_OPEN: &str = "<memory id=\"";
pub const MEMORY_CLOSE: &str = "</memory>";
pub const ANSWER_OPEN: &str = "<answer>";
pub const ANSWER_CLOSE: &str = "</answer>";

/// Protocol tags. They stay ordinary text to the tokenizer (see
/// `init::train_tokenizer`); the BPE learns their pieces from the protocol corpus.
pub const TAG_TOKENS: [&str; 8] = [
    THINK_OPEN,
    THINK_CLOSE,
    RETRIEVE_OPEN,
    RETRIEVE_CLOSE,
    MEMORY_OPEN,
    MEMORY_CLOSE,
    ANSWER_OPEN,
    ANSWER_CLOSE,
];

/// The chat template (Jinja, as HF tokenizer configs carry it). Turns are
/// concatenated with no whitespace; an assistant turn ends with EOS.
pub const CHAT_TEMPLATE: &str = "{%- for message in messages -%}\
{%- if message['role'] == 'system' -%}<|system|>{{ message['content'] }}\
{%- elif message['role'] == 'user' -%}<|user|>{{ message['content'] }}\
{%- elif message['role'] == 'assistant' -%}<|assistant|>{{ message['content'] }}<|endoftext|>\
{%- endif -%}\
{%- endfor -%}\
{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}";

/// The instructions that open every prompt. Short on purpose: every prompt
/// token is prefilled on every turn, and the policy learns the protocol from
/// training, not from prose.
pub const INSTRUCTIONS: &str = "Recommend an item. Optionally <think>briefly</think>. \
<retrieve>aspect</retrieve> looks up the user's memory. \
End with <answer>{\"profile\":\"ideal item\",\"memory_ids\":[\"ids used\"]}</answer>.";

/// Length bounds of one assistant turn, in characters (ids: count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TurnLimits {
    pub think: usize,
    pub query: usize,
    pub profile: usize,
    pub ids: usize,
}

/// Lark grammar (llguidance dialect) of one assistant turn: an optional
/// `<think>`, then a `<retrieve>` query when `may_retrieve`, or the
/// `<answer>`. Free text excludes `<` (no tag can be opened or closed inside
/// it) and control characters; the profile also excludes `"` and `\`. Every
/// piece is bounded in length, and the answer cites at most `limits.ids` ids.
/// `may_answer = false` forces a retrieve (when one is allowed).
pub fn turn_grammar(may_retrieve: bool, may_answer: bool, limits: TurnLimits) -> String {
    let action = match (may_retrieve, may_answer) {
        (true, true) => "retrieve | answer",
        (true, false) => "retrieve",
        (false, _) => "answer",
    };
    let TurnLimits {
        think,
        query,
        profile,
        ids,
    } = limits;
    let more_ids = "(\",\" ID)? ".repeat(ids.saturating_sub(1));
    format!(
        r#"start: think? action
action: {action}
think: "<think>" THOUGHT "</think>"
retrieve: "<retrieve>" QUERY "</retrieve>"
answer: "<answer>{{\"profile\":\"" PROFILE "\",\"memory_ids\":[" ids? "]}}</answer>"
ids: ID {more_ids}
THOUGHT: /[^<\x00-\x1f\x7f]{{1,{think}}}/
QUERY: /[^<\x00-\x1f\x7f]{{1,{query}}}/
PROFILE: /[^<"\\\x00-\x1f\x7f]{{1,{profile}}}/
ID: /"[A-Za-z0-9:_.\-]{{1,48}}"/
"#
    )
}

/// Who wrote a chat turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }

    fn marker(self) -> &'static str {
        match self {
            Role::System => SYSTEM,
            Role::User => USER,
            Role::Assistant => ASSISTANT,
        }
    }
}

/// One chat turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }
}

/// [`CHAT_TEMPLATE`] rendered in Rust: the exact text the engine feeds the model.
pub fn render_chat(messages: &[ChatMessage], add_generation_prompt: bool) -> String {
    let mut out = String::new();
    for message in messages {
        out.push_str(message.role.marker());
        out.push_str(&message.content);
        if message.role == Role::Assistant {
            out.push_str(EOS);
        }
    }
    if add_generation_prompt {
        out.push_str(ASSISTANT);
    }
    out
}

/// Example protocol text for tokenizer training: the instructions and turns
/// shaped like the agent's, so every tag and the answer's JSON keys get tokens.
pub fn protocol_corpus() -> Vec<String> {
    let aspects = [
        "liked comedy movies",
        "recent ratings",
        "favourite genres",
        "disliked items",
        "what the user watched last",
    ];
    let mut corpus = vec![INSTRUCTIONS.to_owned()];
    // Request phrasings of the quality protocol (DESIGN §11), over its genres.
    let templates = [
        "Looking for a {g} movie",
        "Any good {g} films to watch tonight?",
        "I'm in the mood for something {g}",
        "Recommend me a {g} movie please",
    ];
    let genres = [
        "action",
        "adventure",
        "animation",
        "children's",
        "comedy",
        "crime",
        "documentary",
        "drama",
        "fantasy",
        "film-noir",
        "horror",
        "musical",
        "mystery",
        "romance",
        "sci-fi",
        "thriller",
        "war",
        "western",
    ];
    for genre in genres {
        for template in templates {
            corpus.push(template.replace("{g}", genre));
        }
    }
    for (i, aspect) in aspects.iter().enumerate() {
        corpus.push(render_chat(
            &[
                ChatMessage::system(INSTRUCTIONS),
                ChatMessage::user(format!(
                    "Request: {aspect}\nGlobal memory: people who chose item {i} chose item {}\nProfile: likes {aspect}",
                    i + 1
                )),
                ChatMessage::assistant(format!(
                    "{THINK_OPEN}The user asks for {aspect}.{THINK_CLOSE}{RETRIEVE_OPEN}{aspect}{RETRIEVE_CLOSE}"
                )),
                ChatMessage::user(format!(
                    "{MEMORY_OPEN}u{i}:pref:{i}\">rated 5 stars: {aspect}{MEMORY_CLOSE}"
                )),
                ChatMessage::assistant(format!(
                    "{ANSWER_OPEN}{{\"profile\":\"{aspect}\",\"memory_ids\":[\"u{i}:pref:{i}\"]}}{ANSWER_CLOSE}"
                )),
            ],
            false,
        ));
    }
    corpus
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendering_matches_the_template_shape() {
        let text = render_chat(
            &[
                ChatMessage::system("S"),
                ChatMessage::user("U"),
                ChatMessage::assistant("A"),
            ],
            true,
        );
        assert_eq!(
            text,
            "<|system|>S<|user|>U<|assistant|>A<|endoftext|><|assistant|>"
        );
    }
}
