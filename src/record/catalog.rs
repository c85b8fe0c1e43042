//! The recording model in force: the templates and rules from the config file, and those
//! made over the API (persisted in the index), and the decision of what a new publish
//! records.
//!
//! Owns [`Catalog`]: cheap to clone, shared by the recorder (asked once per publish: rule
//! changes apply to the next publish, never to a stream already live) and the API, and the
//! rules for changing it: config-defined entries are read-only, names are unique, a rule
//! must name an existing template, and a template a rule uses cannot be deleted. The
//! validation of one template or rule lives in `config::templates`.

use std::sync::{Arc, RwLock};

use serde::Serialize;

use crate::config::templates::{resolve, Decision, DEFAULT_TEMPLATE};
use crate::config::{Rule, Template};
use crate::index::{Index, IndexError};

/// Where a template or rule was defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub enum Source {
    /// The config file (or the built-in default): read-only over the API.
    Config,
    /// Made over the API, persisted in the index.
    Api,
}

#[derive(Debug, Default)]
struct Model {
    templates: Vec<(Template, Source)>,
    /// With their ids (`config-N` for the file's, random for the API's).
    rules: Vec<(String, Rule, Source)>,
}

/// A refused change, with the HTTP status it maps to.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The input is invalid (400): every problem, each naming its key.
    #[error("{0}")]
    Invalid(String),
    /// The change conflicts with what exists (409).
    #[error("{0}")]
    Conflict(String),
    /// No such template or rule (404).
    #[error("{0} not found")]
    NotFound(String),
    #[error(transparent)]
    Index(#[from] IndexError),
}

/// The templates and rules in force.
#[derive(Clone)]
pub struct Catalog {
    model: Arc<RwLock<Model>>,
    /// Where API changes are persisted (None: a catalog of the config file only).
    index: Option<Index>,
    builtin: Arc<Template>,
    /// `record.flow_continue_duration_s`: the resume window of templates that set none.
    default_window_s: u32,
}

/// What a new publish of a stream records.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    Record(Box<Template>),
    /// A rule with `enabled = false` covers the stream: accept it, record nothing.
    Off,
}

