//! The configuration parsers: TOML into `Config` (then `validate`), durations,
//! and `SWITCHBOARD_*` environment overrides (`Config::load`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_server::config::{Config, Dur};

fn check_dur(s: &str) {
    if let Ok(d) = Dur::parse(s) {
        assert!(d.0.as_secs() <= 1_000_000_000, "{s:?} -> {d:?}");
        // What the start-up log prints parses back, to the millisecond.
        let shown = d.to_string();
        let back = Dur::parse(&shown).unwrap_or_else(|e| panic!("{s:?} -> {shown:?}: {e}"));
        let diff = back.0.abs_diff(d.0);
        assert!(diff.as_millis() < 1, "{s:?} -> {shown:?} -> {back:?}");
    }
}

fn check_toml(text: &str) {
    let Ok(config) = toml::from_str::<Config>(text) else {
        return;
    };
    let _ = config.validate();
    let _ = config.namespace_policies();
    // The config, written out as TOML, reads back; after one round trip
    // (durations are printed to the millisecond) it is stable.
    let once = toml::to_string(&config).expect("a parsed config serializes");
    let c1: Config = toml::from_str(&once)
        .unwrap_or_else(|e| panic!("serialized config does not parse: {e}\n{once}"));
    let twice = toml::to_string(&c1).expect("serializes");
    let c2: Config = toml::from_str(&twice).expect("parses");
    assert_eq!(c1, c2);
    assert_eq!(config.validate().is_ok(), c1.validate().is_ok());
    // The start-up log's copy parses, and has no secret in it.
    let redacted: Config = toml::from_str(&config.redacted_toml()).expect("redacted parses");
    for (secret, shown) in [
        (&config.auth.hmac_secret, &redacted.auth.hmac_secret),
        (&config.api.key, &redacted.api.key),
    ] {
        assert!(
            shown.is_empty() == secret.is_empty() && (shown.is_empty() || shown == "<redacted>")
        );
    }
}

/// Lines `SWITCHBOARD_...=value` become the environment of `Config::load`.
fn check_env(text: &str) {
    let env: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.starts_with("SWITCHBOARD_"))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if env.is_empty() {
        return;
    }
    if let Ok((config, _warnings)) = Config::load(None, env) {
        assert!(config.validate().is_ok());
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    check_dur(&text);
    for line in text.lines().take(16) {
        check_dur(line);
    }
    check_toml(&text);
    check_env(&text);
});
