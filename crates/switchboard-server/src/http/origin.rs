//! `ws.allowed_origins`: an `Origin` header is parsed (RFC 6454: scheme,
//! host, port) and compared with each entry exactly, default ports
//! normalized; `https://*.example.com` matches whole host labels only.
//! Anything that is not a well-formed origin matches nothing.

use std::net::{Ipv4Addr, Ipv6Addr};

/// An origin, normalized: scheme and host in lower case, the port always
/// present (80 or 443 when the text had none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    https: bool,
    host: String,
    port: u16,
}

/// One entry of `ws.allowed_origins`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Exact(Origin),
    /// `scheme://*.suffix[:port]`: any host with at least one more label.
    Subdomains(Origin),
}

/// Why a text is not a well-formed origin (or origin pattern).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    #[error("must start with http:// or https://")]
    Scheme,
    #[error("must be scheme://host[:port] only, without user, path, query or fragment")]
    Shape,
    #[error("has no valid host")]
    Host,
    #[error("has no valid port (1-65535)")]
    Port,
    #[error("may hold `*` only as the whole first label, as in https://*.example.com")]
    Wildcard,
}

impl Origin {
    /// Parses the serialization of an origin (what browsers send).
    pub fn parse(text: &str) -> Result<Origin, OriginError> {
        let (https, authority) = split_scheme(text)?;
        let (host, port) = split_port(authority, https)?;
        Ok(Origin {
            https,
            host: parse_host(host)?,
            port,
        })
    }
}

fn split_scheme(text: &str) -> Result<(bool, &str), OriginError> {
    let (scheme, rest) = text.split_once("://").ok_or(OriginError::Scheme)?;
    let https = if scheme.eq_ignore_ascii_case("https") {
        true
    } else if scheme.eq_ignore_ascii_case("http") {
        false
    } else {
        return Err(OriginError::Scheme);
    };
    if rest.is_empty()
        || rest.contains(['/', '?', '#', '@', '\\'])
        || rest.contains(char::is_whitespace)
    {
        return Err(OriginError::Shape);
    }
    Ok((https, rest))
}

fn split_port(authority: &str, https: bool) -> Result<(&str, u16), OriginError> {
    let default = if https { 443 } else { 80 };
    // An IPv6 host is bracketed; its colons are not the port's.
    let port_at = match authority.rfind(']') {
        Some(close) => authority[close..].find(':').map(|i| close + i),
        None => authority.rfind(':'),
    };
    let Some(at) = port_at else {
        return Ok((authority, default));
    };
    let digits = &authority[at + 1..];
    if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(OriginError::Port);
    }
    match digits.parse::<u16>() {
        Ok(p) if p > 0 => Ok((&authority[..at], p)),
        _ => Err(OriginError::Port),
    }
}

/// A host in canonical form: a DNS name of letters, digits and `-` (labels
/// of 1-63, lower-cased; IDNs arrive in punycode), an IPv4 address, or a
/// bracketed IPv6 address.
fn parse_host(host: &str) -> Result<String, OriginError> {
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or(OriginError::Host)?;
        let ip: Ipv6Addr = inner.parse().map_err(|_| OriginError::Host)?;
        return Ok(format!("[{ip}]"));
    }
    if host.is_empty() || host.len() > 253 {
        return Err(OriginError::Host);
    }
    let labels: Vec<&str> = host.split('.').collect();
    let numeric = labels
        .last()
        .is_some_and(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()));
    if numeric {
        // A host ending in a number is an IPv4 address or nothing.
        let ip: Ipv4Addr = host.parse().map_err(|_| OriginError::Host)?;
        return Ok(ip.to_string());
    }
    for label in &labels {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(OriginError::Host);
        }
    }
    Ok(host.to_ascii_lowercase())
}

impl Pattern {
    fn parse(text: &str) -> Result<Pattern, OriginError> {
        let (https, authority) = split_scheme(text)?;
        let (host, port) = split_port(authority, https)?;
        if let Some(suffix) = host.strip_prefix("*.") {
            if suffix.contains('*') {
                return Err(OriginError::Wildcard);
            }
            let host = parse_host(suffix)?;
            if host.starts_with('[') || host.parse::<Ipv4Addr>().is_ok() {
                return Err(OriginError::Wildcard);
            }
            return Ok(Pattern::Subdomains(Origin { https, host, port }));
        }
        if host.contains('*') {
            return Err(OriginError::Wildcard);
        }
        Ok(Pattern::Exact(Origin {
            https,
            host: parse_host(host)?,
            port,
        }))
    }

    fn matches(&self, o: &Origin) -> bool {
        match self {
            Pattern::Exact(p) => p == o,
            Pattern::Subdomains(p) => {
                p.https == o.https
                    && p.port == o.port
                    && o.host.len() > p.host.len() + 1
                    && o.host.ends_with(p.host.as_str())
                    && o.host.as_bytes()[o.host.len() - p.host.len() - 1] == b'.'
            }
        }
    }
}

