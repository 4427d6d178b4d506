//! `openapi.yaml` against the real server: it documents exactly the routes the
//! router serves under `/api` and the operations endpoints, every documented
//! operation is served, and real answers match the documented schemas.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use serde_json::{Value, json};

const SPEC: &str = include_str!("../openapi.yaml");
const ROUTER_SRC: &str = include_str!("../src/http/mod.rs");

/// The routes `http::router` serves under `/api` and the operations
/// endpoints, as (method, path). Adding a route to the router without adding
/// it here and to `openapi.yaml` fails `spec_documents_exactly_the_routes`.
const ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/publish"),
    ("POST", "/api/broadcast"),
    ("GET", "/api/presence/{channel}"),
    ("GET", "/api/online"),
    ("GET", "/api/history/{channel}"),
    ("POST", "/api/disconnect"),
    ("GET", "/api/info"),
    ("GET", "/api/inbox/{user}"),
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/metrics"),
];

/// Routes the router serves that the spec leaves out on purpose: the
/// client endpoints `/ws`, `/sse` and `/sse/ack` (PROTOCOL.md, a client's token, not
/// the API key), the JS SDK's files and the
/// development-only demo page.
const NOT_IN_SPEC: &[&str] = &["/ws", "/sse", "/sse/ack", "/sdk/{file}", "/", "/dev/token"];

/// Documented answers no sample call can produce against an in-memory node
/// (a 503 under a flood is checked by `hostile_edges.rs`).
const UNTRIGGERABLE: &[(&str, &str, u16)] = &[
    ("POST", "/api/publish", 503),
    ("POST", "/api/broadcast", 503),
    ("GET", "/api/presence/{channel}", 503),
    ("GET", "/api/history/{channel}", 503),
    ("GET", "/api/online", 503),
    ("POST", "/api/disconnect", 503),
    ("GET", "/api/info", 503),
    ("GET", "/api/inbox/{user}", 503),
    ("GET", "/metrics", 500),
];

const METHODS: &[&str] = &["get", "post", "put", "patch", "delete"];

fn spec() -> Value {
    serde_norway::from_str(SPEC).expect("openapi.yaml parses")
}

/// The spec's operations as (METHOD, path).
fn spec_operations(spec: &Value) -> BTreeSet<(String, String)> {
    let paths = spec["paths"].as_object().expect("paths");
    let mut ops = BTreeSet::new();
    for (path, item) in paths {
        for m in METHODS {
            if item.get(*m).is_some() {
                ops.insert((m.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    ops
}

/// The `(METHOD, path)` routes `src/http/mod.rs` registers, read from its
/// source: `.route("PATH", get(..).post(..))` calls, those in the `api`
/// router prefixed with `/api`.
fn router_routes() -> BTreeSet<(String, String)> {
    assert!(
        ROUTER_SRC.contains(r#".nest("/api", api)"#),
        "the api router is no longer nested at /api: update this test"
    );
    let api_start = ROUTER_SRC
        .find("let api = Router::new()")
        .expect("the api router");
    let api_end = api_start + ROUTER_SRC[api_start..].find(';').expect("end of statement");
    let mut routes = BTreeSet::new();
    for (at, _) in ROUTER_SRC.match_indices(".route(\"") {
        let rest = &ROUTER_SRC[at + ".route(\"".len()..];
        let path = &rest[..rest.find('"').expect("closing quote")];
        // The method router: up to the `)` closing `.route(`.
        let mut depth = 1usize;
        let mut end = 0;
        for (i, c) in rest.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let expr = &rest[..end];
        let full = if (api_start..api_end).contains(&at) {
            format!("/api{path}")
        } else {
            path.to_string()
        };
        let mut found = false;
        for m in METHODS {
            for (i, _) in expr.match_indices(&format!("{m}(")) {
                let before = expr[..i].chars().next_back();
                if before.is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == ':')) {
                    routes.insert((m.to_ascii_uppercase(), full.clone()));
                    found = true;
                }
            }
        }
        assert!(found, "no method found for route {full}: {expr}");
    }
    routes
}

#[test]
fn spec_documents_exactly_the_routes() {
    let spec = spec();
    assert!(
        spec["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.")),
        "an OpenAPI 3 document"
    );
    let listed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    let served: BTreeSet<(String, String)> = router_routes()
        .into_iter()
        .filter(|(_, p)| !NOT_IN_SPEC.contains(&p.as_str()))
        .collect();
    assert_eq!(
        served, listed,
        "the router's routes (left) differ from this test's ROUTES (right)"
    );
    assert_eq!(
        spec_operations(&spec),
        listed,
        "openapi.yaml (left) does not document exactly the router's routes (right)"
    );
}

#[test]
fn api_operations_need_the_key_and_ops_do_not() {
    let spec = spec();
    assert_eq!(spec["security"], json!([{"apiKey": []}]));
    let scheme = &spec["components"]["securitySchemes"]["apiKey"];
    assert_eq!(scheme["type"], "http");
    assert_eq!(scheme["scheme"], "bearer");
    for (m, p) in spec_operations(&spec) {
        let op = operation(&spec, &m, &p);
        if p.starts_with("/api/") {
            assert!(op.get("security").is_none(), "{m} {p} overrides security");
            assert!(
                op["responses"].get("401").is_some(),
                "{m} {p} documents no 401"
            );
        } else {
            assert_eq!(op["security"], json!([]), "{m} {p} needs no key");
        }
    }
}

fn operation<'a>(spec: &'a Value, method: &str, path: &str) -> &'a Value {
    let op = &spec["paths"][path][method.to_ascii_lowercase()];
    assert!(op.is_object(), "{method} {path} is not documented");
    op
}

/// Follows a local `$ref` (`#/components/...`).
fn resolve<'a>(spec: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let ptr = r.strip_prefix('#').expect("local $ref");
            resolve(spec, spec.pointer(ptr).unwrap_or_else(|| panic!("{r}")))
        }
        None => v,
    }
}

