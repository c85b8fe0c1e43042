//! `/api/v1/templates` and `/api/v1/rules`: the recording model over HTTP. Entries show
//! `source: config|api`; config-defined ones are read-only (409 with the reason), a
//! template a rule uses cannot be deleted (409), and invalid input gets a 400 that names
//! the key, with the same checks `edgerec check-config` runs on the file.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::Value;

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

#[derive(Serialize)]
struct TemplateView {
    #[serde(flatten)]
    template: Template,
    source: Source,
}

#[derive(Serialize)]
struct RuleView {
    id: String,
    #[serde(flatten)]
    rule: Rule,
    source: Source,
}

/// Parses a JSON body into `T`, naming the offending key in a 400.
fn parse<T: serde::de::DeserializeOwned>(body: Value, what: &str) -> Result<T, ApiError> {
    serde_json::from_value(body).map_err(|e| ApiError::bad_request(format!("{what}: {e}")))
}

pub async fn list_templates(State(s): State<ApiState>) -> Json<Vec<Value>> {
    let views = s
        .recorders
        .catalog()
        .templates()
        .into_iter()
        .map(|(template, source)| {
            serde_json::to_value(TemplateView { template, source }).unwrap_or_default()
        })
        .collect();
    Json(views)
}

pub async fn get_template(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (template, source) = s
        .recorders
        .catalog()
        .templates()
        .into_iter()
        .find(|(t, _)| t.name == name)
        .ok_or_else(|| ApiError::not_found(format!("template {name:?}")))?;
    Ok(Json(
        serde_json::to_value(TemplateView { template, source }).unwrap_or_default(),
    ))
}

pub async fn create_template(
    State(s): State<ApiState>,
    Json(body): Json<Value>,
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

pub async fn replace_template(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    Json(mut body): Json<Value>,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(
        serde_json::to_value(TemplateView {
            template: t,
            source: Source::Api,
        })
        .unwrap_or_default(),
    ))
}

pub async fn delete_template(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.recorders.catalog().delete_template(&name)?;
    tracing::info!(template = %name, "template deleted over the API");
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list_rules(State(s): State<ApiState>) -> Json<Vec<Value>> {
    let views = s
        .recorders
        .catalog()
        .rules()
        .into_iter()
        .map(|(id, rule, source)| {
            serde_json::to_value(RuleView { id, rule, source }).unwrap_or_default()
        })
        .collect();
    Json(views)
}

pub async fn create_rule(
    State(s): State<ApiState>,
    Json(body): Json<Value>,
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

pub async fn delete_rule(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.recorders.catalog().delete_rule(&id)?;
    tracing::info!(rule = %id, "rule deleted over the API");
    Ok(StatusCode::NO_CONTENT)
}
