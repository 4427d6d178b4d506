//! `GET /sdk/{file}`: the JS SDK served from the binary, outside development
//! mode too, as ES modules a page on any origin can import and revalidate.

mod common;

use common::*;

const SWITCHBOARD_JS: &str = include_str!("../../../clients/js/switchboard.js");
const SSE_JS: &str = include_str!("../../../clients/js/sse.js");

#[tokio::test]
async fn the_sdk_modules_are_served_as_javascript_with_cors_and_an_etag() {
    // `config()` is not development mode: the SDK is there anyway.
    let s = TestServer::start(config()).await;
    for (path, body) in [
        ("/sdk/switchboard.js", SWITCHBOARD_JS),
        ("/sdk/sse.js", SSE_JS),
    ] {
        let r = http(s.addr, "GET", path, &[], None).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.body, body, "{path} is the file in clients/js");
        assert_eq!(
            r.header("content-type"),
            Some("text/javascript; charset=utf-8")
        );
        assert_eq!(r.header("access-control-allow-origin"), Some("*"));
        assert_eq!(r.header("cache-control"), Some("no-cache"));
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        let etag = r.header("etag").expect("an etag").to_string();

        // Revalidation: the same ETag answers 304 without a body.
        let again = http(s.addr, "GET", path, &[("If-None-Match", &etag)], None).await;
        assert_eq!(again.status, 304, "{path}");
        assert_eq!(again.body, "");
        assert_eq!(again.header("etag"), Some(etag.as_str()));
        let other = http(s.addr, "GET", path, &[("If-None-Match", "\"other\"")], None).await;
        assert_eq!(other.status, 200, "{path}");
    }
    let main = http(s.addr, "GET", "/sdk/switchboard.js", &[], None).await;
    let sse = http(s.addr, "GET", "/sdk/sse.js", &[], None).await;
    assert_ne!(main.header("etag"), sse.header("etag"));
}

#[tokio::test]
async fn an_unknown_sdk_file_is_a_json_404() {
    let s = TestServer::start(config()).await;
    for path in [
        "/sdk/nope.js",
        "/sdk/..%2Fsecret",
        "/sdk/",
        "/sdk/switchboard.js/x",
    ] {
        let r = http(s.addr, "GET", path, &[], None).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.error_code(), "not_found", "{path}");
    }
    let r = http(s.addr, "POST", "/sdk/switchboard.js", &[], Some("{}")).await;
    assert_eq!(r.status, 405);
}