/// Checks one `ws.allowed_origins` entry, for `Config::validate`.
pub fn check_pattern(text: &str) -> Result<(), OriginError> {
    Pattern::parse(text).map(|_| ())
}

/// Whether an `Origin` header value is allowed by `allowed` (the config's
/// entries): an empty list allows any origin; otherwise the value must be a
/// well-formed origin that an entry matches. Entries that do not parse
/// (the config check refuses them at start) match nothing.
pub fn origin_allowed(allowed: &[String], origin: &str) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let Ok(origin) = Origin::parse(origin) else {
        return false;
    };
    allowed
        .iter()
        .filter_map(|a| Pattern::parse(a).ok())
        .any(|p| p.matches(&origin))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> Vec<String> {
        [
            "http://localhost:8000",
            "https://*.example.com",
            "https://app.example.org:443",
            "http://[::1]:3000",
            "http://127.0.0.1:5173",
        ]
        .map(String::from)
        .to_vec()
    }

    #[test]
    fn exact_entries_compare_scheme_host_and_port_with_default_ports_normalized() {
        let a = allowed();
        assert!(origin_allowed(&a, "http://localhost:8000"));
        assert!(origin_allowed(&a, "HTTP://LocalHost:8000"));
        assert!(!origin_allowed(&a, "http://localhost:8001"));
        assert!(!origin_allowed(&a, "http://localhost"));
        assert!(!origin_allowed(&a, "https://localhost:8000"));
        // `:443` in the config is the default port: the browser leaves it out.
        assert!(origin_allowed(&a, "https://app.example.org"));
        assert!(origin_allowed(&a, "https://app.example.org:443"));
        assert!(!origin_allowed(&a, "http://app.example.org"));
        assert!(origin_allowed(&a, "http://[0:0::1]:3000"));
        assert!(origin_allowed(&a, "http://127.0.0.1:5173"));
        assert!(!origin_allowed(&a, "http://127.0.0.2:5173"));
    }

    #[test]
    fn a_wildcard_matches_whole_labels_only() {
        let a = allowed();
        assert!(origin_allowed(&a, "https://a.example.com"));
        assert!(origin_allowed(&a, "https://a.b.example.com"));
        assert!(origin_allowed(&a, "https://A.Example.COM:443"));
        assert!(!origin_allowed(&a, "https://example.com"));
        assert!(!origin_allowed(&a, "https://badexample.com"));
        assert!(!origin_allowed(&a, "https://example.com.evil.net"));
        assert!(!origin_allowed(&a, "https://a.example.com.evil.net"));
        assert!(!origin_allowed(&a, "http://a.example.com"));
        assert!(!origin_allowed(&a, "https://a.example.com:8443"));
    }

    #[test]
    fn anything_not_a_well_formed_origin_is_refused() {
        let a = allowed();
        for bad in [
            "null",
            "",
            "localhost:8000",
            "http://localhost:8000/",
            "http://localhost:8000/path",
            "http://user@localhost:8000",
            "http://localhost:8000?x",
            "http://localhost:8000#x",
            "http://localhost:0",
            "http://localhost:65536",
            "http://localhost:+80",
            "http://localhost:",
            "http://loc alhost:8000",
            "http://localhost..:8000",
            "http://.localhost:8000",
            "https://a..example.com",
            "https://-a.example.com",
            "https://a_b.example.com",
            "https://*.example.com",
            "ws://localhost:8000",
            "http://[::1:3000",
            "http://1.2.3.4.5:80",
            "http://localhost:8000\\",
        ] {
            assert!(!origin_allowed(&a, bad), "{bad:?} was allowed");
        }
        // With no list, any Origin (well-formed or not) is allowed.
        assert!(origin_allowed(&[], "null"));
    }

    #[test]
    fn config_entries_are_checked() {
        for good in [
            "https://*.example.com",
            "https://*.example.com:8443",
            "http://localhost",
            "http://[::1]:3000",
        ] {
            assert_eq!(check_pattern(good), Ok(()), "{good}");
        }
        assert_eq!(check_pattern("example.com"), Err(OriginError::Scheme));
        assert_eq!(
            check_pattern("https://example.com/"),
            Err(OriginError::Shape)
        );
        assert_eq!(check_pattern("https://*"), Err(OriginError::Wildcard));
        assert_eq!(check_pattern("https://a.*.com"), Err(OriginError::Wildcard));
        assert_eq!(check_pattern("https://*.*.com"), Err(OriginError::Wildcard));
        assert_eq!(
            check_pattern("https://*.1.2.3.4"),
            Err(OriginError::Wildcard)
        );
        assert_eq!(check_pattern("https://x.com:99999"), Err(OriginError::Port));
    }
}
