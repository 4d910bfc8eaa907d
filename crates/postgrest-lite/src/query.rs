//! The read request: PostgREST's query-string syntax parsed into a [`ReadPlan`], and the
//! plan rendered into one SQL statement whose single row holds the JSON body (built by
//! PostgreSQL's `json_agg`, as PostgREST does) and the page size. Every value of the request
//! is a bound parameter of that statement ([`Params`]); only quoted identifiers are SQL text.

use crate::error::ApiError;
use crate::sql::{quote_ident, Params};

/// One item of `select=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SelectItem {
    /// `*`: every column.
    Star,
    /// A column, optionally renamed (`alias:column`).
    Column {
        /// Column name.
        name: String,
        /// Output key, when renamed.
        alias: Option<String>,
    },
}

/// A comparison operator of a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `eq` (`=`)
    Eq,
    /// `neq` (`<>`)
    Neq,
    /// `gt` (`>`)
    Gt,
    /// `gte` (`>=`)
    Gte,
    /// `lt` (`<`)
    Lt,
    /// `lte` (`<=`)
    Lte,
    /// `like` (`LIKE`, `*` means `%`)
    Like,
    /// `ilike` (`ILIKE`, `*` means `%`)
    ILike,
    /// `match` (`~`)
    Match,
    /// `imatch` (`~*`)
    IMatch,
}

impl CmpOp {
    fn sql(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::Neq => "<>",
            CmpOp::Gt => ">",
            CmpOp::Gte => ">=",
            CmpOp::Lt => "<",
            CmpOp::Lte => "<=",
            CmpOp::Like => "LIKE",
            CmpOp::ILike => "ILIKE",
            CmpOp::Match => "~",
            CmpOp::IMatch => "~*",
        }
    }
}

/// The right-hand side of `is.`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsValue {
    /// `is.null`
    Null,
    /// `is.not_null`
    NotNull,
    /// `is.true`
    True,
    /// `is.false`
    False,
    /// `is.unknown`
    Unknown,
}

/// What a filter tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterOp {
    /// A binary comparison with a value (sent as an untyped literal).
    Cmp(CmpOp, String),
    /// `is.null|not_null|true|false|unknown`.
    Is(IsValue),
    /// `in.(a,b,"c,d")`.
    In(Vec<String>),
}

/// One `column=[not.]op.value` filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// The column.
    pub column: String,
    /// `not.` prefix.
    pub negate: bool,
    /// The test.
    pub op: FilterOp,
}

/// One `order=` term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderTerm {
    /// The column.
    pub column: String,
    /// `desc` (default `asc`).
    pub descending: bool,
    /// `nullsfirst` → `Some(true)`, `nullslast` → `Some(false)`, else PostgreSQL's default.
    pub nulls_first: Option<bool>,
}

/// A parsed `GET /<relation>?…` request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReadPlan {
    /// `select=` items (empty means `*`).
    pub select: Vec<SelectItem>,
    /// Filters, ANDed.
    pub filters: Vec<Filter>,
    /// `order=` terms.
    pub order: Vec<OrderTerm>,
    /// `limit=`.
    pub limit: Option<u64>,
    /// `offset=`.
    pub offset: Option<u64>,
}

