//! `[otel]`: OpenTelemetry traces of the API path, exported over OTLP/HTTP
//! (protobuf). Off unless `endpoint` is set.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtelConfig {
    /// The collector's OTLP/HTTP base URL, e.g. `http://127.0.0.1:4318`;
    /// spans are POSTed to `<endpoint>/v1/traces` (an endpoint that already
    /// ends in `/v1/traces` is used as it is). Empty: tracing is off.
    pub endpoint: String,
    /// `service.name` of every span.
    pub service_name: String,
    /// The share of traces kept, 0.0 to 1.0; a request whose `traceparent`
    /// says sampled (or not) keeps its caller's decision.
    pub sample_ratio: f64,
}

impl Default for OtelConfig {
    fn default() -> Self {
        OtelConfig {
            endpoint: String::new(),
            service_name: "switchboard".into(),
            sample_ratio: 1.0,
        }
    }
}

impl OtelConfig {
    pub fn enabled(&self) -> bool {
        !self.endpoint.is_empty()
    }

    /// Where spans are POSTed: the endpoint with `/v1/traces` appended
    /// unless it is already there.
    pub fn traces_url(&self) -> String {
        let base = self.endpoint.trim_end_matches('/');
        if base.ends_with("/v1/traces") {
            base.to_string()
        } else {
            format!("{base}/v1/traces")
        }
    }

    /// Every problem of the section, each naming its key.
    pub(super) fn problems(&self) -> Vec<String> {
        let mut errs = Vec::new();
        if self.enabled()
            && let Err(e) = check_endpoint(&self.endpoint)
        {
            errs.push(format!("otel.endpoint: {e}"));
        }
        if self.service_name.trim().is_empty() {
            errs.push("otel.service_name: must not be empty".into());
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            errs.push(format!(
                "otel.sample_ratio: {} must be between 0.0 and 1.0",
                self.sample_ratio
            ));
        }
        errs
    }
}

/// An absolute http:// or https:// URL with a host, without query or
/// fragment (OTLP/HTTP appends the signal's path to it).
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let shown = crate::secret::redact_url(endpoint);
    let example = "such as \"http://127.0.0.1:4318\"";
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|_| format!("`{shown}` is not a URL {example}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(format!(
            "`{shown}` must start with http:// or https:// (OTLP over HTTP), {example}"
        ));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("`{shown}` has no host, {example}"));
    }
    if uri.query().is_some() || endpoint.contains('#') {
        return Err(format!(
            "`{shown}` must not carry a query or fragment, {example}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(endpoint: &str) -> OtelConfig {
        OtelConfig {
            endpoint: endpoint.into(),
            ..OtelConfig::default()
        }
    }

    #[test]
    fn off_by_default_and_good_endpoints_pass() {
        assert!(!OtelConfig::default().enabled());
        assert!(OtelConfig::default().problems().is_empty());
        for ok in [
            "http://127.0.0.1:4318",
            "http://collector:4318/",
            "https://otel.example.com/v1/traces",
        ] {
            assert!(with(ok).problems().is_empty(), "{ok}");
        }
    }

    #[test]
    fn bad_endpoints_are_refused_with_the_key() {
        for bad in [
            "127.0.0.1:4318",
            "grpc://127.0.0.1:4317",
            "http://",
            "not a url",
            "http://h:4318/?x=1",
        ] {
            let errs = with(bad).problems();
            assert_eq!(errs.len(), 1, "{bad}: {errs:?}");
            assert!(errs[0].starts_with("otel.endpoint: "), "{bad}: {errs:?}");
        }
    }

    #[test]
    fn ratio_and_service_name_are_checked() {
        let mut c = with("http://127.0.0.1:4318");
        c.sample_ratio = 1.5;
        c.service_name = " ".into();
        let errs = c.problems().join("\n");
        assert!(errs.contains("otel.sample_ratio"), "{errs}");
        assert!(errs.contains("otel.service_name"), "{errs}");
        c.sample_ratio = f64::NAN;
        assert!(c.problems().join("\n").contains("otel.sample_ratio"));
    }

    #[test]
    fn the_traces_path_is_appended_once() {
        assert_eq!(
            with("http://c:4318").traces_url(),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            with("http://c:4318/").traces_url(),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            with("http://c:4318/v1/traces").traces_url(),
            "http://c:4318/v1/traces"
        );
    }
}