/// An OpenAPI 3.0 schema object as JSON Schema (2020-12): component refs
/// point into `$defs`, and `nullable: true` adds `"null"` to the type.
fn to_json_schema(v: &Value) -> Value {
    match v {
        Value::Object(map) => {
            let mut out = serde_json::Map::new();
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => {
                        let name = r
                            .strip_prefix("#/components/schemas/")
                            .unwrap_or_else(|| panic!("unsupported $ref {r}"));
                        out.insert(k.clone(), json!(format!("#/$defs/{name}")));
                    }
                    ("nullable" | "example", _) => {}
                    _ => {
                        out.insert(k.clone(), to_json_schema(v));
                    }
                }
            }
            if map.get("nullable") == Some(&Value::Bool(true))
                && let Some(t) = map.get("type")
            {
                out.insert("type".into(), json!([t, "null"]));
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(to_json_schema).collect()),
        other => other.clone(),
    }
}

fn validator(spec: &Value, schema: &Value) -> jsonschema::Validator {
    let mut root = to_json_schema(schema);
    let defs = to_json_schema(&spec["components"]["schemas"]);
    let obj = root.as_object_mut().expect("a schema object");
    obj.insert(
        "$schema".into(),
        json!("https://json-schema.org/draft/2020-12/schema"),
    );
    obj.insert("$defs".into(), defs);
    jsonschema::validator_for(&root).expect("the schema compiles")
}

#[test]
fn every_component_schema_compiles() {
    let spec = spec();
    for (name, schema) in spec["components"]["schemas"].as_object().expect("schemas") {
        let _ = validator(&spec, schema);
        assert!(schema.is_object(), "{name}");
    }
}

/// A channel name in place of every path parameter.
fn concrete(path: &str) -> String {
    path.replace("{channel}", "chat:a")
}

#[tokio::test]
async fn every_documented_operation_is_served() {
    let spec = spec();
    let s = TestServer::start(config()).await;
    for (m, p) in spec_operations(&spec) {
        let body = (m == "POST").then_some("{}");
        let r = s.http(&m, &concrete(&p), body).await;
        assert!(
            r.status != 404 && r.status != 405 && r.status != 0,
            "{m} {p}: {} {}",
            r.status,
            r.body
        );
    }
    // A method an /api endpoint does not serve: 405 in the contract's shape.
    let error = validator(&spec, &json!({"$ref": "#/components/schemas/Error"}));
    for (m, p) in spec_operations(&spec) {
        if !p.starts_with("/api/") {
            continue;
        }
        let other = if m == "GET" { "POST" } else { "GET" };
        if spec["paths"][&p].get(other.to_ascii_lowercase()).is_some() {
            continue;
        }
        let r = s.http(other, &concrete(&p), None).await;
        assert_eq!(r.status, 405, "{other} {p}: {}", r.body);
        assert!(error.is_valid(&r.json()), "{other} {p}: {}", r.body);
    }
    // A path under /api that names no endpoint: 404 in the contract's shape.
    let r = s.http("GET", "/api/nope", None).await;
    assert_eq!(r.status, 404);
    assert!(error.is_valid(&r.json()), "{}", r.body);
}

struct Sample {
    method: &'static str,
    /// The documented path.
    template: &'static str,
    /// The path and query sent.
    target: String,
    body: Option<String>,
    key: bool,
    status: u16,
}

