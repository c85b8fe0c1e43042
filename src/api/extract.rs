//! Request extractors whose rejections are the API's JSON errors: axum's own answer a
//! malformed body, query or path with a `text/plain` message, which a client reading
//! `{"error": ...}` (and the OpenAPI description) would not expect. Same statuses and
//! messages as axum's, in the API's shape.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts};

use super::ApiError;

/// A JSON request body.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct JsonBody<T>(pub T);

/// The query string.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// The path's parameters.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

macro_rules! rejection_is_api_error {
    ($($rejection:ty),*) => {$(
        impl From<$rejection> for ApiError {
            fn from(r: $rejection) -> ApiError {
                ApiError { status: r.status(), message: r.body_text() }
            }
        }
    )*};
}

rejection_is_api_error!(JsonRejection, QueryRejection, PathRejection);
