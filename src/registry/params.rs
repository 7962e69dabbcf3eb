//! Query parameters as Confluent's registry reads them: booleans in any case
//! (`?verbose=True`, as Confluent's Python client sends them) and unknown parameters
//! ignored (`?normalize=false` is accepted and has no effect here).

use serde::{Deserialize, Deserializer};

#[derive(Deserialize, Default, Debug, PartialEq)]
pub(super) struct Flags {
    #[serde(default, deserialize_with = "any_case")]
    pub deleted: bool,
    #[serde(default, deserialize_with = "any_case")]
    pub permanent: bool,
    #[serde(default, rename = "defaultToGlobal", deserialize_with = "any_case")]
    pub default_to_global: bool,
    #[serde(default, deserialize_with = "any_case")]
    pub verbose: bool,
}

/// `true` or `false` in any case; anything else is refused with the value named (a
/// client that sends `yes` learns so, instead of having it read as `false`).
fn any_case<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    let text = String::deserialize(d)?;
    if text.eq_ignore_ascii_case("true") {
        Ok(true)
    } else if text.eq_ignore_ascii_case("false") {
        Ok(false)
    } else {
        Err(serde::de::Error::custom(format!(
            "{text:?} is not a boolean: use true or false"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: &str) -> Result<Flags, String> {
        let uri: axum::http::Uri = format!("/subjects?{query}").parse().unwrap();
        axum::extract::Query::<Flags>::try_from_uri(&uri)
            .map(|q| q.0)
            .map_err(|e| e.body_text())
    }

    #[test]
    fn booleans_are_read_in_any_case_and_unknown_parameters_ignored() {
        let flags = parse("normalize=False&verbose=True&deleted=TRUE&permanent=false").unwrap();
        assert_eq!(
            flags,
            Flags {
                deleted: true,
                permanent: false,
                default_to_global: false,
                verbose: true,
            }
        );
        assert_eq!(parse("").unwrap(), Flags::default());
    }

    #[test]
    fn a_value_that_is_not_a_boolean_is_refused_with_the_value_named() {
        let error = parse("verbose=yes").unwrap_err();
        assert!(error.contains("\"yes\" is not a boolean"), "{error}");
    }
}
