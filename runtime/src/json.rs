//! The one JSON rule for everything bullpen reads or hands on — job data,
//! return values, progress, update-data, children's data, `bullpen add` and
//! `bullpen run --data`: valid JSON nested at most [`MAX_DEPTH`] levels.
//!
//! The depth is serde_json's recursion limit, which bullmq-official and the
//! Rust guest SDK parse with; Go's and JavaScript's parsers accept deeper
//! text, so every SDK parses whatever the host lets through.

/// The deepest nesting of arrays and objects bullpen accepts (`[[1]]` is 2).
pub const MAX_DEPTH: usize = 127;

/// Why a JSON text is refused. Its Display follows the name of the text
/// ("job data", "return value"): `job data {problem}`.
#[derive(Debug, thiserror::Error)]
pub enum JsonProblem {
    /// Nested more than [`MAX_DEPTH`] levels: valid JSON, but deeper than
    /// any bullpen parser (or the Rust SDK's) reads.
    #[error("is nested more than {MAX_DEPTH} levels deep (bullpen's limit for JSON)")]
    TooDeep,
    /// Not JSON at all.
    #[error("is not valid JSON: {0}")]
    Invalid(serde_json::Error),
}

/// Whether `text` follows the rule, checked without building a value.
/// (serde_json skips an ignored value without its recursion limit, so the
/// depth is counted separately, in one pass over the bytes.)
pub fn check(text: &str) -> Result<(), JsonProblem> {
    serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(JsonProblem::from)?;
    if depth(text.as_bytes()) > MAX_DEPTH {
        return Err(JsonProblem::TooDeep);
    }
    Ok(())
}

/// The deepest nesting of `[`/`{` outside strings, for text that is valid JSON.
fn depth(bytes: &[u8]) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in bytes {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

impl From<serde_json::Error> for JsonProblem {
    fn from(e: serde_json::Error) -> Self {
        // A full parse reports depth with a fixed text and no category of its own.
        if e.is_syntax() && e.to_string().starts_with("recursion limit exceeded") {
            JsonProblem::TooDeep
        } else {
            JsonProblem::Invalid(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> String {
        format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
    }

    fn nested_objects(depth: usize) -> String {
        format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))
    }

    #[test]
    fn max_depth_is_serde_jsons_limit() {
        check(&nested(MAX_DEPTH)).unwrap();
        check(&nested_objects(MAX_DEPTH)).unwrap();
        check(r#"[{"a":"[[[[{{\\\"]]"}]"#).unwrap();
        assert_eq!(depth(br#"[{"a":"[[[[{{\\\"]]"}, [1]]"#), 2);
        assert!(matches!(check(&nested(MAX_DEPTH + 1)), Err(JsonProblem::TooDeep)));
        assert!(matches!(check(&nested_objects(MAX_DEPTH + 1)), Err(JsonProblem::TooDeep)));
        // What bullmq-official's and the Rust SDK's full parse accepts too.
        serde_json::from_str::<serde_json::Value>(&nested(MAX_DEPTH)).unwrap();
        serde_json::from_str::<serde_json::Value>(&nested(MAX_DEPTH + 1)).unwrap_err();
    }

    #[test]
    fn problems_read_after_the_texts_name() {
        assert_eq!(
            format!("job data {}", check(&nested(500)).unwrap_err()),
            "job data is nested more than 127 levels deep (bullpen's limit for JSON)"
        );
        let e = check("{not json").unwrap_err().to_string();
        assert!(e.starts_with("is not valid JSON: key must be a string"), "{e}");
    }
}