impl Catalog {
    pub fn new(templates: &[Template], rules: &[Rule], default_window_s: u32) -> Catalog {
        let model = Model {
            templates: templates
                .iter()
                .map(|t| (t.clone(), Source::Config))
                .collect(),
            rules: rules
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("config-{}", i + 1), r.clone(), Source::Config))
                .collect(),
        };
        Catalog {
            model: Arc::new(RwLock::new(model)),
            index: None,
            builtin: Arc::new(Template::builtin_default()),
            default_window_s,
        }
    }

    /// The config file's templates and rules plus those the API made (from `index`). An
    /// API template whose name is now in the config file is skipped with a warning (the
    /// config's wins), not dropped from the index.
    pub fn load(
        index: &Index,
        templates: &[Template],
        rules: &[Rule],
        default_window_s: u32,
    ) -> Result<Catalog, IndexError> {
        let mut catalog = Catalog::new(templates, rules, default_window_s);
        catalog.index = Some(index.clone());
        {
            let mut model = catalog.write();
            for (name, json) in index.api_templates()? {
                match serde_json::from_value::<Template>(json) {
                    Ok(t) if !model.templates.iter().any(|(o, _)| o.name == t.name) => {
                        model.templates.push((t, Source::Api))
                    }
                    Ok(_) => {
                        tracing::warn!(template = %name, "an API template has the name of a config template; the config's is used")
                    }
                    Err(e) => {
                        tracing::warn!(template = %name, error = %e, "skipping an unreadable API template")
                    }
                }
            }
            for (id, json) in index.api_rules()? {
                match serde_json::from_value::<Rule>(json) {
                    Ok(r) => model.rules.push((id, r, Source::Api)),
                    Err(e) => {
                        tracing::warn!(rule = %id, error = %e, "skipping an unreadable API rule")
                    }
                }
            }
        }
        Ok(catalog)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Model> {
        self.model.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Model> {
        self.model.write().unwrap_or_else(|p| p.into_inner())
    }

    fn persist(&self) -> Result<&Index, CatalogError> {
        self.index
            .as_ref()
            .ok_or_else(|| CatalogError::Conflict("this catalog cannot be changed".into()))
    }

    /// Creates (`replace` false) or replaces (`replace` true) an API template.
    pub fn put_template(&self, t: Template, replace: bool) -> Result<(), CatalogError> {
        let problems = t.problems("template");
        if !problems.is_empty() {
            let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
            return Err(CatalogError::Invalid(text.join("; ")));
        }
        let index = self.persist()?;
        let mut model = self.write();
        match model.templates.iter().position(|(o, _)| o.name == t.name) {
            Some(i) if model.templates[i].1 == Source::Config => {
                return Err(CatalogError::Conflict(format!(
                    "template {:?} is defined in the config file and cannot be changed over the API",
                    t.name
                )))
            }
            Some(_) if !replace => {
                return Err(CatalogError::Conflict(format!(
                    "template {:?} already exists; PUT /api/v1/templates/{} replaces it",
                    t.name, t.name
                )))
            }
            None if replace && t.name != DEFAULT_TEMPLATE => {
                return Err(CatalogError::NotFound(format!("template {:?}", t.name)))
            }
            _ => {}
        }
        let json = serde_json::to_value(&t).map_err(|e| CatalogError::Invalid(e.to_string()))?;
        index.put_api_template(&t.name, &json)?;
        model.templates.retain(|(o, _)| o.name != t.name);
        model.templates.push((t, Source::Api));
        Ok(())
    }

    /// Deletes an API template no rule uses.
    pub fn delete_template(&self, name: &str) -> Result<(), CatalogError> {
        let index = self.persist()?;
        let mut model = self.write();
        match model.templates.iter().find(|(t, _)| t.name == name) {
            None if name == DEFAULT_TEMPLATE => {
                return Err(CatalogError::Conflict(
                    "the built-in template \"default\" cannot be deleted".into(),
                ))
            }
            None => return Err(CatalogError::NotFound(format!("template {name:?}"))),
            Some((_, Source::Config)) => {
                return Err(CatalogError::Conflict(format!(
                    "template {name:?} is defined in the config file and cannot be deleted over the API"
                )))
            }
            Some(_) => {}
        }
        let user = model
            .rules
            .iter()
            .find(|(_, r, _)| r.enabled && r.template.as_deref() == Some(name));
        if let Some((id, r, _)) = user {
            return Err(CatalogError::Conflict(format!(
                "template {name:?} is used by rule {id} ({}); delete the rule first",
                r.target()
            )));
        }
        index.remove_api_template(name)?;
        model.templates.retain(|(t, _)| t.name != name);
        Ok(())
    }

    /// Adds an API rule; returns its id.
    pub fn add_rule(&self, rule: Rule) -> Result<String, CatalogError> {
        let index = self.persist()?;
        let mut model = self.write();
        let problems = {
            let known = |name: &str| {
                name == DEFAULT_TEMPLATE || model.templates.iter().any(|(t, _)| t.name == name)
            };
            rule.problems("rule", &known)
        };
        if !problems.is_empty() {
            let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
            return Err(CatalogError::Invalid(text.join("; ")));
        }
        if let Some((id, _, _)) = model
            .rules
            .iter()
            .find(|(_, r, _)| r.target() == rule.target())
        {
            return Err(CatalogError::Conflict(format!(
                "rule {id} already covers {}; delete it first",
                rule.target()
            )));
        }
        let id = format!("rule-{:08x}", rand::random::<u32>());
        let json = serde_json::to_value(&rule).map_err(|e| CatalogError::Invalid(e.to_string()))?;
        index.put_api_rule(&id, &json)?;
        model.rules.push((id.clone(), rule, Source::Api));
        Ok(id)
    }

    pub fn delete_rule(&self, id: &str) -> Result<(), CatalogError> {
        let index = self.persist()?;
        let mut model = self.write();
        match model.rules.iter().find(|(i, _, _)| i == id) {
            None => return Err(CatalogError::NotFound(format!("rule {id}"))),
            Some((_, _, Source::Config)) => {
                return Err(CatalogError::Conflict(format!(
                    "rule {id} is defined in the config file and cannot be deleted over the API"
                )))
            }
            Some(_) => {}
        }
        index.remove_api_rule(id)?;
        model.rules.retain(|(i, _, _)| i != id);
        Ok(())
    }

    /// The embedded default: every stream records HLS with the built-in template.
    pub fn builtin_only(default_window_s: u32) -> Catalog {
        Catalog::new(&[], &[], default_window_s)
    }

    pub fn default_window_s(&self) -> u32 {
        self.default_window_s
    }

    /// What a publish of `app/stream` records now.
    pub fn plan(&self, app: &str, stream: &str) -> Result<Plan, String> {
        let model = self.read();
        let templates: Vec<Template> = model.templates.iter().map(|(t, _)| t.clone()).collect();
        let rules: Vec<Rule> = model.rules.iter().map(|(_, r, _)| r.clone()).collect();
        match resolve(&templates, &rules, &self.builtin, app, stream)? {
            Decision::Record(t) => Ok(Plan::Record(Box::new(t.clone()))),
            Decision::Off => Ok(Plan::Off),
        }
    }

    /// Every template with where it came from (the built-in `default` when not overridden).
    pub fn templates(&self) -> Vec<(Template, Source)> {
        let model = self.read();
        let mut v = model.templates.clone();
        if !v.iter().any(|(t, _)| t.name == self.builtin.name) {
            v.insert(0, ((*self.builtin).clone(), Source::Config));
        }
        v
    }

    /// The template named `name` (the built-in `default` when not overridden).
    pub fn template(&self, name: &str) -> Option<Template> {
        self.templates()
            .into_iter()
            .map(|(t, _)| t)
            .find(|t| t.name == name)
    }

    /// Every rule with its id and where it came from.
    pub fn rules(&self) -> Vec<(String, Rule, Source)> {
        self.read().rules.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(name: &str) -> Template {
        Template {
            name: name.into(),
            ..Template::builtin_default()
        }
    }

    #[test]
    fn api_changes_persist_and_respect_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let c = Catalog::load(&index, &[template("file")], &[], 30).unwrap();
        assert!(matches!(
            c.put_template(template("file"), true),
            Err(CatalogError::Conflict(_))
        ));
        c.put_template(template("api"), false).unwrap();
        assert!(matches!(
            c.put_template(template("api"), false),
            Err(CatalogError::Conflict(_))
        ));
        let mut bad = template("bad");
        bad.hls = None;
        assert!(
            matches!(c.put_template(bad, false), Err(CatalogError::Invalid(m)) if m.contains("enables no format"))
        );
        let missing = Rule {
            app: "live".into(),
            stream: None,
            template: Some("nope".into()),
            enabled: true,
        };
        assert!(matches!(c.add_rule(missing), Err(CatalogError::Invalid(m)) if m.contains("nope")));
        let id = c
            .add_rule(Rule {
                app: "live".into(),
                stream: None,
                template: Some("api".into()),
                enabled: true,
            })
            .unwrap();
        assert!(
            matches!(c.delete_template("api"), Err(CatalogError::Conflict(m)) if m.contains(&id))
        );
        drop(c);
        // A restart reloads what the API made.
        let c = Catalog::load(&index, &[template("file")], &[], 30).unwrap();
        assert!(matches!(c.plan("live", "x").unwrap(), Plan::Record(t) if t.name == "api"));
        c.delete_rule(&id).unwrap();
        c.delete_template("api").unwrap();
        let c = Catalog::load(&index, &[template("file")], &[], 30).unwrap();
        assert_eq!(
            c.templates()
                .iter()
                .map(|(t, _)| t.name.as_str())
                .collect::<Vec<_>>(),
            ["default", "file"]
        );
        assert!(c.rules().is_empty());
    }

    #[test]
    fn the_embedded_default_records_every_stream_as_hls() {
        let c = Catalog::builtin_only(30);
        match c.plan("any", "thing").unwrap() {
            Plan::Record(t) => {
                assert_eq!(t.name, "default");
                assert_eq!(t.formats(), [crate::config::Format::Hls]);
            }
            Plan::Off => panic!("must record"),
        }
        assert_eq!(c.templates().len(), 1);
    }
}
