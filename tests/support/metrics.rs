//! Reads `/metrics` in tests: samples by name and labels, and `promtool check metrics`.

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};

use super::Daemon;

/// One scrape: every sample by its name and labels as written (`name{a="b"}`).
pub struct Scrape {
    pub text: String,
    samples: HashMap<String, f64>,
}

impl Scrape {
    pub fn get(d: &Daemon) -> Scrape {
        let r = d.get("/metrics");
        assert_eq!(r.status, 200);
        let content_type = r
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        let text = String::from_utf8(r.body).expect("UTF-8");
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (name, value) = l.rsplit_once(' ').expect("name value");
                let value = match value {
                    "+Inf" => f64::INFINITY,
                    v => v.parse().expect("a number"),
                };
                (name.to_owned(), value)
            })
            .collect();
        Scrape { text, samples }
    }

    pub fn value(&self, sample: &str) -> f64 {
        *self
            .samples
            .get(sample)
            .unwrap_or_else(|| panic!("no sample {sample} in\n{}", self.text))
    }

    pub fn has_stream(&self, stream: &str) -> bool {
        self.text.contains(&format!("stream=\"{stream}\""))
    }

    /// `promtool check metrics` lints it (names, units, help, types).
    pub fn assert_promtool_clean(&self) {
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool (Debian package prometheus; .ci/run installs it)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(self.text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.text
        );
    }
}
