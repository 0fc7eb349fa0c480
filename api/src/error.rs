//! The one mapping from errors to HTTP answers: status from the error's
//! class, a JSON body `{"error": {"code", "message", ...}}` that says what to
//! fix, and `Retry-After` on 429/503.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use honeycell_types::ErrorClass;
use serde_json::json;

/// An error answered to an HTTP client.
#[derive(Debug)]
pub struct ApiError {
    pub class: ErrorClass,
    pub code: &'static str,
    pub message: String,
    /// Index of the offending event in a batch, when there is one.
    pub index: Option<usize>,
    /// The missing permission of a 403.
    pub permission: Option<&'static str>,
}

impl ApiError {
    pub fn new(class: ErrorClass, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            class,
            code,
            message: message.into(),
            index: None,
            permission: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorClass::BadRequest, code, message)
    }

    pub fn at(mut self, index: usize) -> Self {
        self.index = Some(index);
        self
    }
}

impl From<honeycell_auth::Error> for ApiError {
    fn from(e: honeycell_auth::Error) -> Self {
        Self::new(e.class(), e.code(), e.to_string())
    }
}

impl From<honeycell_cell::Error> for ApiError {
    fn from(e: honeycell_cell::Error) -> Self {
        let class = e.class();
        let code = match &e {
            honeycell_cell::Error::RateLimited(_) => "rate_limited",
            honeycell_cell::Error::Admission { .. } | honeycell_cell::Error::BusFull { .. } => {
                "overloaded"
            }
            honeycell_cell::Error::BadCursor { .. } => "invalid_cursor",
            honeycell_cell::Error::Forbidden { .. }
            | honeycell_cell::Error::ScopeForbidden { .. } => "forbidden",
            honeycell_cell::Error::QuotaExceeded { .. } => "quota_exceeded",
            honeycell_cell::Error::TooManyConcurrent { .. } => "too_many_concurrent_requests",
            honeycell_cell::Error::BadFilter { .. } => "invalid_filter",
            honeycell_cell::Error::Storage(honeycell_storage::Error::Schema { .. }) => {
                "invalid_event"
            }
            _ => class.code(),
        };
        if class == ErrorClass::Internal {
            tracing::error!(error = %e, "internal error");
        }
        let permission = match &e {
            honeycell_cell::Error::Forbidden { permission, .. }
            | honeycell_cell::Error::ScopeForbidden { permission } => Some(*permission),
            _ => None,
        };
        let mut err = Self::new(class, code, e.to_string());
        err.permission = permission;
        // An event refused by storage's rules: its index in the batch.
        if let honeycell_cell::Error::Storage(honeycell_storage::Error::Schema { row, .. }) = &e {
            err.index = *row;
        }
        err
    }
}

impl From<honeycell_control::Error> for ApiError {
    fn from(e: honeycell_control::Error) -> Self {
        match e {
            honeycell_control::Error::Auth(a) => a.into(),
            honeycell_control::Error::Login {
                class,
                code,
                message,
            } => Self::new(class, code, message),
            e => {
                let class = e.class();
                if class == ErrorClass::Internal || class == ErrorClass::Unavailable {
                    tracing::error!(error = %e, "control plane store error");
                }
                Self::new(class, class.code(), e.to_string())
            }
        }
    }
}

impl From<honeycell_storage::Error> for ApiError {
    fn from(e: honeycell_storage::Error) -> Self {
        honeycell_cell::Error::from(e).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.class.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut body = json!({ "code": self.code, "message": self.message });
        if let Some(i) = self.index {
            body["index"] = json!(i);
        }
        if let Some(p) = self.permission {
            body["permission"] = json!(p);
        }
        let retry_after = match self.class {
            ErrorClass::Overloaded { retry_after } => {
                Some(retry_after.as_secs_f64().ceil().max(1.0) as u64)
            }
            ErrorClass::Unavailable => Some(1),
            _ => None,
        };
        if let Some(secs) = retry_after {
            body["retry_after_seconds"] = json!(secs);
        }
        let mut resp = (status, axum::Json(json!({ "error": body }))).into_response();
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.class == ErrorClass::Unauthenticated {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"honeycell\""),
            );
        }
        resp
    }
}
