//! Free-form key/value labels a caller attaches to an environment, used for filtering.

use super::InvalidInput;
use std::collections::BTreeMap;

const MAX_LABELS: usize = 32;
const MAX_NAME: usize = 63;
const MAX_VALUE: usize = 255;

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Labels(BTreeMap<String, String>);

impl Labels {
    pub fn parse(map: BTreeMap<String, String>) -> Result<Self, InvalidInput> {
        let err = |r: String| InvalidInput::new("labels", r);
        if map.len() > MAX_LABELS {
            return Err(err(format!("at most {MAX_LABELS} labels")));
        }
        for (k, v) in &map {
            let name_ok = !k.is_empty()
                && k.len() <= MAX_NAME
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
            if !name_ok {
                return Err(err(format!(
                    "label name {k:?} must be 1–{MAX_NAME} of [A-Za-z0-9-_./]"
                )));
            }
            if v.len() > MAX_VALUE || v.chars().any(char::is_control) {
                return Err(err(format!(
                    "label {k:?}: value must be at most {MAX_VALUE} bytes without control characters"
                )));
            }
        }
        Ok(Self(map))
    }

    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    /// Parses a `name=value` filter as given in `?label=`.
    pub fn parse_selector(s: &str) -> Result<(String, String), InvalidInput> {
        s.split_once('=')
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .ok_or_else(|| InvalidInput::new("label", "filter must be name=value"))
    }
}