fn sample(
    method: &'static str,
    template: &'static str,
    target: &str,
    body: Option<&str>,
    key: bool,
    status: u16,
) -> Sample {
    Sample {
        method,
        template,
        target: target.to_string(),
        body: body.map(str::to_string),
        key,
        status,
    }
}

/// Sends `x` and checks the answer against the spec: the status is
/// documented, the content type is one documented for it, JSON bodies match
/// the schema and required headers are there.
async fn check(s: &TestServer, spec: &Value, x: &Sample) {
    let what = format!("{} {} -> {}", x.method, x.target, x.status);
    let r = if x.key {
        s.http(x.method, &x.target, x.body.as_deref()).await
    } else {
        http(s.addr, x.method, &x.target, &[], x.body.as_deref()).await
    };
    assert_eq!(r.status, x.status, "{what}: {}", r.body);
    let op = operation(spec, x.method, x.template);
    let status = x.status.to_string();
    let doc = resolve(
        spec,
        op["responses"]
            .get(&status)
            .unwrap_or_else(|| panic!("{what}: status not documented")),
    );
    let media = r
        .header("content-type")
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    let content = doc["content"].as_object().expect("content");
    let schema = content
        .get(&media)
        .unwrap_or_else(|| panic!("{what}: content type {media} not documented"))
        .get("schema")
        .expect("schema");
    if media == "application/json" {
        let body: Value = serde_json::from_str(&r.body)
            .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {}", r.body));
        let v = validator(spec, schema);
        let errors: Vec<String> = v.iter_errors(&body).map(|e| e.to_string()).collect();
        assert!(
            errors.is_empty(),
            "{what}: {body} does not match: {errors:?}"
        );
    } else {
        assert!(!r.body.is_empty(), "{what}: empty body");
    }
    if let Some(headers) = doc["headers"].as_object() {
        for (name, h) in headers {
            if h["required"] == true {
                assert!(r.header(name).is_some(), "{what}: no {name} header");
            }
        }
    }
}

