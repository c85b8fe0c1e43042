//! Templates, rules and camera sources made over the API, in the `catalog` tree so they
//! survive restarts: `template/<name>` -> JSON template, `rule/<id>` -> JSON rule,
//! `source/<name>` -> JSON source. Rows are
//! opaque JSON here (the types live in `config`); the recorder's catalog owns their meaning.

use super::{Index, IndexError};

const TEMPLATE: &str = "template/";
const RULE: &str = "rule/";
const SOURCE: &str = "source/";

impl Index {
    fn catalog_rows(&self, prefix: &str) -> Result<Vec<(String, serde_json::Value)>, IndexError> {
        self.catalog
            .scan_prefix(prefix)
            .map(|item| {
                let (k, v) = item?;
                let key = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                Ok((key, super::decode(&k, &v)?))
            })
            .collect()
    }

    /// API-made templates: (name, JSON).
    pub fn api_templates(&self) -> Result<Vec<(String, serde_json::Value)>, IndexError> {
        self.catalog_rows(TEMPLATE)
    }

    /// API-made rules: (id, JSON).
    pub fn api_rules(&self) -> Result<Vec<(String, serde_json::Value)>, IndexError> {
        self.catalog_rows(RULE)
    }

    pub fn put_api_template(&self, name: &str, row: &serde_json::Value) -> Result<(), IndexError> {
        self.catalog
            .insert(format!("{TEMPLATE}{name}"), super::encode(row))?;
        self.flush()
    }

    pub fn remove_api_template(&self, name: &str) -> Result<(), IndexError> {
        self.catalog.remove(format!("{TEMPLATE}{name}"))?;
        self.flush()
    }

    pub fn put_api_rule(&self, id: &str, row: &serde_json::Value) -> Result<(), IndexError> {
        self.catalog
            .insert(format!("{RULE}{id}"), super::encode(row))?;
        self.flush()
    }

    pub fn remove_api_rule(&self, id: &str) -> Result<(), IndexError> {
        self.catalog.remove(format!("{RULE}{id}"))?;
        self.flush()
    }

    /// API-made camera sources: (name, JSON).
    pub fn api_sources(&self) -> Result<Vec<(String, serde_json::Value)>, IndexError> {
        self.catalog_rows(SOURCE)
    }

    pub fn put_api_source(&self, name: &str, row: &serde_json::Value) -> Result<(), IndexError> {
        self.catalog
            .insert(format!("{SOURCE}{name}"), super::encode(row))?;
        self.flush()
    }

    pub fn remove_api_source(&self, name: &str) -> Result<(), IndexError> {
        self.catalog.remove(format!("{SOURCE}{name}"))?;
        self.flush()
    }
}
