//! `/api/v1/templates` and `/api/v1/rules`: the recording model over HTTP. Entries show
//! `source: config|api`; config-defined ones are read-only (409 with the reason), a
//! template a rule uses cannot be deleted (409), and invalid input gets a 400 that names
//! the key, with the same checks `edgerec check-config` runs on the file.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::Value;

use super::extract::{JsonBody, Path};
#[cfg(test)]
use super::ErrorBody;
use super::{ApiError, ApiState};
use crate::config::{Rule, Template};
use crate::record::catalog::{CatalogError, Source};

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> ApiError {
        match e {
            CatalogError::Invalid(m) => ApiError::bad_request(m),
            CatalogError::Conflict(m) => ApiError::conflict(m),
            CatalogError::NotFound(what) => ApiError::not_found(what),
            CatalogError::Index(e) => e.into(),
        }
    }
}

/// A template and where it was defined.
#[derive(Serialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub struct TemplateView {
    #[serde(flatten)]
    template: Template,
    source: Source,
}

/// A rule, its id and where it was defined.
#[derive(Serialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub struct RuleView {
    id: String,
    #[serde(flatten)]
    rule: Rule,
    source: Source,
}

/// Parses a JSON body into `T`, naming the offending key in a 400.
fn parse<T: serde::de::DeserializeOwned>(body: Value, what: &str) -> Result<T, ApiError> {
    serde_json::from_value(body).map_err(|e| ApiError::bad_request(format!("{what}: {e}")))
}

#[cfg_attr(test, utoipa::path(get, path = "/api/v1/templates", tag = "recording model",
    responses((status = 200, description = "Every template, the built-in `default` included", body = Vec<TemplateView>))))]
pub async fn list_templates(State(s): State<ApiState>) -> Json<Vec<TemplateView>> {
    let views = s
        .recorders
        .catalog()
        .templates()
        .into_iter()
        .map(|(template, source)| TemplateView { template, source })
        .collect();
    Json(views)
}

#[cfg_attr(test, utoipa::path(get, path = "/api/v1/templates/{name}", tag = "recording model",
    params(("name" = String, Path, description = "The template's name")),
    responses(
        (status = 200, description = "The template", body = TemplateView),
        (status = 400, description = "A malformed path", body = ErrorBody),
        (status = 404, description = "No such template", body = ErrorBody),
    )))]
pub async fn get_template(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<TemplateView>, ApiError> {
    let (template, source) = s
        .recorders
        .catalog()
        .templates()
        .into_iter()
        .find(|(t, _)| t.name == name)
        .ok_or_else(|| ApiError::not_found(format!("template {name:?}")))?;
    Ok(Json(TemplateView { template, source }))
}

/// Applies to publishes that start after it.
#[cfg_attr(test, utoipa::path(post, path = "/api/v1/templates", tag = "recording model",
    request_body = crate::config::Template,
    responses(
        (status = 201, description = "Created", body = TemplateView),
        (status = 400, description = "Invalid: the message names the key", body = ErrorBody),
        (status = 409, description = "The name is taken", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
    )))]
pub async fn create_template(
    State(s): State<ApiState>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let t: Template = parse(body, "template")?;
    s.recorders.catalog().put_template(t.clone(), false)?;
    tracing::info!(template = %t.name, "template created over the API");
    let view = TemplateView {
        template: t,
        source: Source::Api,
    };
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// Applies to publishes that start after it; `name` may be left out of the body.
#[cfg_attr(test, utoipa::path(put, path = "/api/v1/templates/{name}", tag = "recording model",
    params(("name" = String, Path, description = "The template's name")),
    request_body = crate::config::Template,
    responses(
        (status = 200, description = "Replaced", body = TemplateView),
        (status = 400, description = "Invalid: the message names the key", body = ErrorBody),
        (status = 404, description = "No such template", body = ErrorBody),
        (status = 409, description = "Defined in the config file: read-only", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
    )))]
pub async fn replace_template(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    JsonBody(mut body): JsonBody<Value>,
) -> Result<Json<TemplateView>, ApiError> {
    match body.get("name").and_then(Value::as_str) {
        Some(n) if n != name => {
            return Err(ApiError::bad_request(format!(
                "template.name {n:?} differs from the path's {name:?}"
            )))
        }
        Some(_) => {}
        None => {
            if let Some(obj) = body.as_object_mut() {
                obj.insert("name".into(), Value::String(name.clone()));
            }
        }
    }
    let t: Template = parse(body, "template")?;
    s.recorders.catalog().put_template(t.clone(), true)?;
    tracing::info!(template = %t.name, "template replaced over the API (applies to the next publish)");
    Ok(Json(TemplateView {
        template: t,
        source: Source::Api,
    }))
}

#[cfg_attr(test, utoipa::path(delete, path = "/api/v1/templates/{name}", tag = "recording model",
    params(("name" = String, Path, description = "The template's name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "A malformed path", body = ErrorBody),
        (status = 404, description = "No such template", body = ErrorBody),
        (status = 409, description = "Read-only (config), or a rule or a task that has not ended uses it", body = ErrorBody),
    )))]
pub async fn delete_template(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    if let Some(task) = s.tasks.using_template(&name)? {
        return Err(ApiError::conflict(format!(
            "template {name} is used by task {task}, which has not ended; cancel it first"
        )));
    }
    s.recorders.catalog().delete_template(&name)?;
    tracing::info!(template = %name, "template deleted over the API");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg_attr(test, utoipa::path(get, path = "/api/v1/rules", tag = "recording model",
    responses((status = 200, description = "Every rule", body = Vec<RuleView>))))]
pub async fn list_rules(State(s): State<ApiState>) -> Json<Vec<RuleView>> {
    let views = s
        .recorders
        .catalog()
        .rules()
        .into_iter()
        .map(|(id, rule, source)| RuleView { id, rule, source })
        .collect();
    Json(views)
}

/// Applies to publishes that start after it.
#[cfg_attr(test, utoipa::path(post, path = "/api/v1/rules", tag = "recording model",
    request_body = crate::config::Rule,
    responses(
        (status = 201, description = "Created", body = RuleView),
        (status = 400, description = "Invalid: the message names the key", body = ErrorBody),
        (status = 409, description = "A rule for the same app and stream exists", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
    )))]
pub async fn create_rule(
    State(s): State<ApiState>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let rule: Rule = parse(body, "rule")?;
    let id = s.recorders.catalog().add_rule(rule.clone())?;
    tracing::info!(rule = %id, target = %rule.target(), "rule created over the API (applies to the next publish)");
    let view = RuleView {
        id,
        rule,
        source: Source::Api,
    };
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[cfg_attr(test, utoipa::path(delete, path = "/api/v1/rules/{id}", tag = "recording model",
    params(("id" = String, Path, description = "The rule's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "A malformed path", body = ErrorBody),
        (status = 404, description = "No such rule", body = ErrorBody),
        (status = 409, description = "Defined in the config file: read-only", body = ErrorBody),
    )))]
pub async fn delete_rule(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.recorders.catalog().delete_rule(&id)?;
    tracing::info!(rule = %id, "rule deleted over the API");
    Ok(StatusCode::NO_CONTENT)
}