#[tokio::test]
async fn answers_match_the_documented_schemas() {
    let spec = spec();
    let mut cfg = config();
    cfg.api.max_body_bytes = 4096;
    for ns in &mut cfg.namespaces {
        ns.inbox = ns.name == "user";
    }
    let s = TestServer::start(cfg).await;
    let mut phone =
        common::Client::connect(s.addr, &format!("{}&device=phone", s.token("bob"))).await;
    let r = phone
        .call(json!({"op": "ack", "channel": "user:bob", "offset": 0}))
        .await;
    assert_eq!(r["ok"], true, "{r}");

    // Something in every answer: a subscriber, and a client publication
    // (with `from`) next to API ones.
    let mut alice = s.client("alice").await;
    alice.subscribe("chat:a").await;
    let r = alice
        .call(json!({"op": "publish", "channel": "chat:a", "data": {"hi": 1}}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    let pos = s.publish("chat:a", json!({"x": [1, "two", null]})).await;
    let epoch = pos["epoch"].as_str().expect("epoch").to_string();
    let _bob = s.client("bob").await;

    let big = format!(r#"{{"channel":"chat:a","data":"{}"}}"#, "x".repeat(5000));
    let big_b = format!(r#"{{"channels":["chat:a"],"data":"{}"}}"#, "x".repeat(5000));
    let big_d = format!(r#"{{"user":"{}"}}"#, "x".repeat(5000));
    let (pu, br, pr, on, hi, di, inf) = (
        "/api/publish",
        "/api/broadcast",
        "/api/presence/{channel}",
        "/api/online",
        "/api/history/{channel}",
        "/api/disconnect",
        "/api/info",
    );
    let samples = vec![
        sample(
            "POST",
            pu,
            pu,
            Some(r#"{"channel":"chat:a","data":{"y":2}}"#),
            true,
            200,
        ),
        sample(
            "POST",
            pu,
            pu,
            Some(r#"{"channel":"user:bob","data":"hi"}"#),
            true,
            200,
        ),
        sample("POST", pu, pu, Some("not json"), true, 400),
        sample(
            "POST",
            pu,
            pu,
            Some(r#"{"channel":"bad name","data":1}"#),
            true,
            400,
        ),
        sample(
            "POST",
            pu,
            pu,
            Some(r#"{"channel":"chat:a","data":1}"#),
            false,
            401,
        ),
        sample("POST", pu, pu, Some(&big), true, 413),
        sample(
            "POST",
            br,
            br,
            Some(r#"{"channels":["chat:a","chat:b"],"data":1}"#),
            true,
            200,
        ),
        sample(
            "POST",
            br,
            br,
            Some(r#"{"channels":[],"data":1}"#),
            true,
            200,
        ),
        sample(
            "POST",
            br,
            br,
            Some(r#"{"channels":"chat:a","data":1}"#),
            true,
            400,
        ),
        sample(
            "POST",
            br,
            br,
            Some(r#"{"channels":["chat:a"],"data":1}"#),
            false,
            401,
        ),
        sample("POST", br, br, Some(&big_b), true, 413),
        sample("GET", pr, "/api/presence/chat:a", None, true, 200),
        sample("GET", pr, "/api/presence/chat:empty", None, true, 200),
        sample("GET", pr, "/api/presence/bad%20name", None, true, 400),
        sample("GET", pr, "/api/presence/chat:a", None, false, 401),
        sample("GET", pr, "/api/presence/", None, true, 404),
        sample("GET", on, on, None, true, 200),
        sample("GET", on, on, None, false, 401),
        sample("GET", hi, "/api/history/chat:a", None, true, 200),
        sample("GET", hi, "/api/history/chat:a?limit=1", None, true, 200),
        sample(
            "GET",
            hi,
            &format!("/api/history/chat:a?since_offset=0&epoch={epoch}&limit=10"),
            None,
            true,
            200,
        ),
        sample(
            "GET",
            hi,
            "/api/history/chat:none?since_offset=5&epoch=x",
            None,
            true,
            200,
        ),
        sample("GET", hi, "/api/history/chat:a?limit=x", None, true, 400),
        sample(
            "GET",
            hi,
            "/api/history/chat:a?since_offset=-1",
            None,
            true,
            400,
        ),
        sample("GET", hi, "/api/history/bad%20name", None, true, 400),
        sample("GET", hi, "/api/history/chat:a", None, false, 401),
        sample("GET", hi, "/api/history/", None, true, 404),
        sample("GET", inf, inf, None, true, 200),
        sample("GET", inf, inf, None, false, 401),
        sample("POST", di, di, Some(r#"{"user":"nobody"}"#), true, 200),
        sample("POST", di, di, Some(r#"{"user":"bob"}"#), true, 200),
        sample("POST", di, di, Some(r#"{"name":"bob"}"#), true, 400),
        sample("POST", di, di, Some(r#"{"user":"bob"}"#), false, 401),
        sample("POST", di, di, Some(&big_d), true, 413),
        sample("GET", "/health", "/health", None, false, 200),
        sample("GET", "/ready", "/ready", None, false, 200),
        sample("GET", "/metrics", "/metrics", None, false, 200),
        sample(
            "GET",
            "/api/inbox/{user}",
            "/api/inbox/bob",
            None,
            true,
            200,
        ),
        sample(
            "GET",
            "/api/inbox/{user}",
            "/api/inbox/a%20b",
            None,
            true,
            400,
        ),
        sample(
            "GET",
            "/api/inbox/{user}",
            "/api/inbox/bob",
            None,
            false,
            401,
        ),
    ];
    let mut covered: BTreeMap<(String, String), BTreeSet<u16>> = BTreeMap::new();
    for x in &samples {
        check(&s, &spec, x).await;
        covered
            .entry((x.method.to_string(), x.template.to_string()))
            .or_default()
            .insert(x.status);
    }
    let r = s.http("GET", "/api/history/chat:a", None).await.json();
    assert!(
        r["publications"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["from"] == "alice")),
        "a client publication was checked: {r}"
    );

    // Without an inbox namespace: 404.
    let plain = TestServer::start(config()).await;
    let x = sample(
        "GET",
        "/api/inbox/{user}",
        "/api/inbox/bob",
        None,
        true,
        404,
    );
    check(&plain, &spec, &x).await;
    covered
        .entry(("GET".into(), "/api/inbox/{user}".into()))
        .or_default()
        .insert(404);

    // Draining: /ready answers 503.
    s.state
        .draining
        .store(true, std::sync::atomic::Ordering::Release);
    let x = sample("GET", "/ready", "/ready", None, false, 503);
    check(&s, &spec, &x).await;
    covered
        .entry(("GET".into(), "/ready".into()))
        .or_default()
        .insert(503);

    // Every documented answer was checked, but for those a healthy in-memory
    // node cannot give.
    for (m, p) in spec_operations(&spec) {
        let op = operation(&spec, &m, &p);
        for status in op["responses"].as_object().expect("responses").keys() {
            let code: u16 = status.parse().expect("numeric status");
            let seen = covered
                .get(&(m.clone(), p.clone()))
                .is_some_and(|c| c.contains(&code));
            let exempt = UNTRIGGERABLE
                .iter()
                .any(|(um, up, uc)| *um == m && *up == p && *uc == code);
            assert!(seen || exempt, "{m} {p} {code}: no sample call checks it");
        }
    }
    drop(alice);
}
