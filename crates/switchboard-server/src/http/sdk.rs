//! `GET /sdk/{file}`: the JS SDK (`clients/js`) served from the binary, so a
//! page loads the client that matches its gateway:
//! `import { Switchboard } from "/sdk/switchboard.js"`.
//!
//! Always on, not only in development mode. The files are ES modules that
//! import each other by relative path (`./sse.js`), so they are served side
//! by side. A module script from another origin is fetched with CORS, hence
//! `Access-Control-Allow-Origin: *` (the code is public). `no-cache` with an
//! `ETag`: a browser revalidates (a cheap 304) and never keeps an SDK older
//! than the gateway it talks to after an upgrade.

use std::hash::{Hash, Hasher};
use std::sync::OnceLock;

use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};

use super::error;

/// The SDK's files, by the name they are served under.
const FILES: &[(&str, &str)] = &[
    (
        "switchboard.js",
        include_str!("../../../../clients/js/switchboard.js"),
    ),
    ("sse.js", include_str!("../../../../clients/js/sse.js")),
    (
        "switchboard.d.ts",
        include_str!("../../../../clients/js/switchboard.d.ts"),
    ),
];

/// Each file's `ETag`, computed once: a hash of its content (fixed within a
/// build, which is all a cache needs).
fn etags() -> &'static [HeaderValue] {
    static ETAGS: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        FILES
            .iter()
            .map(|(_, body)| {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                body.hash(&mut h);
                HeaderValue::from_str(&format!("\"{:016x}\"", h.finish()))
                    .expect("hex is a valid header value")
            })
            .collect()
    })
}

fn content_type(name: &str) -> &'static str {
    if name.ends_with(".d.ts") {
        "application/typescript; charset=utf-8"
    } else {
        "text/javascript; charset=utf-8"
    }
}

/// True when `If-None-Match` names `etag` (or is `*`).
fn not_modified(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == "*" || t.as_bytes() == etag.as_bytes())
}

pub async fn file(Path(name): Path<String>, headers: HeaderMap) -> Response {
    let Some(i) = FILES.iter().position(|(n, _)| *n == name) else {
        return error(StatusCode::NOT_FOUND, "not_found", "no such SDK file");
    };
    let etag = &etags()[i];
    let mut r = if not_modified(&headers, etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = FILES[i].1.into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(content_type(&name)),
        );
        r
    };
    let h = r.headers_mut();
    h.insert(header::ETAG, etag.clone());
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_matches_strong_weak_lists_and_star() {
        let etag = HeaderValue::from_static("\"abc\"");
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::IF_NONE_MATCH, HeaderValue::from_static(v));
            not_modified(&h, &etag)
        };
        assert!(with("\"abc\""));
        assert!(with("W/\"abc\""));
        assert!(with("\"x\", \"abc\""));
        assert!(with("*"));
        assert!(!with("\"abcd\""));
        assert!(!not_modified(&HeaderMap::new(), &etag));
    }

    #[test]
    fn every_file_has_its_own_etag_and_a_type() {
        let tags = etags();
        assert_eq!(tags.len(), FILES.len());
        assert_ne!(tags[0], tags[1]);
        assert_eq!(content_type("sse.js"), "text/javascript; charset=utf-8");
        assert!(content_type("switchboard.d.ts").starts_with("application/typescript"));
    }

    #[test]
    fn the_modules_import_each_other_by_relative_path() {
        // Served side by side under /sdk/, `./sse.js` resolves in a browser.
        let (_, main) = FILES[0];
        assert!(main.contains("from './sse.js'"));
        assert!(FILES.iter().any(|(n, _)| *n == "sse.js"));
    }
}
