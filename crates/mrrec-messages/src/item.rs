//! `mrrec.items`: the catalog, keyed (and compacted) by `item_id`.

use crate::{limits, validate, Message, MessageError, Topic};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One catalog item. Categories and description may be absent (an id-only catalog).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub item_id: String,
    pub title: String,
    #[serde(default)]
    pub categories: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attrs: Option<Map<String, Value>>,
}

impl Message for Item {
    const TOPIC: Topic = Topic::Items;
    const KEY_FIELD: &'static str = "item_id";

    fn validate(&self) -> Result<(), MessageError> {
        validate::id("item_id", &self.item_id)?;
        validate::label("title", &self.title)?;
        validate::list_len("categories", &self.categories, limits::MAX_CATEGORIES)?;
        for category in &self.categories {
            if category.trim().is_empty() {
                return Err(MessageError::invalid(
                    "categories",
                    "holds an empty category",
                ));
            }
            validate::label("categories", category)?;
        }
        if let Some(description) = &self.description {
            validate::text("description", description, limits::MAX_TEXT_BYTES)?;
        }
        if let Some(attrs) = &self.attrs {
            validate::attrs("attrs", attrs)?;
        }
        Ok(())
    }

    fn key(&self) -> Option<&str> {
        Some(&self.item_id)
    }

    fn normalize(&mut self) -> bool {
        let mut changed = validate::normalize_space(&mut self.title);
        for category in &mut self.categories {
            changed |= validate::normalize_space(category);
        }
        changed | validate::normalize_opt(&mut self.description)
    }
}
