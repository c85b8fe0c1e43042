//! The one home of time helpers every layer uses: wall clock in unix milliseconds, a
//! monotonic clock immune to NTP steps, and the RFC 3339 text the API and callbacks write.
//!
//! Pure apart from reading the system clocks; no tokio. Media time is not here: it is
//! [`crate::media::Ticks`].

/// Wall clock now, unix milliseconds.
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond() + test_skew_ms()
}

/// The wall clock minus the boot clock (`CLOCK_BOOTTIME`, which counts suspend and is
/// never set), in ms: constant while nobody sets the wall clock, so a change in it is a
/// jump (an NTP step, a board without an RTC that booted in 1970 getting its first time).
pub fn wall_minus_boot_ms() -> i64 {
    read_ms(nix::time::ClockId::CLOCK_REALTIME) + test_skew_ms() - boot_ms()
}

/// The boot clock (`CLOCK_BOOTTIME`), ms since boot.
pub fn boot_ms() -> i64 {
    read_ms(nix::time::ClockId::CLOCK_BOOTTIME)
}

fn read_ms(id: nix::time::ClockId) -> i64 {
    // time_t and c_long are 32-bit on armv7: the conversions are not useless there.
    #[allow(clippy::useless_conversion)]
    nix::time::clock_gettime(id).map_or(0, |t| {
        i64::from(t.tv_sec()) * 1000 + i64::from(t.tv_nsec()) / 1_000_000
    })
}

/// Debug builds only (the integration tests run them): milliseconds added to the wall
/// clock, so a test can make the daemon's clock jump (`clock_watch` reads them from the
/// file `$EDGEREC_TEST_CLOCK_SKEW_FILE`). Always 0 in release builds.
pub fn test_skew_ms() -> i64 {
    #[cfg(debug_assertions)]
    {
        TEST_SKEW_MS.load(std::sync::atomic::Ordering::Relaxed)
    }
    #[cfg(not(debug_assertions))]
    {
        0
    }
}

#[cfg(debug_assertions)]
pub static TEST_SKEW_MS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Milliseconds on a monotonic clock since the process started (immune to NTP steps).
pub fn monotonic_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

/// Seconds from the NTP epoch (1900) to the unix epoch (1970).
const NTP_UNIX_OFFSET_S: i64 = 2_208_988_800;

/// A 64-bit NTP timestamp (RTCP sender reports, RFC 3550 section 4: seconds since 1900 in
/// the high 32 bits, the fraction in the low 32) as unix milliseconds.
pub fn ntp_to_unix_ms(ntp: u64) -> i64 {
    let secs = (ntp >> 32) as i64 - NTP_UNIX_OFFSET_S;
    let frac_ms = ((ntp & 0xFFFF_FFFF) * 1000) >> 32;
    secs * 1000 + frac_ms as i64
}

/// RFC 3339 UTC with milliseconds, as the API writes every wall time.
pub fn rfc3339(ms: i64) -> String {
    utc(ms, "%Y-%m-%dT%H:%M:%S%.3fZ")
}

/// Unix milliseconds `ms` formatted in UTC with `strftime` directives (the unix epoch
/// for a time out of range).
pub fn utc(ms: i64, format: &str) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .unwrap_or_default()
        .strftime(format)
        .to_string()
}

/// A wall time as the API takes it: RFC 3339 (any offset) or unix seconds (fractions
/// allowed). Unix milliseconds, or None for anything else.
pub fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        return (secs.is_finite() && secs.abs() < 1e13).then(|| (secs * 1000.0).round() as i64);
    }
    s.parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
}

#[cfg(test)]
mod tests {
    #[test]
    fn wall_times_format_in_utc_with_milliseconds() {
        use super::{rfc3339, utc};
        assert_eq!(rfc3339(1_796_428_800_045), "2026-12-05T00:00:00.045Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            utc(1_796_428_800_045, "%Y%m%dT%H%M%S%3fZ"),
            "20261205T000000045Z"
        );
        // Out of jiff's range: the epoch rather than a panic.
        assert_eq!(rfc3339(i64::MAX), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn api_times_parse_as_rfc3339_or_unix_seconds() {
        use super::parse_time;
        assert_eq!(parse_time("1796428800"), Some(1_796_428_800_000));
        assert_eq!(parse_time("1796428800.25"), Some(1_796_428_800_250));
        assert_eq!(parse_time("2026-12-05T00:00:00Z"), Some(1_796_428_800_000));
        assert_eq!(
            parse_time("2026-12-05T01:00:00.5+01:00"),
            Some(1_796_428_800_500)
        );
        for bad in ["", "yesterday", "2026-12-05", "NaN", "inf", "1e300"] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn ntp_timestamps_convert_to_unix_milliseconds() {
        // 2026-12-05T00:00:00.500Z: unix 1_796_428_800 s.
        let ntp = ((1_796_428_800u64 + 2_208_988_800) << 32) | (1u64 << 31);
        assert_eq!(super::ntp_to_unix_ms(ntp), 1_796_428_800_500);
        assert_eq!(super::ntp_to_unix_ms(2_208_988_800u64 << 32), 0);
        // Before 1970 (a camera that never set its clock): negative, no panic.
        assert_eq!(super::ntp_to_unix_ms(0), -2_208_988_800_000);
    }
}