/// Decodes an `application/x-www-form-urlencoded` query string into pairs (`+` is a space,
/// `%XX` a byte; invalid UTF-8 is replaced), keeping order and repeated keys.
pub fn parse_query_string(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 3 <= bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn unsupported(what: &str, value: &str) -> ApiError {
    ApiError::parse(
        format!("\"failed to parse {what} ({value})\""),
        "postgrest-lite supports only plain columns here (no embedding, JSON paths or casts)",
    )
    .hint("see crates/postgrest-lite/README.md for the supported subset")
}

fn check_column(name: &str, what: &str, whole: &str) -> Result<(), ApiError> {
    if name.is_empty() || name.contains('\0') {
        return Err(ApiError::parse(
            format!("\"failed to parse {what} ({whole})\""),
            "empty column name",
        ));
    }
    if name.contains('(')
        || name.contains(')')
        || name.contains("->")
        || name.contains("::")
        || name.contains('!')
    {
        return Err(unsupported(what, whole));
    }
    Ok(())
}

impl ReadPlan {
    /// Parses the decoded query-string pairs. Unknown keys are filters on columns, as in
    /// PostgREST; `columns` and `on_conflict` are ignored (they only matter for writes).
    pub fn from_pairs(pairs: &[(String, String)]) -> Result<ReadPlan, ApiError> {
        let mut plan = ReadPlan::default();
        for (key, value) in pairs {
            match key.as_str() {
                "select" => plan.select = parse_select(value)?,
                "order" => plan.order = parse_order(value)?,
                "limit" => plan.limit = Some(parse_count("limit", value)?),
                "offset" => plan.offset = Some(parse_count("offset", value)?),
                "columns" | "on_conflict" => {}
                "and" | "or" | "not.and" | "not.or" => {
                    return Err(ApiError::parse(
                        format!("\"failed to parse logic tree ({value})\""),
                        "postgrest-lite does not support and=/or= logic trees",
                    ))
                }
                column => plan.filters.push(parse_filter(column, value)?),
            }
        }
        Ok(plan)
    }

    /// Renders the statement for `schema.relation`: one row, `body` (text, the JSON array)
    /// and `page_total` (bigint). Filter values, `limit` and `offset` are the returned
    /// parameters, referred to as `$1`, `$2`, … in the statement.
    pub fn to_sql(&self, schema: &str, relation: &str) -> Result<(String, Params), ApiError> {
        let mut params = Params::new();
        let bad =
            |what: &str| ApiError::parse(format!("invalid {what} name"), "names must be non-empty");
        let qrel = format!(
            "{}.{}",
            quote_ident(schema).ok_or_else(|| bad("schema"))?,
            quote_ident(relation).ok_or_else(|| bad("relation"))?
        );
        let col = |name: &str| -> Result<String, ApiError> {
            Ok(format!(
                "{qrel}.{}",
                quote_ident(name).ok_or_else(|| bad("column"))?
            ))
        };
        let mut lit = |v: &str| {
            params.push(v).ok_or_else(|| {
                ApiError::parse("invalid filter value", "values cannot contain NUL bytes")
            })
        };

        let select = if self.select.is_empty() {
            format!("{qrel}.*")
        } else {
            let mut items = Vec::new();
            for item in &self.select {
                items.push(match item {
                    SelectItem::Star => format!("{qrel}.*"),
                    SelectItem::Column { name, alias: None } => col(name)?,
                    SelectItem::Column {
                        name,
                        alias: Some(alias),
                    } => format!(
                        "{} AS {}",
                        col(name)?,
                        quote_ident(alias).ok_or_else(|| bad("alias"))?
                    ),
                });
            }
            items.join(", ")
        };

        let mut sql = format!("SELECT {select} FROM {qrel}");
        if !self.filters.is_empty() {
            let mut conds = Vec::new();
            for f in &self.filters {
                let c = col(&f.column)?;
                let cond = match &f.op {
                    FilterOp::Cmp(op, v) => {
                        let v = match op {
                            CmpOp::Like | CmpOp::ILike => v.replace('*', "%"),
                            _ => v.clone(),
                        };
                        format!("{c} {} {}", op.sql(), lit(&v)?)
                    }
                    FilterOp::Is(is) => format!(
                        "{c} IS {}",
                        match is {
                            IsValue::Null => "NULL",
                            IsValue::NotNull => "NOT NULL",
                            IsValue::True => "TRUE",
                            IsValue::False => "FALSE",
                            IsValue::Unknown => "UNKNOWN",
                        }
                    ),
                    FilterOp::In(values) if values.is_empty() => "false".to_string(),
                    FilterOp::In(values) => {
                        let list: Result<Vec<_>, _> = values.iter().map(|v| lit(v)).collect();
                        format!("{c} IN ({})", list?.join(", "))
                    }
                };
                conds.push(if f.negate {
                    format!("NOT ({cond})")
                } else {
                    cond
                });
            }
            sql.push_str(" WHERE ");
            sql.push_str(&conds.join(" AND "));
        }
        if !self.order.is_empty() {
            let mut terms = Vec::new();
            for t in &self.order {
                let mut term = col(&t.column)?;
                term.push_str(if t.descending { " DESC" } else { " ASC" });
                match t.nulls_first {
                    Some(true) => term.push_str(" NULLS FIRST"),
                    Some(false) => term.push_str(" NULLS LAST"),
                    None => {}
                }
                terms.push(term);
            }
            sql.push_str(" ORDER BY ");
            sql.push_str(&terms.join(", "));
        }
        if let Some(limit) = self.limit {
            sql.push_str(&format!(" LIMIT {}::bigint", lit(&limit.to_string())?));
        }
        if let Some(offset) = self.offset {
            sql.push_str(&format!(" OFFSET {}::bigint", lit(&offset.to_string())?));
        }
        Ok((
            format!(
                "SELECT coalesce(json_agg(_postgrest_t), '[]')::text AS body, \
                 pg_catalog.count(_postgrest_t) AS page_total FROM ({sql}) _postgrest_t"
            ),
            params,
        ))
    }
}

fn parse_count(what: &str, value: &str) -> Result<u64, ApiError> {
    value.trim().parse::<u64>().map_err(|_| {
        ApiError::parse(
            format!("\"failed to parse {what} parameter ({value})\""),
            format!("{what} must be a non-negative integer"),
        )
    })
}

/// Splits on commas that are outside double quotes and parentheses.
fn split_top_level(s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut depth = 0usize;
    let mut quoted = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            '\\' if quoted => {
                cur.push(c);
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            '(' if !quoted => {
                depth += 1;
                cur.push(c);
            }
            ')' if !quoted => {
                depth = depth.saturating_sub(1);
                cur.push(c);
            }
            ',' if !quoted && depth == 0 => parts.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    parts.push(cur);
    parts
}

fn parse_select(value: &str) -> Result<Vec<SelectItem>, ApiError> {
    if value.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut items = Vec::new();
    for raw in split_top_level(value) {
        let item = raw.trim();
        if item == "*" {
            items.push(SelectItem::Star);
            continue;
        }
        let (alias, name) = match item.split_once(':') {
            Some((a, n)) if !n.starts_with(':') && !a.ends_with(':') => {
                (Some(a.trim().to_string()), n.trim())
            }
            _ => (None, item),
        };
        check_column(name, "select parameter", value)?;
        if let Some(a) = &alias {
            check_column(a, "select parameter", value)?;
        }
        items.push(SelectItem::Column {
            name: name.to_string(),
            alias,
        });
    }
    Ok(items)
}

fn parse_order(value: &str) -> Result<Vec<OrderTerm>, ApiError> {
    let mut terms = Vec::new();
    for raw in split_top_level(value) {
        let mut parts = raw.trim().split('.');
        let column = parts.next().unwrap_or("").to_string();
        check_column(&column, "order", value)?;
        let mut term = OrderTerm {
            column,
            descending: false,
            nulls_first: None,
        };
        let mut seen_dir = false;
        let mut seen_nulls = false;
        for modifier in parts {
            match modifier {
                "asc" | "desc" if !seen_dir && !seen_nulls => {
                    term.descending = modifier == "desc";
                    seen_dir = true;
                }
                "nullsfirst" | "nullslast" if !seen_nulls => {
                    term.nulls_first = Some(modifier == "nullsfirst");
                    seen_nulls = true;
                }
                other => {
                    return Err(ApiError::parse(
                        format!("\"failed to parse order ({value})\""),
                        format!(
                            "unexpected {other:?} expecting \"asc\", \"desc\", \"nullsfirst\" or \"nullslast\""
                        ),
                    ))
                }
            }
        }
        terms.push(term);
    }
    Ok(terms)
}

fn parse_filter(column: &str, value: &str) -> Result<Filter, ApiError> {
    let whole = format!("{column}={value}");
    if column.contains('.') {
        return Err(ApiError::parse(
            format!("\"failed to parse filter ({whole})\""),
            "postgrest-lite does not support filters on embedded resources",
        ));
    }
    check_column(column, "filter", &whole)?;
    let fail =
        |details: String| ApiError::parse(format!("\"failed to parse filter ({value})\""), details);
    let (negate, rest) = match value.strip_prefix("not.") {
        Some(rest) => (true, rest),
        None => (false, value),
    };
    let Some((op, operand)) = rest.split_once('.') else {
        return Err(fail(format!(
            "expected an operator followed by \".\" in {value:?} (e.g. {column}=eq.1); \
             operators: eq, neq, gt, gte, lt, lte, like, ilike, match, imatch, is, in"
        )));
    };
    let cmp = |op| Ok(FilterOp::Cmp(op, operand.to_string()));
    let op = match op {
        "eq" => cmp(CmpOp::Eq),
        "neq" => cmp(CmpOp::Neq),
        "gt" => cmp(CmpOp::Gt),
        "gte" => cmp(CmpOp::Gte),
        "lt" => cmp(CmpOp::Lt),
        "lte" => cmp(CmpOp::Lte),
        "like" => cmp(CmpOp::Like),
        "ilike" => cmp(CmpOp::ILike),
        "match" => cmp(CmpOp::Match),
        "imatch" => cmp(CmpOp::IMatch),
        "is" => match operand.to_ascii_lowercase().as_str() {
            "null" => Ok(FilterOp::Is(IsValue::Null)),
            "not_null" => Ok(FilterOp::Is(IsValue::NotNull)),
            "true" => Ok(FilterOp::Is(IsValue::True)),
            "false" => Ok(FilterOp::Is(IsValue::False)),
            "unknown" => Ok(FilterOp::Is(IsValue::Unknown)),
            _ => Err(fail(format!(
                "unexpected {operand:?} expecting null, not_null, true, false or unknown"
            ))),
        },
        "in" => parse_in_list(operand).map(FilterOp::In).map_err(fail),
        other => Err(fail(format!(
            "unknown operator {other:?}; expecting eq, neq, gt, gte, lt, lte, like, ilike, \
             match, imatch, is or in"
        ))),
    }?;
    Ok(Filter {
        column: column.to_string(),
        negate,
        op,
    })
}

/// Parses `(a,b,"c,d")`: comma-separated, elements optionally double-quoted with `\`
/// escapes.
fn parse_in_list(operand: &str) -> Result<Vec<String>, String> {
    let inner = operand
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| format!("expected a list in parentheses, e.g. in.(1,2), got {operand:?}"))?;
    if inner.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut values = Vec::new();
    for raw in split_top_level(inner) {
        let item = raw.trim();
        if let Some(body) = item.strip_prefix('"') {
            let body = body
                .strip_suffix('"')
                .ok_or_else(|| format!("unterminated quoted value {item:?}"))?;
            let mut v = String::new();
            let mut chars = body.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    v.extend(chars.next());
                } else {
                    v.push(c);
                }
            }
            values.push(v);
        } else {
            values.push(item.to_string());
        }
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(q: &str) -> Result<ReadPlan, ApiError> {
        ReadPlan::from_pairs(&parse_query_string(q))
    }

    fn sql(q: &str) -> String {
        plan(q).unwrap().to_sql("api", "todos").unwrap().0
    }

    fn params(q: &str) -> Vec<String> {
        let (_, params) = plan(q).unwrap().to_sql("api", "todos").unwrap();
        params.values().iter().map(|p| p.0.clone()).collect()
    }

    #[test]
    fn decoding() {
        assert_eq!(
            parse_query_string("a=b+c&d=%22x%2Cy%22&e&f=%zz&g=%4"),
            vec![
                ("a".into(), "b c".into()),
                ("d".into(), "\"x,y\"".into()),
                ("e".into(), "".into()),
                ("f".into(), "%zz".into()),
                ("g".into(), "%4".into()),
            ]
        );
    }

    #[test]
    fn plain_get() {
        insta::assert_snapshot!(sql(""), @r#"SELECT coalesce(json_agg(_postgrest_t), '[]')::text AS body, pg_catalog.count(_postgrest_t) AS page_total FROM (SELECT "api"."todos".* FROM "api"."todos") _postgrest_t"#);
        assert!(params("").is_empty());
    }

    #[test]
    fn everything() {
        let q = "select=id,name:task&id=gt.1&done=is.false&task=like.*tut*&id=not.in.(1,\"2,3\")&order=due.desc.nullslast,id&limit=5&offset=2";
        insta::assert_snapshot!(
            sql(q),
            @r#"SELECT coalesce(json_agg(_postgrest_t), '[]')::text AS body, pg_catalog.count(_postgrest_t) AS page_total FROM (SELECT "api"."todos"."id", "api"."todos"."task" AS "name" FROM "api"."todos" WHERE "api"."todos"."id" > $1 AND "api"."todos"."done" IS FALSE AND "api"."todos"."task" LIKE $2 AND NOT ("api"."todos"."id" IN ($3, $4)) ORDER BY "api"."todos"."due" DESC NULLS LAST, "api"."todos"."id" ASC LIMIT $5::bigint OFFSET $6::bigint) _postgrest_t"#
        );
        assert_eq!(params(q), ["1", "%tut%", "1", "2,3", "5", "2"]);
    }

    #[test]
    fn values_are_parameters_not_sql() {
        let q = "id=eq.1';drop table api.todos;--&x\"y=neq.a\\'b&order=a\"b.asc";
        insta::assert_snapshot!(
            sql(q),
            @r#"SELECT coalesce(json_agg(_postgrest_t), '[]')::text AS body, pg_catalog.count(_postgrest_t) AS page_total FROM (SELECT "api"."todos".* FROM "api"."todos" WHERE "api"."todos"."id" = $1 AND "api"."todos"."x""y" <> $2 ORDER BY "api"."todos"."a""b" ASC) _postgrest_t"#
        );
        assert_eq!(params(q), ["1';drop table api.todos;--", "a\\'b"]);
        let (s, _) = plan("").unwrap().to_sql("a\"pi", "to\"dos").unwrap();
        assert!(s.contains(r#"FROM "a""pi"."to""dos")"#), "{s}");
        // No value of any filter appears in the statement text.
        let hostile = "'; drop table todos; --";
        for op in ["eq", "neq", "gt", "lte", "like", "ilike", "match", "imatch"] {
            let q = format!("task={op}.{hostile}&id=in.({hostile},\"{hostile}\")");
            let text = sql(&q);
            assert!(!text.contains("drop"), "{op}: {text}");
            assert_eq!(params(&q).len(), 3, "{op}");
        }
        let e = plan("task=eq.a%00b")
            .unwrap()
            .to_sql("api", "todos")
            .unwrap_err();
        assert_eq!(e.code, "PGRST100");
    }

    #[test]
    fn empty_in_and_is() {
        assert!(sql("id=in.()").contains("WHERE false"));
        assert!(sql("id=not.in.()").contains("WHERE NOT (false)"));
        assert!(sql("due=is.NULL").contains("\"due\" IS NULL"));
        assert!(sql("due=is.not_null").contains("\"due\" IS NOT NULL"));
    }

    #[test]
    fn parse_errors_are_pgrst100() {
        for q in [
            "id=1",
            "id=xx.1",
            "id=is.maybe",
            "id=in.1,2",
            "order=id.sideways",
            "order=id.nullsfirst.asc",
            "limit=-1",
            "offset=x",
            "select=todos(*)",
            "select=data->a",
            "select=id::text",
            "or=(id.eq.1)",
            "rel.id=eq.1",
            "=eq.1",
        ] {
            let e = plan(q).unwrap_err();
            assert_eq!(e.code, "PGRST100", "{q}");
            assert_eq!(e.status.as_u16(), 400, "{q}");
        }
        assert_eq!(
            plan("id=xx.1").unwrap_err().body(),
            r#"{"code":"PGRST100","details":"unknown operator \"xx\"; expecting eq, neq, gt, gte, lt, lte, like, ilike, match, imatch, is or in","hint":null,"message":"\"failed to parse filter (xx.1)\""}"#
        );
    }
}
