//! The unit's resource ceilings hold what each config can make the daemon use: every board
//! profile's `limits.conf` against its `edgerec.toml`, and the packaged unit against the
//! packaged config and the built-in defaults (`system::Footprint`). Raising a board's
//! streams or budgets without its limits fails here, not on a board in the field.

use std::path::Path;

use edgerec::config::Config;
use edgerec::system::Footprint;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `Key=value` of a systemd unit or drop-in's `[Service]` section.
fn service_value(unit: &str, key: &str) -> Option<String> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim().to_owned())
}

/// A systemd size (`512M`, `1G`, bytes) in bytes.
fn bytes(value: &str) -> u64 {
    let (digits, unit) = value.split_at(value.trim_end_matches(char::is_alphabetic).len());
    let n: u64 = digits.parse().unwrap_or_else(|_| panic!("size {value:?}"));
    n * match unit {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        other => panic!("unit {other:?} in {value:?}"),
    }
}

fn assert_fits(what: &str, unit: &str, need: Footprint) {
    let get = |key: &str| service_value(unit, key).unwrap_or_else(|| panic!("{what}: no {key}="));
    let memory = bytes(&get("MemoryMax"));
    let tasks: u64 = get("TasksMax").parse().unwrap();
    let files: u64 = get("LimitNOFILE").parse().unwrap();
    assert!(
        memory >= need.memory_bytes,
        "{what}: MemoryMax {} MiB < {} MiB the config can use",
        memory >> 20,
        need.memory_bytes >> 20
    );
    assert!(
        tasks >= need.tasks,
        "{what}: TasksMax {tasks} < {}",
        need.tasks
    );
    assert!(
        files >= need.files,
        "{what}: LimitNOFILE {files} < {}",
        need.files
    );
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_board_profiles_limits_hold_its_config() {
    let boards: Vec<_> = std::fs::read_dir(Path::new(ROOT).join("board"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("edgerec.toml").exists())
        .collect();
    assert!(boards.len() >= 4, "{boards:?}");
    for dir in boards {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let config = Config::parse(&read(&dir.join("edgerec.toml")))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            config.validate().is_empty(),
            "{name}: {:?}",
            config.validate()
        );
        assert_fits(
            &name,
            &read(&dir.join("limits.conf")),
            Footprint::of(&config),
        );
    }
}

#[test]
fn the_packaged_units_limits_hold_the_packaged_config_and_the_defaults() {
    let unit = read(&Path::new(ROOT).join("systemd/edgerec.service"));
    let packaged = Config::parse(&read(&Path::new(ROOT).join("board/edgerec.toml"))).unwrap();
    assert_fits("packaged", &unit, Footprint::of(&packaged));
    assert_fits("defaults", &unit, Footprint::of(&Config::default()));
}

#[test]
fn a_config_that_outgrows_its_limits_is_caught() {
    let unit = read(&Path::new(ROOT).join("board/beaglebone-black/limits.conf"));
    let mut config = Config::parse(&read(
        &Path::new(ROOT).join("board/beaglebone-black/edgerec.toml"),
    ))
    .unwrap();
    config.rtmp.max_connections = 64;
    let need = Footprint::of(&config);
    let fits = std::panic::catch_unwind(|| assert_fits("bigger", &unit, need));
    assert!(
        fits.is_err(),
        "64 streams fit a BeagleBone's limits: {need:?}"
    );
}
