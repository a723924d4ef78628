//! UTC timestamps for records and run folders.

use std::time::SystemTime;

/// Now as `YYYY-MM-DDTHH:MM:SSZ` (RFC 3339, UTC, whole seconds).
pub fn rfc3339_now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn now_is_rfc3339_utc_in_whole_seconds() {
        let now = super::rfc3339_now();
        assert_eq!(now.len(), "2026-11-26T17:00:00Z".len(), "{now}");
        assert!(now.ends_with('Z') && now.as_bytes()[10] == b'T', "{now}");
        assert!(now.as_str() > "2026-01-01", "{now}");
    }
}
