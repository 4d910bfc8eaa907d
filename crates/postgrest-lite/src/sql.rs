//! SQL building blocks: quoted identifiers, and bound parameters for every value.
//!
//! Identifiers (schema, relation, columns, aliases) cannot be parameters in SQL, so they are
//! quoted here. Values never become SQL text: a statement refers to them as `$1`, `$2`, … and
//! they travel separately, in the protocol's Bind message, as [`TextParam`]s.

use std::error::Error;

use bytes::BytesMut;
use tokio_postgres::types::{Format, IsNull, ToSql, Type};

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

/// A value sent as an untyped text parameter, like PostgREST's: declared `unknown` so
/// PostgreSQL infers its type from where it is used (`"id" = $1` makes it an integer) and
/// parses the text with that type's input function (so `abc` for an integer column is
/// PostgreSQL's `22P02`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextParam(pub String);

impl TextParam {
    /// The parameter type declared in the Parse message: `unknown`, resolved by PostgreSQL.
    pub const TYPE: Type = Type::UNKNOWN;
}

impl ToSql for TextParam {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        out.extend_from_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    fn encode_format(&self, _ty: &Type) -> Format {
        Format::Text
    }

    tokio_postgres::types::to_sql_checked!();
}

/// The values of one statement, in `$n` order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(Vec<TextParam>);

impl Params {
    /// No values yet.
    pub fn new() -> Params {
        Params::default()
    }

    /// Adds `value` and returns its placeholder (`$1`, `$2`, …). `None` for values containing
    /// NUL, which PostgreSQL text cannot hold.
    pub fn push(&mut self, value: &str) -> Option<String> {
        if value.contains('\0') {
            return None;
        }
        self.0.push(TextParam(value.to_string()));
        Some(format!("${}", self.0.len()))
    }

    /// The values, in order.
    pub fn values(&self) -> &[TextParam] {
        &self.0
    }

    /// The values with their declared type, as `Client::query_typed` takes them.
    pub fn typed(&self) -> Vec<(&(dyn ToSql + Sync), Type)> {
        self.0
            .iter()
            .map(|p| (p as &(dyn ToSql + Sync), TextParam::TYPE))
            .collect()
    }
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
    fn params_are_placeholders() {
        let mut p = Params::new();
        assert_eq!(p.push("1'; drop table x; --").unwrap(), "$1");
        assert_eq!(p.push("a\\'b").unwrap(), "$2");
        assert!(p.push("a\0").is_none());
        assert_eq!(
            p.values(),
            [
                TextParam("1'; drop table x; --".into()),
                TextParam("a\\'b".into())
            ]
        );
        let mut buf = BytesMut::new();
        let v = &p.values()[0];
        assert!(matches!(v.to_sql(&Type::INT4, &mut buf), Ok(IsNull::No)));
        assert_eq!(&buf[..], b"1'; drop table x; --");
        assert!(matches!(v.encode_format(&Type::INT4), Format::Text));
        assert_eq!(p.typed().len(), 2);
    }
}
