//! The recording model in force: the templates and rules from the config file, and those
//! made over the API, and the decision of what a new publish records.
//!
//! Owns [`Catalog`]: cheap to clone, shared by the recorder (asked once per publish: rule
//! changes apply to the next publish, never to a stream already live) and the API. The
//! rules themselves live in `config::templates`.

use std::sync::{Arc, RwLock};

use serde::Serialize;

use crate::config::templates::{resolve, Decision};
use crate::config::{Rule, Template};

/// Where a template or rule was defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The config file (or the built-in default): read-only over the API.
    Config,
    /// Made over the API, persisted in the index.
    Api,
}

#[derive(Debug, Default)]
struct Model {
    templates: Vec<(Template, Source)>,
    rules: Vec<(Rule, Source)>,
}

/// The templates and rules in force.
#[derive(Clone)]
pub struct Catalog {
    model: Arc<RwLock<Model>>,
    builtin: Arc<Template>,
    /// `record.flow_continue_duration_s`: the resume window of templates that set none.
    default_window_s: u32,
}

/// What a new publish of a stream records.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    Record(Template),
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
            rules: rules.iter().map(|r| (r.clone(), Source::Config)).collect(),
        };
        Catalog {
            model: Arc::new(RwLock::new(model)),
            builtin: Arc::new(Template::builtin_default()),
            default_window_s,
        }
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
        let model = self.model.read().unwrap_or_else(|p| p.into_inner());
        let templates: Vec<Template> = model.templates.iter().map(|(t, _)| t.clone()).collect();
        let rules: Vec<Rule> = model.rules.iter().map(|(r, _)| r.clone()).collect();
        match resolve(&templates, &rules, &self.builtin, app, stream)? {
            Decision::Record(t) => Ok(Plan::Record(t.clone())),
            Decision::Off => Ok(Plan::Off),
        }
    }

    /// Every template with where it came from (the built-in `default` when not overridden).
    pub fn templates(&self) -> Vec<(Template, Source)> {
        let model = self.model.read().unwrap_or_else(|p| p.into_inner());
        let mut v = model.templates.clone();
        if !v.iter().any(|(t, _)| t.name == self.builtin.name) {
            v.insert(0, ((*self.builtin).clone(), Source::Config));
        }
        v
    }

    /// Every rule with where it came from.
    pub fn rules(&self) -> Vec<(Rule, Source)> {
        let model = self.model.read().unwrap_or_else(|p| p.into_inner());
        model.rules.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
