//! A small tmpfs mounted for one test (a full disk on demand). Needs root; with
//! `EDGEREC_SKIP_ROOT_TESTS` set, `mount` returns None and the test skips itself.

use std::path::{Path, PathBuf};

pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount -o size=`, e.g. `700k`, `64m`) on `dir`.
    pub fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        if std::env::var_os("EDGEREC_SKIP_ROOT_TESTS").is_some() {
            eprintln!("skipped: needs root to mount a tmpfs (EDGEREC_SKIP_ROOT_TESTS set)");
            return None;
        }
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "edgerec-test"])
            .arg(dir)
            .status()
            .expect("mount");
        assert!(
            ok.success(),
            "needs root to mount a tmpfs (set EDGEREC_SKIP_ROOT_TESTS=1 to skip)"
        );
        Some(Tmpfs(dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}
