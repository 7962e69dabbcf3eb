//! `${VAR}` and `${VAR:-default}` substitution, applied to the raw text before parsing.
//!
//! Substitution never spans lines, so line numbers of the parsed file still match the
//! file on disk. `$$` writes a literal `$`. An unset variable without a default is an
//! error (reported with its line and column), never an empty string.

use super::diagnostics::{Diagnostic, DiagnosticKind, Location};

/// Substitutes variables in `text`, looking them up with `lookup`.
pub fn substitute(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, Vec<Diagnostic>> {
    let mut out = String::with_capacity(text.len());
    let mut errors = Vec::new();
    for (line_idx, line) in text.split_inclusive('\n').enumerate() {
        let mut rest = line;
        let mut column = 1;
        while let Some(dollar) = rest.find('$') {
            out.push_str(&rest[..dollar]);
            column += rest[..dollar].chars().count();
            let after = &rest[dollar + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                out.push('$');
                rest = tail;
                column += 2;
                continue;
            }
            let Some(body) = after.strip_prefix('{') else {
                out.push('$');
                rest = after;
                column += 1;
                continue;
            };
            let location = Some(Location {
                line: line_idx + 1,
                column,
            });
            let Some(close) = body.find('}') else {
                errors.push(
                    Diagnostic::new(
                        DiagnosticKind::UnsetVariable,
                        "",
                        "`${` is not closed by `}` on this line",
                    )
                    .with_hint("write `${NAME}` or `${NAME:-default}`, or `$$` for a literal `$`")
                    .at(location),
                );
                out.push_str(&rest[dollar..]);
                rest = "";
                break;
            };
            let expr = &body[..close];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            let valid_name = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !valid_name {
                errors.push(
                    Diagnostic::new(
                        DiagnosticKind::UnsetVariable,
                        "",
                        format!("`${{{expr}}}` is not a valid variable reference"),
                    )
                    .with_hint("variable names use letters, digits and `_`, e.g. `${STRATA_KAFKA_BROKERS}`")
                    .at(location),
                );
            } else {
                match (lookup(name), default) {
                    (Some(value), _) if !value.is_empty() || default.is_none() => {
                        out.push_str(&value)
                    }
                    (_, Some(default)) => out.push_str(default),
                    (None, None) => errors.push(
                        Diagnostic::new(
                            DiagnosticKind::UnsetVariable,
                            "",
                            format!("environment variable `{name}` is not set and has no default"),
                        )
                        .with_hint(format!(
                            "export {name}=… before running, or write `${{{name}:-default}}`"
                        ))
                        .at(location),
                    ),
                    (Some(_), None) => unreachable!("covered by the first arm"),
                }
            }
            column += 3 + expr.chars().count();
            rest = &body[close + 1..];
        }
        out.push_str(rest);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("db.local".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn substitutes_set_default_and_literal() {
        let text = "a: ${HOST}\nb: ${PORT:-5432}\nc: $$HOME\nd: ${EMPTY:-x}\ne: ${EMPTY}\n";
        assert_eq!(
            substitute(text, &env).unwrap(),
            "a: db.local\nb: 5432\nc: $HOME\nd: x\ne: \n"
        );
    }

    #[test]
    fn reports_every_unset_variable_with_position() {
        let errors = substitute("a: 1\nb: ${NOPE}\nc: x ${ALSO_NOPE}\n", &env).unwrap_err();
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0].location, Some(Location { line: 2, column: 4 }));
        assert_eq!(errors[1].location, Some(Location { line: 3, column: 6 }));
        assert!(errors[0].message.contains("NOPE"));
    }

    #[test]
    fn rejects_unclosed_and_invalid_names() {
        assert!(substitute("a: ${OPEN\n", &env).is_err());
        assert!(substitute("a: ${1X}\n", &env).is_err());
    }
}
