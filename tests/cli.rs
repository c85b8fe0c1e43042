//! The command line: `check-config` reports every problem with its key and range, and
//! `run` with no config records on the embedded default.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::edgerec;

/// Runs `edgerec check-config` on `text`; returns (exit code, stderr).
fn check_config(text: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edgerec.toml");
    std::fs::write(&path, text).unwrap();
    let out = edgerec().arg("check-config").arg(&path).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_lists_every_problem_with_key_and_range() {
    let (code, err) = check_config(
        "[record]\nsegment_duration_s = 0\nflow_continue_duration_s = 4000\nflush_interval_ms = 10\n",
    );
    assert_eq!(code, Some(2));
    assert!(err.contains("3 problem(s)"), "{err}");
    assert!(
        err.contains("record.segment_duration_s: 0 is out of range; allowed 1-60"),
        "{err}"
    );
    assert!(
        err.contains("record.flow_continue_duration_s: 4000 is out of range; allowed 0-1800"),
        "{err}"
    );
    assert!(
        err.contains("record.flush_interval_ms: 10 is out of range; allowed 100-60000"),
        "{err}"
    );

    let (code, err) = check_config("[rtmp]\nlisten = \"0.0.0.0:1935\"\nport = 5\n");
    assert_eq!(code, Some(2));
    assert!(err.contains("unknown field `port`"), "{err}");

    let (code, err) =
        check_config("data_dir = \"/var/lib/edgerec\"\n[record]\nsegment_duration_s = 6\n");
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn check_config_checks_templates_and_rules() {
    let (code, err) = check_config(
        r#"
[[template]]
name = "lecture"
hls = { flow_continue_duration_s = 2000 }
mp4 = { record_interval_s = 10, file_name = "{StreamID}_{Nope}" }

[[rule]]
app = "live"
template = "missing"
"#,
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("4 problem(s)"), "{err}");
    assert!(
        err.contains("template[0] (lecture).hls.flow_continue_duration_s: 2000 is out of range; allowed 0-1800"),
        "{err}"
    );
    assert!(
        err.contains(
            "template[0] (lecture).mp4.record_interval_s: 10 is out of range; allowed 30-7200"
        ),
        "{err}"
    );
    assert!(
        err.contains("mp4.file_name: unknown placeholder {Nope}"),
        "{err}"
    );
    assert!(
        err.contains("rule[0] (live).template: no template is named \"missing\""),
        "{err}"
    );

    let (code, err) = check_config("[[template]]\nname = \"t\"\nmkv = { enabled = true }\n");
    assert_eq!(code, Some(2));
    assert!(err.contains("unknown field `mkv`"), "{err}");
}

#[test]
fn run_without_a_config_records_on_the_embedded_default() {
    let cwd = tempfile::tempdir().unwrap();
    let mut child = edgerec()
        .arg("run")
        .current_dir(cwd.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(30));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    let line = line.unwrap_or_else(|_| {
        let mut err = String::new();
        let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err);
        panic!("no listening line (is port 1935 or 8080 taken?): {err}")
    });
    assert_eq!(
        line,
        "edgerec: listening rtmp=0.0.0.0:1935 http=127.0.0.1:8080"
    );
    assert!(status.success());
    assert!(cwd.path().join("edgerec-data/index").is_dir());
    assert!(cwd.path().join("edgerec-data/media").is_dir());
}

#[test]
fn every_board_profile_and_the_packaged_default_pass_check_config() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("board/edgerec.toml")];
    for entry in std::fs::read_dir(root.join("board")).unwrap() {
        let profile = entry.unwrap().path().join("edgerec.toml");
        if profile.exists() {
            files.push(profile);
        }
    }
    assert!(
        files.len() >= 5,
        "the packaged default and four boards: {files:?}"
    );
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let (code, out) = check_config(&text);
        assert_eq!(code, Some(0), "{}: {out}", file.display());
        assert!(
            text.contains("data_dir = \"/var/lib/edgerec\""),
            "{} records to the unit's StateDirectory",
            file.display()
        );
    }
}
