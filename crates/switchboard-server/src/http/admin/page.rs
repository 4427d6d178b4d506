//! The page and its modules, compiled into the binary: no build step, no
//! file read at run time, nothing served but this list.

use axum::extract::Path;
use axum::extract::rejection::PathRejection;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

use crate::http::error;

/// (name under `/admin/`, content type, text).
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "admin.css",
        "text/css; charset=utf-8",
        include_str!("../../../assets/admin/admin.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../assets/admin/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../assets/admin/api.js"),
    ),
    (
        "feed.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../assets/admin/feed.js"),
    ),
    (
        "view.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../assets/admin/view.js"),
    ),
];

const INDEX: &str = include_str!("../../../assets/admin/index.html");

/// Only this origin's own files run, nothing inline, no framing, and the
/// page talks to this origin alone: user names and `info` claims the page
/// shows come from clients, and the key sits in the tab's storage.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self'; form-action 'none'; \
                   frame-ancestors 'none'; base-uri 'none'";

fn served(content_type: &'static str, text: &'static str) -> Response {
    let mut r = (StatusCode::OK, text).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

pub async fn index() -> Response {
    served("text/html; charset=utf-8", INDEX)
}

pub async fn asset(file: Result<Path<String>, PathRejection>) -> Response {
    let file = file.map(|Path(f)| f).unwrap_or_default();
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, text)) => served(content_type, text),
        None => error(StatusCode::NOT_FOUND, "not_found", "no such file"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_the_page_imports_is_served() {
        // Each `import … from './x.js'` and the page's own links name a
        // file of ASSETS: a renamed module would otherwise 404 in the browser.
        let mut texts = vec![INDEX];
        texts.extend(ASSETS.iter().map(|(_, _, t)| *t));
        for text in texts {
            for part in text.split(['\'', '"']) {
                let name = part
                    .strip_prefix("./")
                    .or_else(|| part.strip_prefix("/admin/"));
                if let Some(name) = name.filter(|n| n.ends_with(".js") || n.ends_with(".css")) {
                    assert!(
                        ASSETS.iter().any(|(n, _, _)| *n == name),
                        "{name} is referenced but not served"
                    );
                }
            }
        }
    }
}
