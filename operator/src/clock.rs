//! Time as the operator keeps and writes it: the wall clock of what must
//! outlive the process (statuses, saved releases, release records), and
//! durations written as text in plans and settings.

/// Seconds since the Unix epoch.
pub fn wall_clock() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Serde for durations written as text (`5s`).
pub mod duration_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&sluice_proxy::config::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        sluice_proxy::config::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}
