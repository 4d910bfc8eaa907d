//! HTTP errors in PostgREST's JSON shape (`{"code","details","hint","message"}`) with
//! PostgREST's status codes.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// An error response: PostgREST's JSON body plus the HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// SQLSTATE (e.g. `42501`) or PostgREST code (e.g. `PGRST100`).
    pub code: String,
    /// The `message` field.
    pub message: String,
    /// The `details` field (`null` when absent).
    pub details: Option<String>,
    /// The `hint` field (`null` when absent).
    pub hint: Option<String>,
}

impl ApiError {
    /// A PostgREST-side error (code `PGRST…`).
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code: code.to_string(),
            message: message.into(),
            details: None,
            hint: None,
        }
    }

    /// Sets `details`.
    pub fn details(mut self, details: impl Into<String>) -> ApiError {
        self.details = Some(details.into());
        self
    }

    /// Sets `hint`.
    pub fn hint(mut self, hint: impl Into<String>) -> ApiError {
        self.hint = Some(hint.into());
        self
    }

    /// A query-string parse error (PostgREST's `PGRST100`, HTTP 400).
    pub fn parse(message: impl Into<String>, details: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "PGRST100", message).details(details)
    }

    /// Maps an error from PostgreSQL to PostgREST's response. `anonymous` is true for requests
    /// without a JWT (always, in postgrest-lite): then permission errors are 401, else 403.
    pub fn from_db(err: &tokio_postgres::Error, anonymous: bool) -> ApiError {
        match err.as_db_error() {
            Some(db) => {
                let code = db.code().code();
                ApiError {
                    status: status_for_sqlstate(code, anonymous),
                    code: code.to_string(),
                    message: db.message().to_string(),
                    details: db.detail().map(str::to_string),
                    hint: db.hint().map(str::to_string),
                }
            }
            None => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "PGRST001",
                "Database client error. Retrying the connection.",
            )
            .details(err.to_string()),
        }
    }

    /// The JSON body, keys in PostgREST's order.
    pub fn body(&self) -> String {
        serde_json::json!({
            "code": self.code,
            "details": self.details,
            "hint": self.hint,
            "message": self.message,
        })
        .to_string()
    }
}

/// PostgREST's SQLSTATE → HTTP status table (v12).
pub fn status_for_sqlstate(code: &str, anonymous: bool) -> StatusCode {
    let class = code.get(..2).unwrap_or("");
    let status = match code {
        "23503" | "23505" => 409,
        "25006" => 405,
        "42883" | "42P01" => 404,
        "42501" => {
            if anonymous {
                401
            } else {
                403
            }
        }
        "53400" => 500,
        "P0001" => 400,
        _ => match class {
            "08" => 503,
            "09" => 500,
            "0L" | "0P" => 403,
            "25" => 500,
            "28" => 403,
            "2D" | "38" | "39" | "3B" | "40" => 500,
            "53" => 503,
            "54" | "55" | "57" | "58" | "F0" | "HV" | "XX" => 500,
            "PT" => code
                .get(2..)
                .and_then(|s| s.parse::<u16>().ok())
                .unwrap_or(500),
            _ => 400,
        },
    };
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, self.body()).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(crate::JSON_CONTENT_TYPE),
        );
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(status_for_sqlstate("42P01", true), StatusCode::NOT_FOUND);
        assert_eq!(status_for_sqlstate("42501", true), StatusCode::UNAUTHORIZED);
        assert_eq!(status_for_sqlstate("42501", false), StatusCode::FORBIDDEN);
        assert_eq!(status_for_sqlstate("42703", true), StatusCode::BAD_REQUEST);
        assert_eq!(status_for_sqlstate("22P02", true), StatusCode::BAD_REQUEST);
        assert_eq!(
            status_for_sqlstate("08006", true),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(status_for_sqlstate("PT418", true).as_u16(), 418);
    }

    #[test]
    fn body_shape() {
        let e = ApiError::parse("bad", "why");
        assert_eq!(
            e.body(),
            r#"{"code":"PGRST100","details":"why","hint":null,"message":"bad"}"#
        );
    }
}
