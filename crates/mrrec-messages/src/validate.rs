//! Field checks shared by every message type.

use crate::{limits, MessageError};
use serde_json::{Map, Value};

pub(crate) fn id(field: &str, value: &str) -> Result<(), MessageError> {
    if value.is_empty() {
        return Err(MessageError::invalid(field, "must not be empty"));
    }
    if value.len() > limits::MAX_ID_BYTES {
        return Err(MessageError::invalid(
            field,
            format!(
                "{} bytes, over the {}-byte limit",
                value.len(),
                limits::MAX_ID_BYTES
            ),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(MessageError::invalid(field, "contains control characters"));
    }
    Ok(())
}

pub(crate) fn opt_id(field: &str, value: Option<&str>) -> Result<(), MessageError> {
    value.map_or(Ok(()), |v| id(field, v))
}

pub(crate) fn text(field: &str, value: &str, max: usize) -> Result<(), MessageError> {
    if value.len() > max {
        return Err(MessageError::invalid(
            field,
            format!("{} bytes, over the {max}-byte limit", value.len()),
        ));
    }
    if value.contains('\0') {
        return Err(MessageError::invalid(field, "contains a NUL character"));
    }
    Ok(())
}

/// Whether `c` is white space written as a control character (tab, line
/// feed, carriage return, vertical tab, form feed, next line): real catalog
/// text carries these, and they mean a space.
fn is_control_space(c: char) -> bool {
    c.is_control() && c.is_whitespace()
}

/// Replaces each run of control white space in `value` by one space (a run
/// already next to a space folds into it). Returns whether anything changed.
/// Other control characters (NUL among them) are left for validation to
/// refuse.
pub(crate) fn normalize_space(value: &mut String) -> bool {
    if !value.chars().any(is_control_space) {
        return false;
    }
    let mut out = String::with_capacity(value.len());
    let mut pending = false;
    for c in value.chars() {
        if is_control_space(c) {
            pending = true;
            continue;
        }
        if pending && c != ' ' && !out.ends_with(' ') && !out.is_empty() {
            out.push(' ');
        }
        pending = false;
        out.push(c);
    }
    *value = out;
    true
}

/// [`normalize_space`] on an optional field.
pub(crate) fn normalize_opt(value: &mut Option<String>) -> bool {
    value.as_mut().is_some_and(normalize_space)
}

pub(crate) fn label(field: &str, value: &str) -> Result<(), MessageError> {
    text(field, value, limits::MAX_LABEL_BYTES)?;
    if value.chars().any(char::is_control) {
        return Err(MessageError::invalid(field, "contains control characters"));
    }
    Ok(())
}

pub(crate) fn number(field: &str, value: f64) -> Result<(), MessageError> {
    if !value.is_finite() {
        return Err(MessageError::invalid(field, "must be a finite number"));
    }
    if value.abs() > limits::MAX_ABS_VALUE {
        return Err(MessageError::invalid(
            field,
            format!("{value} is beyond ±{}", limits::MAX_ABS_VALUE),
        ));
    }
    Ok(())
}

pub(crate) fn ts(field: &str, value: i64) -> Result<(), MessageError> {
    if !(0..=limits::MAX_TS).contains(&value) {
        return Err(MessageError::invalid(
            field,
            format!(
                "{value} is not epoch milliseconds between 0 and {}",
                limits::MAX_TS
            ),
        ));
    }
    Ok(())
}

pub(crate) fn list_len<T>(field: &str, list: &[T], max: usize) -> Result<(), MessageError> {
    if list.len() > max {
        return Err(MessageError::invalid(
            field,
            format!("{} entries, over the limit of {max}", list.len()),
        ));
    }
    Ok(())
}

pub(crate) fn attrs(field: &str, attrs: &Map<String, Value>) -> Result<(), MessageError> {
    if attrs.len() > limits::MAX_ATTRS {
        return Err(MessageError::invalid(
            field,
            format!(
                "{} keys, over the limit of {}",
                attrs.len(),
                limits::MAX_ATTRS
            ),
        ));
    }
    for (key, value) in attrs {
        label(field, key)?;
        value_depth(field, value, 1)?;
    }
    Ok(())
}

fn value_depth(field: &str, value: &Value, depth: usize) -> Result<(), MessageError> {
    let children: Box<dyn Iterator<Item = &Value>> = match value {
        Value::Array(items) => Box::new(items.iter()),
        Value::Object(map) => Box::new(map.values()),
        Value::Number(n) => {
            return match n.as_f64() {
                Some(f) if f.is_finite() => Ok(()),
                _ => Err(MessageError::invalid(field, "holds a non-finite number")),
            }
        }
        _ => return Ok(()),
    };
    if depth > limits::MAX_ATTR_DEPTH {
        return Err(MessageError::invalid(
            field,
            format!("nested deeper than {} levels", limits::MAX_ATTR_DEPTH),
        ));
    }
    children
        .into_iter()
        .try_for_each(|child| value_depth(field, child, depth + 1))
}
