//! Refuses, at the edge, any request value PostgreSQL cannot store (a NUL byte in `text` or
//! `jsonb`), so that it is a 422 naming the field instead of a store error halfway through a
//! change. Checked once in the extractors, for every handler alike.

use super::ApiError;
use serde_json::Value;

const WHY: &str = "contains a NUL byte (\\u0000), which PostgreSQL cannot store";

/// Finds the first string (object key or value, at any depth) holding a NUL byte.
pub(super) fn check_json(value: &Value) -> Result<(), ApiError> {
    match first_nul(value, String::new()) {
        Some(at) => Err(ApiError::invalid(format!("{at}: {WHY}"))),
        None => Ok(()),
    }
}

/// Checks query string or path parameters; `kind` says which (`query parameter`, `path
/// parameter`) so that the answer names where the value was.
pub(super) fn check_params<'a>(
    kind: &str,
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(), ApiError> {
    for (name, value) in params {
        if name.contains('\0') {
            return Err(ApiError::invalid(format!("{kind} name: {WHY}")));
        }
        if value.contains('\0') {
            return Err(ApiError::invalid(format!("{kind} {name}: {WHY}")));
        }
    }
    Ok(())
}

fn first_nul(value: &Value, at: String) -> Option<String> {
    let root = || {
        if at.is_empty() {
            "body".to_owned()
        } else {
            at.clone()
        }
    };
    match value {
        Value::String(s) if s.contains('\0') => Some(root()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| first_nul(v, format!("{}[{i}]", at))),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            if k.contains('\0') {
                return Some(format!("{} (a key)", root()));
            }
            let at = if at.is_empty() {
                k.clone()
            } else {
                format!("{at}.{k}")
            };
            first_nul(v, at)
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(v: Value) -> Option<String> {
        first_nul(&v, String::new())
    }

    #[test]
    fn names_the_field_at_any_depth() {
        assert_eq!(at(json!({"key": "a\u{0}b"})).as_deref(), Some("key"));
        assert_eq!(
            at(json!({"key": "k", "labels": {"team": "x\u{0}"}})).as_deref(),
            Some("labels.team")
        );
        assert_eq!(
            at(json!({"migrations": [{"name": "a.sql", "sql": "ok"}, {"name": "b.sql", "sql": "\u{0}"}]}))
                .as_deref(),
            Some("migrations[1].sql")
        );
        assert_eq!(
            at(json!({"labels": {"a\u{0}": "x"}})).as_deref(),
            Some("labels (a key)")
        );
        assert_eq!(at(json!("\u{0}")).as_deref(), Some("body"));
        assert_eq!(at(json!({"key": "fine", "n": 1, "l": [true, null]})), None);
    }

    #[test]
    fn params_name_their_kind_and_name() {
        let e = check_params("query parameter", [("label", "a=\u{0}")]).unwrap_err();
        assert_eq!(e.detail, format!("query parameter label: {WHY}"));
        assert!(check_params("path parameter", [("ref", "acme/web#1")]).is_ok());
    }
}
