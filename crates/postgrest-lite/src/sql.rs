//! SQL quoting: every identifier and value that reaches PostgreSQL goes through here.

/// Quotes an identifier the way PostgreSQL's `quote_ident` always-quote mode does:
/// wraps it in double quotes and doubles embedded double quotes.
///
/// Returns `None` for names PostgreSQL cannot represent (empty or containing NUL).
pub fn quote_ident(name: &str) -> Option<String> {
    if name.is_empty() || name.contains('\0') {
        return None;
    }
    Some(format!("\"{}\"", name.replace('"', "\"\"")))
}

/// Quotes a value as an untyped string literal (`E'…'`), like libpq's `PQescapeLiteral`:
/// single quotes and backslashes are doubled and the `E` prefix makes the result mean the
/// same whatever `standard_conforming_strings` is. PostgreSQL infers the literal's type from
/// the column it is compared with, exactly like PostgREST's untyped parameters.
///
/// Returns `None` for values containing NUL (PostgreSQL text cannot hold it).
pub fn quote_literal(value: &str) -> Option<String> {
    if value.contains('\0') {
        return None;
    }
    Some(format!(
        "E'{}'",
        value.replace('\\', "\\\\").replace('\'', "''")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert_eq!(quote_ident("todos").unwrap(), "\"todos\"");
        assert_eq!(quote_ident("a\"b").unwrap(), "\"a\"\"b\"");
        assert_eq!(quote_ident("Mixed Case").unwrap(), "\"Mixed Case\"");
        assert!(quote_ident("").is_none());
        assert!(quote_ident("a\0b").is_none());
    }

    #[test]
    fn literals() {
        assert_eq!(quote_literal("abc").unwrap(), "E'abc'");
        assert_eq!(quote_literal("it's").unwrap(), "E'it''s'");
        assert_eq!(quote_literal("a\\'b").unwrap(), "E'a\\\\''b'");
        assert_eq!(
            quote_literal("1'; drop table x; --").unwrap(),
            "E'1''; drop table x; --'"
        );
        assert!(quote_literal("a\0").is_none());
    }
}
