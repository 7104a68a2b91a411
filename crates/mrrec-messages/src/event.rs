//! `mrrec.events` and `mrrec.outcomes`: user behaviour, keyed by `user_id`.

use crate::{limits, validate, Message, MessageError, Topic};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What a user did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    View,
    Click,
    Purchase,
    Rate,
    Review,
    Search,
    Dismiss,
    Profile,
}

impl EventKind {
    /// Every kind, in DESIGN §2 order.
    pub const ALL: [EventKind; 8] = [
        EventKind::View,
        EventKind::Click,
        EventKind::Purchase,
        EventKind::Rate,
        EventKind::Review,
        EventKind::Search,
        EventKind::Dismiss,
        EventKind::Profile,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::View => "view",
            EventKind::Click => "click",
            EventKind::Purchase => "purchase",
            EventKind::Rate => "rate",
            EventKind::Review => "review",
            EventKind::Search => "search",
            EventKind::Dismiss => "dismiss",
            EventKind::Profile => "profile",
        }
    }

    fn needs_item(self) -> bool {
        !matches!(self, EventKind::Search | EventKind::Profile)
    }
}

/// One user event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub event_id: String,
    pub user_id: String,
    pub kind: EventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attrs: Option<Map<String, Value>>,
    pub ts: i64,
}

impl Event {
    /// Whether this event says the user liked the item (click, purchase, rating ≥ 4).
    pub fn is_positive(&self) -> bool {
        match self.kind {
            EventKind::Click | EventKind::Purchase => true,
            EventKind::Rate => self.value.is_some_and(|v| v >= 4.0),
            _ => false,
        }
    }
}

impl Message for Event {
    const TOPIC: Topic = Topic::Events;
    const KEY_FIELD: &'static str = "user_id";

    fn validate(&self) -> Result<(), MessageError> {
        validate::id("event_id", &self.event_id)?;
        validate::id("user_id", &self.user_id)?;
        validate::opt_id("item_id", self.item_id.as_deref())?;
        validate::ts("ts", self.ts)?;
        if let Some(value) = self.value {
            validate::number("value", value)?;
        }
        if let Some(text) = &self.text {
            validate::text("text", text, limits::MAX_TEXT_BYTES)?;
        }
        if let Some(attrs) = &self.attrs {
            validate::attrs("attrs", attrs)?;
        }
        let kind = self.kind.as_str();
        if self.kind.needs_item() && self.item_id.is_none() {
            return Err(MessageError::invalid(
                "item_id",
                format!("required for a `{kind}` event"),
            ));
        }
        match self.kind {
            EventKind::Rate if self.value.is_none() => Err(MessageError::invalid(
                "value",
                "required for a `rate` event",
            )),
            EventKind::Review | EventKind::Search
                if self.text.as_deref().is_none_or(|t| t.trim().is_empty()) =>
            {
                Err(MessageError::invalid(
                    "text",
                    format!("required for a `{kind}` event"),
                ))
            }
            EventKind::Profile if self.attrs.as_ref().is_none_or(Map::is_empty) => Err(
                MessageError::invalid("attrs", "required for a `profile` event"),
            ),
            _ => Ok(()),
        }
    }

    fn key(&self) -> Option<&str> {
        Some(&self.user_id)
    }

    fn normalize(&mut self) -> bool {
        validate::normalize_opt(&mut self.text)
    }
}

/// Feedback on a served recommendation: an event plus the request it answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub request_id: String,
    #[serde(flatten)]
    pub event: Event,
}

impl Message for Outcome {
    const TOPIC: Topic = Topic::Outcomes;
    const KEY_FIELD: &'static str = "user_id";

    fn validate(&self) -> Result<(), MessageError> {
        validate::id("request_id", &self.request_id)?;
        self.event.validate()
    }

    fn key(&self) -> Option<&str> {
        Some(&self.event.user_id)
    }

    fn normalize(&mut self) -> bool {
        self.event.normalize()
    }
}
