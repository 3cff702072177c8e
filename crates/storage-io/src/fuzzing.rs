//! Entry point of the `config_text` cargo-fuzz target in `fuzz/`, and of the test that replays
//! its corpus. Not part of the API.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Byte 0 picks a config type (`IoConfig`, `WalConfig`, `SchedulerConfig`, `AsyncFsConfig`) and a format (JSON
/// or TOML); the rest is the text. Parsing and validating must answer with an error, never
/// panic, and a config that validates must round-trip through JSON unchanged.
pub fn check_config_text(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let toml = which & 1 == 1;
    match (which >> 1) % 4 {
        0 => check::<crate::IoConfig>(text, toml, |c| c.validate().is_ok()),
        1 => check::<crate::wal::WalConfig>(text, toml, |c| c.validate().is_ok()),
        2 => check::<crate::scheduler::SchedulerConfig>(text, toml, |c| c.validate().is_ok()),
        _ => check::<crate::AsyncFsConfig>(text, toml, |c| c.validate().is_ok()),
    }
}

fn check<C>(text: &str, toml: bool, valid: impl Fn(&C) -> bool)
where
    C: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let parsed: Option<C> = if toml {
        toml::from_str(text).ok()
    } else {
        serde_json::from_str(text).ok()
    };
    let Some(config) = parsed.filter(|c| valid(c)) else {
        return;
    };
    let json = serde_json::to_string(&config).expect("a valid config serialises");
    let back: C = serde_json::from_str(&json).expect("and parses back");
    assert_eq!(back, config, "a valid config does not round-trip through JSON");
}
