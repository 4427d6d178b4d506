//! `ChannelName::parse`, `personal` and `pattern_matches` on arbitrary text.
//! The input is up to three lines, `name`, `pattern`, `user` (so seeds are
//! written by hand); bytes that are not UTF-8 are replaced.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_protocol::channel::MAX_CHANNEL_LEN;
use switchboard_protocol::{ChannelName, ChannelNameError, pattern_matches};

struct Input<'a> {
    name: &'a str,
    pattern: &'a str,
    user: &'a str,
}

fn allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"_-:.@=,".contains(&b)
}

fn check_name(name: &str) {
    match ChannelName::parse(name) {
        Ok(c) => {
            let s = c.as_str();
            assert_eq!(s, name);
            assert!(!s.is_empty() && s.len() <= MAX_CHANNEL_LEN, "{s:?}");
            assert!(s.bytes().all(allowed), "{s:?}");
            let ns = c.namespace();
            assert!(s.starts_with(ns));
            assert!(!ns.contains(':'));
            if s.contains(':') {
                assert_eq!(s.as_bytes()[ns.len()], b':');
            } else {
                assert_eq!(ns, "");
            }
            match c.personal_owner() {
                Some(owner) => {
                    assert_eq!(ns, "user");
                    assert_eq!(format!("user:{owner}"), s);
                }
                None => assert!(!s.starts_with("user:")),
            }
            assert_eq!(c.to_string(), s);
            assert_eq!(format!("{c:?}"), format!("{s:?}"));
            // A valid name is a pattern that matches itself, and only itself.
            assert!(pattern_matches(s, s));
        }
        Err(e) => {
            let expected = if name.is_empty() {
                ChannelNameError::Empty
            } else if name.len() > MAX_CHANNEL_LEN {
                ChannelNameError::TooLong
            } else {
                assert!(!name.bytes().all(allowed), "refused a valid name {name:?}");
                ChannelNameError::BadCharacter
            };
            assert_eq!(e, expected, "{name:?}");
            let _ = e.to_string();
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.splitn(3, '\n');
    let input = Input {
        name: lines.next().unwrap_or(""),
        pattern: lines.next().unwrap_or(""),
        user: lines.next().unwrap_or(""),
    };
    check_name(input.name);
    check_name(input.pattern);

    match ChannelName::personal(input.user) {
        Ok(c) => {
            assert_eq!(c.personal_owner(), Some(input.user));
            assert_eq!(c.namespace(), "user");
        }
        Err(_) => assert!(ChannelName::parse(&format!("user:{}", input.user)).is_err()),
    }

    let m = pattern_matches(input.pattern, input.name);
    match input.pattern.strip_suffix('*') {
        Some(prefix) if !prefix.contains('*') => {
            assert_eq!(m, input.name.starts_with(prefix));
            // Every extension of the prefix matches.
            assert!(pattern_matches(
                input.pattern,
                &format!("{prefix}{}", input.user)
            ));
        }
        Some(_) => assert!(!m, "a pattern with an inner `*` matched"),
        None => assert_eq!(m, input.pattern == input.name),
    }
    if m {
        // A match is never wider than the pattern's literal part.
        let literal = input.pattern.trim_end_matches('*');
        assert!(input.name.starts_with(literal) || input.pattern.ends_with("**"));
    }
});
