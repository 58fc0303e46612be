//! `docs/openapi.json` against the routes the collector really serves.
//!
//! Three checks, each naming exactly what disagrees:
//! - **source → spec**: every `.route("…", get(…).post(…))` in the collector's non-test
//!   source (found by a small, tolerant parser over `collector/src/**/*.rs`) is an operation
//!   of the spec, and every operation of the spec is such a route;
//! - **spec → router**: every operation, sent to the real router (in process, `oneshot`),
//!   is answered by its handler, not by the router's "no such route" 404 or its 405; and
//!   every other method on a spec path is that 405;
//! - **roles**: an operation with `x-roles` answers `403` to exactly the roles not listed,
//!   and one without answers no role with `403`;
//! - **answers**: with a real judgment engine and licence service, the writes (with the
//!   spec's request examples) and then every read answer with a status the spec declares
//!   and a body its schema accepts (a small JSON Schema subset, strict about properties the
//!   schema does not list).
//!
//! Plus the spec's own consistency: every `$ref` resolves, every path parameter of a
//! template is declared (and every declared one is in the template), operationIds are
//! unique, `/api/v1` is bearer-protected and every write there lists its roles.
//!
//! Routes registered in another branch come with an OpenAPI fragment in
//! `docs/openapi.d/`; `python3 docs/openapi-merge.py` folds them into the spec. What a
//! fragment needs to pass here: an operationId and summary per operation, every path
//! parameter declared (an `example` is used as its value, else `dummy-1`), a `401` on
//! `/api/v1` operations, `x-roles` on every write, a JSON `example` on request bodies the
//! handler needs to get past parsing, every status the handler can answer to these
//! requests declared (`404` for a dummy id, `503` when its service is absent from
//! [`ApiState`]), and response schemas that list every property the handler writes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use proptest::prelude::*;
use serde_json::Value;
use tower::ServiceExt;

use super::openapi_schema::schema_errors;
use super::*;
use crate::store::sled::SledStore;

const SPEC: &str = include_str!("../../../docs/openapi.json");

/// Routes the spec deliberately leaves out: (method, path, why). Empty: the console's page
/// and assets are described too.
const EXCLUDED: &[(&str, &str, &str)] = &[];

const ROLES: &[&str] = &["viewer", "operator", "change-manager", "auditor", "admin"];
const HTTP_METHODS: &[&str] = &["get", "post", "put", "patch", "delete"];

/// One operation: lower-case method and the path template as axum writes it.
type Op = (String, String);

fn spec() -> Value {
    serde_json::from_str(SPEC).expect("docs/openapi.json is not JSON")
}

fn spec_ops(spec: &Value) -> BTreeMap<Op, Value> {
    let mut out = BTreeMap::new();
    let paths = spec["paths"].as_object().expect("paths is an object");
    for (path, item) in paths {
        let item = item.as_object().expect("a path item is an object");
        for (method, op) in item {
            if HTTP_METHODS.contains(&method.as_str())
                || ["head", "options", "trace"].contains(&method.as_str())
            {
                out.insert((method.clone(), path.clone()), op.clone());
            }
        }
    }
    out
}

fn show(op: &Op) -> String {
    format!("{} {}", op.0.to_uppercase(), op.1)
}

// === the route parser ===

/// `src` with comments blanked out (string and char literals kept), so that a commented-out
/// or documented route is not taken for a real one. Byte offsets are preserved.
fn strip_comments(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = b.to_vec();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    out[i] = b' ';
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0usize;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        out[i] = b' ';
                        out[i + 1] = b' ';
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        out[i] = b' ';
                        out[i + 1] = b' ';
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        if b[i] != b'\n' {
                            out[i] = b' ';
                        }
                        i += 1;
                    }
                }
            }
            _ => i = skip_literal(b, i).unwrap_or(i + 1),
        }
    }
    // Only ASCII bytes were replaced, and only with ASCII: still UTF-8 where it was.
    String::from_utf8(out).unwrap_or_default()
}

/// If a string, raw string or char literal starts at `i`, the index just after it.
fn skip_literal(b: &[u8], i: usize) -> Option<usize> {
    match b[i] {
        b'"' => {
            let mut j = i + 1;
            while j < b.len() {
                match b[j] {
                    b'\\' => j += 2,
                    b'"' => return Some(j + 1),
                    _ => j += 1,
                }
            }
            None
        }
        b'r' if i == 0 || !is_ident(b[i - 1]) => {
            let mut j = i + 1;
            while j < b.len() && b[j] == b'#' {
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                return None;
            }
            let hashes = j - i - 1;
            j += 1;
            while j < b.len() {
                if b[j] == b'"'
                    && b.len() >= j + 1 + hashes
                    && b[j + 1..j + 1 + hashes].iter().all(|&c| c == b'#')
                {
                    return Some(j + 1 + hashes);
                }
                j += 1;
            }
            None
        }
        b'\'' => {
            // '\n', '\'', '\u{..}', 'x' (a multi-byte char too); otherwise a lifetime.
            if b.get(i + 1) == Some(&b'\\') {
                let mut j = i + 2;
                while j < b.len() && j < i + 12 {
                    if b[j] == b'\'' && j > i + 2 {
                        return Some(j + 1);
                    }
                    j += 1;
                }
                None
            } else {
                (i + 2..(i + 6).min(b.len()))
                    .find(|&j| b[j] == b'\'')
                    .filter(|&j| {
                        std::str::from_utf8(&b[i + 1..j]).is_ok_and(|s| s.chars().count() == 1)
                    })
                    .map(|j| j + 1)
            }
        }
        _ => None,
    }
}

/// Where `needle` next starts in `src` at or after `from`, outside string and char literals.
fn find_code(src: &str, needle: &str, from: usize) -> Option<usize> {
    let b = src.as_bytes();
    let mut i = from;
    while i < b.len() {
        if b[i..].starts_with(needle.as_bytes()) {
            return Some(i);
        }
        i = skip_literal(b, i).unwrap_or(i + 1);
    }
    None
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// The index of the `)` closing the parenthesis opened just before `i`, literals skipped.
fn closing_paren(b: &[u8], mut i: usize) -> Option<usize> {
    let mut depth = 0usize;
    while i < b.len() {
        if let Some(next) = skip_literal(b, i) {
            i = next;
            continue;
        }
        match b[i] {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => {
                if depth == 0 {
                    return (b[i] == b')').then_some(i);
                }
                depth -= 1;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// `src` (comments stripped) without its `#[cfg(test)] mod name { … }` blocks.
fn strip_test_modules(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = b.to_vec();
    let mut from = 0;
    while let Some(at) = find_code(src, "#[cfg(test)]", from) {
        from = at + "#[cfg(test)]".len();
        let mut i = skip_ws(b, from);
        // Further attributes between the cfg and the item.
        while b.get(i) == Some(&b'#') {
            match src[i..].find(']') {
                Some(end) => i = skip_ws(b, i + end + 1),
                None => break,
            }
        }
        let rest = &src[i..];
        let rest = rest.strip_prefix("pub ").unwrap_or(rest);
        let Some(after_mod) = rest.strip_prefix("mod ") else {
            continue;
        };
        let name_len = after_mod.bytes().take_while(|&c| is_ident(c)).count();
        let brace = skip_ws(b, src.len() - after_mod.len() + name_len);
        if b.get(brace) != Some(&b'{') {
            continue;
        }
        let Some(close) = closing_brace(b, brace + 1) else {
            continue;
        };
        for c in &mut out[at..=close] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
        from = close + 1;
    }
    String::from_utf8(out).unwrap_or_default()
}

fn closing_brace(b: &[u8], mut i: usize) -> Option<usize> {
    let mut depth = 0usize;
    while i < b.len() {
        if let Some(next) = skip_literal(b, i) {
            i = next;
            continue;
        }
        match b[i] {
            b'{' => depth += 1,
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

/// The (method, path) pairs registered by `.route("path", get(…).post(…)…)` calls in one
/// source file, or a description of a registration the parser does not understand (a path
/// that is not a literal, `.nest`, `.route_service`, `any(…)`, a route without a method).
fn routes_in(src: &str) -> Result<Vec<Op>, String> {
    let src = strip_test_modules(&strip_comments(src));
    let b = src.as_bytes();
    let line = |i: usize| src[..i].bytes().filter(|&c| c == b'\n').count() + 1;
    for unsupported in [".nest(", ".nest_service(", ".route_service("] {
        if let Some(i) = find_code(&src, unsupported, 0) {
            return Err(format!(
                "line {}: {unsupported}…) is not understood by the route parser of \
                 http/openapi_tests.rs; teach it, or register the routes with .route",
                line(i)
            ));
        }
    }
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = find_code(&src, ".route(", from) {
        let mut i = skip_ws(b, at + ".route(".len());
        if b.get(i) != Some(&b'"') {
            return Err(format!(
                "line {}: .route( with a path that is not a string literal",
                line(at)
            ));
        }
        let end =
            skip_literal(b, i).ok_or_else(|| format!("line {}: unterminated path", line(at)))?;
        let path = src[i + 1..end - 1].to_owned();
        i = skip_ws(b, end);
        if b.get(i) != Some(&b',') {
            return Err(format!(
                "line {}: .route(\"{path}\" without a method router",
                line(at)
            ));
        }
        let start = i + 1;
        let close = closing_paren(b, start)
            .ok_or_else(|| format!("line {}: .route(\"{path}\", … is not closed", line(at)))?;
        let methods = top_level_methods(&src[start..close]);
        if methods.is_empty() {
            return Err(format!(
                "line {}: .route(\"{path}\", …) names no method (get, post, …)",
                line(at)
            ));
        }
        for m in methods {
            if m == "any" || m == "on" {
                return Err(format!(
                    "line {}: .route(\"{path}\", {m}(…)) serves methods the spec cannot list; name them",
                    line(at)
                ));
            }
            out.push((m, path.clone()));
        }
        from = close;
    }
    Ok(out)
}

/// The method-router constructors called at the top level of a `.route` argument:
/// `get(a).post(b).layer(x)` → get, post (what `.layer(…)` holds is not looked at).
fn top_level_methods(expr: &str) -> Vec<String> {
    const NAMES: &[&str] = &[
        "get", "post", "put", "patch", "delete", "head", "options", "trace", "any", "on",
    ];
    let b = expr.as_bytes();
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        if let Some(next) = skip_literal(b, i) {
            i = next;
            continue;
        }
        match b[i] {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            c if depth == 0 && is_ident(c) && (i == 0 || !is_ident(b[i - 1])) => {
                let len = b[i..].iter().take_while(|&&c| is_ident(c)).count();
                let word = &expr[i..i + len];
                let after = skip_ws(b, i + len);
                if NAMES.contains(&word) && b.get(after) == Some(&b'(') {
                    out.push(word.to_owned());
                }
                i += len;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// Every non-test `.rs` file under `dir`.
fn source_files(dir: &FsPath, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if p.is_dir() {
            if name != "tests" {
                source_files(&p, out);
            }
        } else if name.ends_with(".rs") && name != "tests.rs" && !name.ends_with("_tests.rs") {
            out.push(p);
        }
    }
}

/// The routes registered anywhere in the collector's source, with the file that does it.
fn source_routes() -> BTreeMap<Op, String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    source_files(&root, &mut files);
    let mut out = BTreeMap::new();
    let mut problems = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let rel = f.strip_prefix(&root).unwrap_or(&f).display().to_string();
        match routes_in(&text) {
            Ok(routes) => {
                for r in routes {
                    out.insert(r, rel.clone());
                }
            }
            Err(e) => problems.push(format!("collector/src/{rel}: {e}")),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    out
}

// === the router ===

struct RoleTokens;

impl Authenticator for RoleTokens {
    fn authenticate(&self, bearer: &str) -> Option<Principal> {
        let role = bearer.strip_prefix("token-")?;
        ROLES.contains(&role).then(|| Principal {
            name: format!("{role}-user"),
            role: role.to_owned(),
        })
    }
}

fn app(dir: &FsPath) -> Router {
    let store = SledStore::open(dir, 16 << 20).unwrap();
    router(ApiState {
        store: Arc::new(store),
        auth: Arc::new(RoleTokens),
        telemetry: Arc::new(crate::telemetry::Telemetry::new()),
        judgment: None,
        audit: None,
        licenses: None,
        config_audit: None,
        cmdb_health: None,
        fleet: None,
    })
}

/// A request for `op` as `role`: path parameters from their `example` (else a dummy),
/// the body from the request body's first media type with an example (else none).
fn request(method: &str, path: &str, op: Option<&Value>, role: &str) -> Request<Body> {
    let mut uri = path.to_owned();
    for p in op
        .and_then(|o| o["parameters"].as_array())
        .into_iter()
        .flatten()
        .filter(|p| p["in"] == "path")
    {
        let name = p["name"].as_str().unwrap();
        let value = p["example"].as_str().unwrap_or("dummy-1");
        uri = uri.replace(&format!("{{{name}}}"), value);
    }
    // Undeclared parameters (caught by the structural check) still get a value.
    while let (Some(a), Some(b)) = (uri.find('{'), uri.find('}')) {
        if b < a {
            break;
        }
        uri.replace_range(a..=b, "dummy-1");
    }
    let mut req = Request::builder()
        .method(Method::from_bytes(method.to_uppercase().as_bytes()).unwrap())
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer token-{role}"));
    let mut body = Body::empty();
    if let Some(content) = op.and_then(|o| o["requestBody"]["content"].as_object())
        && let Some((ct, mt)) = content.iter().find(|(_, mt)| mt.get("example").is_some())
    {
        let text = match &mt["example"] {
            Value::String(s) if !ct.contains("json") => s.clone(),
            v => v.to_string(),
        };
        req = req.header(header::CONTENT_TYPE, ct.as_str());
        body = Body::from(text);
    }
    req.body(body).unwrap()
}

struct Reply {
    status: StatusCode,
    body: Value,
}

async fn send(app: &Router, req: Request<Body>) -> Reply {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20)
        .await
        .unwrap();
    Reply {
        status,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

/// Answered by the router's fallbacks, not by a handler.
fn unrouted(r: &Reply) -> bool {
    (r.status == StatusCode::NOT_FOUND && r.body["error"]["message"] == "no such route")
        || (r.status == StatusCode::METHOD_NOT_ALLOWED
            && r.body["error"]["code"] == "method_not_allowed")
}

// === the checks ===

#[test]
fn every_route_in_the_source_is_in_the_spec_and_back() {
    let spec = spec();
    let in_spec: BTreeSet<Op> = spec_ops(&spec).into_keys().collect();
    let excluded: BTreeSet<Op> = EXCLUDED
        .iter()
        .map(|(m, p, _)| (m.to_lowercase(), (*p).to_owned()))
        .collect();
    let in_source = source_routes();
    // A parser that finds nothing would make this test pass vacuously.
    assert!(
        in_source.len() >= 50,
        "the route parser found only {in_source:?}"
    );
    let missing_from_spec: Vec<String> = in_source
        .iter()
        .filter(|(op, _)| !in_spec.contains(*op) && !excluded.contains(*op))
        .map(|(op, file)| format!("  {} (collector/src/{file})", show(op)))
        .collect();
    let not_in_source: Vec<String> = in_spec
        .iter()
        .filter(|op| !in_source.contains_key(*op))
        .map(|op| format!("  {}", show(op)))
        .collect();
    let stale_exclusions: Vec<String> = excluded
        .iter()
        .filter(|op| !in_source.contains_key(*op) || in_spec.contains(*op))
        .map(|op| format!("  {}", show(op)))
        .collect();
    let mut msg = String::new();
    if !missing_from_spec.is_empty() {
        msg += &format!(
            "routes the collector registers but docs/openapi.json does not describe \
             (add them, or merge their fragments: python3 docs/openapi-merge.py):\n{}\n",
            missing_from_spec.join("\n")
        );
    }
    if !not_in_source.is_empty() {
        msg += &format!(
            "operations in docs/openapi.json that no .route(…) in collector/src registers:\n{}\n",
            not_in_source.join("\n")
        );
    }
    if !stale_exclusions.is_empty() {
        msg += &format!(
            "EXCLUDED entries that are not registered or are in the spec anyway:\n{}\n",
            stale_exclusions.join("\n")
        );
    }
    assert!(msg.is_empty(), "{msg}");
}

#[tokio::test]
async fn every_spec_operation_is_served_by_the_router() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path());
    let spec = spec();
    let ops = spec_ops(&spec);
    let mut unserved = Vec::new();
    let mut extra_methods = Vec::new();
    for ((method, path), op) in &ops {
        let r = send(&app, request(method, path, Some(op), "admin")).await;
        if unrouted(&r) {
            unserved.push(format!(
                "  {} → {} {}",
                show(&(method.clone(), path.clone())),
                r.status,
                r.body
            ));
        }
    }
    let paths: BTreeSet<&String> = ops.keys().map(|(_, p)| p).collect();
    for path in paths {
        for method in HTTP_METHODS {
            let key = ((*method).to_owned(), path.clone());
            if ops.contains_key(&key) {
                continue;
            }
            let r = send(
                &app,
                request(
                    method,
                    path,
                    ops.get(&("get".into(), path.clone())),
                    "admin",
                ),
            )
            .await;
            if r.status != StatusCode::METHOD_NOT_ALLOWED {
                extra_methods.push(format!("  {} → {} (expected 405)", show(&key), r.status));
            }
        }
    }
    assert!(
        unserved.is_empty() && extra_methods.is_empty(),
        "operations in docs/openapi.json the router does not serve:\n{}\n\
         methods the router serves on a spec path that the spec does not list:\n{}",
        unserved.join("\n"),
        extra_methods.join("\n")
    );
}

#[tokio::test]
async fn x_roles_match_the_role_checks() {
    let dir = tempfile::tempdir().unwrap();
    let app = full_app(dir.path());
    let spec = spec();
    let mut wrong = Vec::new();
    let mut checked_roles = 0;
    let mut refusals = 0;
    for ((method, path), op) in spec_ops(&spec) {
        if !path.starts_with("/api/v1/") {
            continue;
        }
        let allowed: Option<Vec<&str>> = op.get("x-roles").map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect()
        });
        if allowed.is_some() {
            checked_roles += 1;
        }
        for role in ROLES {
            let r = send(&app, request(&method, &path, Some(&op), role)).await;
            let refused = r.status == StatusCode::FORBIDDEN;
            let should_refuse = allowed.as_ref().is_some_and(|a| !a.contains(role));
            // A handler that finds its service absent before it looks at the role tells
            // nothing about the role.
            if r.status == StatusCode::SERVICE_UNAVAILABLE {
                continue;
            }
            refusals += usize::from(refused && should_refuse);
            if refused != should_refuse {
                wrong.push(format!(
                    "  {} as {role}: {} (x-roles: {:?}) {}",
                    show(&(method.clone(), path.clone())),
                    r.status,
                    allowed,
                    r.body
                ));
            }
        }
    }
    assert!(
        checked_roles >= 15,
        "only {checked_roles} operations have x-roles"
    );
    assert!(refusals >= 30, "only {refusals} refusals observed");
    assert!(
        wrong.is_empty(),
        "x-roles disagree with the handlers:\n{}",
        wrong.join("\n")
    );
}

/// A router with a real judgment engine and licence service over an empty store, and one
/// incident (so the incident routes have something to answer with).
fn full_app(dir: &FsPath) -> Router {
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir, 16 << 20).unwrap());
    let judgment = Arc::new(
        crate::judgment::Judgment::open(
            Arc::clone(&store),
            crate::judgment::JudgmentSettings::default(),
            None,
            None,
        )
        .unwrap(),
    );
    judgment
        .raise_alerts(&[crate::judgment::ExternalAlert {
            kind: crate::incidents::AlertKind::Capacity,
            host_id: "host-1".into(),
            ci_id: crate::store::host_ci_id("host-1"),
            class: "filesystem".into(),
            key: "/var".into(),
            summary: "/var full in 5 days".into(),
            at: std::time::SystemTime::now(),
        }])
        .unwrap();
    let licenses = crate::licenses::Licenses::open(
        Arc::clone(&store),
        Some(Arc::clone(&judgment)),
        None,
        crate::licenses::LicenseSettings::default(),
    )
    .unwrap();
    let config_audit =
        Arc::new(crate::config_audit::ConfigAudit::open(Arc::clone(&store), None).unwrap());
    let cmdb_health = crate::cmdb_health::CmdbHealth::new(
        Arc::clone(&store),
        Some(Arc::clone(&config_audit) as Arc<dyn crate::compliance::ComplianceSource>),
        crate::cmdb_health::HealthSettings::default(),
    );
    let fleet = crate::fleet::Fleet::new(Arc::clone(&store), std::time::Duration::from_secs(30), 3);
    router(ApiState {
        store,
        auth: Arc::new(RoleTokens),
        telemetry: Arc::new(crate::telemetry::Telemetry::new()),
        judgment: Some(judgment),
        audit: None,
        licenses: Some(Arc::new(licenses)),
        config_audit: Some(config_audit),
        cmdb_health: Some(Arc::new(cmdb_health)),
        fleet: Some(Arc::new(fleet)),
    })
}

#[tokio::test]
async fn real_answers_match_the_declared_responses() {
    let dir = tempfile::tempdir().unwrap();
    let app = full_app(dir.path());
    let spec = spec();
    let ops = spec_ops(&spec);
    // Writes first (in an order that makes the later ones meaningful), then every read.
    let writes = [
        ("post", "/api/v1/changes"),
        ("patch", "/api/v1/changes/{id}"),
        ("post", "/api/v1/changes/import"),
        ("post", "/api/v1/baselines"),
        ("post", "/api/v1/baselines/{id}/approve"),
        ("post", "/api/v1/waivers"),
        ("post", "/api/v1/incidents/{id}/actions"),
        ("post", "/api/v1/licenses/entitlements"),
        ("put", "/api/v1/licenses/rules"),
        ("put", "/api/v1/licenses/lists"),
        ("post", "/api/v1/licenses/refresh"),
        ("put", "/api/v1/policies"),
        ("post", "/api/v1/changes/{id}/transition"),
        ("post", "/api/v1/waivers/{id}/revoke"),
        ("put", "/api/v1/audit/register"),
        ("post", "/api/v1/audit/runs"),
        ("post", "/api/v1/audit/runs/{id}/deficiencies/{def}"),
    ];
    let mut order: Vec<Op> = writes
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    order.extend(ops.keys().filter(|(m, _)| m == "get").cloned());
    let mut wrong = Vec::new();
    let mut successes = 0;
    for key in &order {
        let Some(op) = ops.get(key) else {
            wrong.push(format!(
                "  {}: in the test's list, not in the spec",
                show(key)
            ));
            continue;
        };
        let resp = app
            .clone()
            .oneshot(request(&key.0, &key.1, Some(op), "admin"))
            .await
            .unwrap();
        let status = resp.status();
        let ct = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20)
            .await
            .unwrap();
        let Some(declared) = op["responses"].get(status.as_str()) else {
            wrong.push(format!(
                "  {}: answered {status}, which the spec does not declare: {}",
                show(key),
                String::from_utf8_lossy(&bytes)
            ));
            continue;
        };
        let declared = match declared.get("$ref").and_then(Value::as_str) {
            Some(r) => r
                .strip_prefix('#')
                .and_then(|p| spec.pointer(p))
                .unwrap_or(declared),
            None => declared,
        };
        if status.is_success() {
            successes += 1;
        }
        if !ct.starts_with("application/json") {
            continue;
        }
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        let Some(schema) = declared["content"]["application/json"].get("schema") else {
            wrong.push(format!(
                "  {}: {status} has no JSON schema in the spec",
                show(key)
            ));
            continue;
        };
        let mut errs = Vec::new();
        schema_errors(schema, &body, &spec, "$", &mut errs);
        for e in errs {
            wrong.push(format!("  {} → {status}: {e}", show(key)));
        }
    }
    assert!(
        wrong.is_empty(),
        "answers that disagree with docs/openapi.json:\n{}",
        wrong.join("\n")
    );
    assert!(successes >= 45, "only {successes} operations answered 2xx");
}

/// `value` against `components.schemas.<name>`, as problems.
fn check_schema(spec: &Value, name: &str, value: &Value) -> Vec<String> {
    let mut errs = Vec::new();
    let schema = serde_json::json!({ "$ref": format!("#/components/schemas/{name}") });
    schema_errors(&schema, value, spec, name, &mut errs);
    errs
}

/// `json` read as `T` (serde fills the defaults) and written back: what the API writes.
fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(json: Value) -> Value {
    serde_json::to_value(serde_json::from_value::<T>(json).unwrap()).unwrap()
}

/// The bodies the empty-store router cannot produce (agents, CIs, relations, clones,
/// metrics, drift, availability, forecasts, series, the audit log), built from the real
/// types and checked against their schemas.
#[test]
fn bodies_of_the_real_types_match_their_schemas() {
    use serde_json::json;
    let spec = spec();
    let t = "2026-11-25T10:00:00Z";
    let mut errs = Vec::new();
    let agent = round_trip::<crate::store::AgentRecord>(json!({
        "agent_id": "agt-1", "host_id": "host-1", "instance_id": "i", "version": "0.1.0",
        "hostname": "web-1",
        "identity": {"hostname": "web-1", "fqdn": null, "machine_id": "m", "product_uuid": null,
                     "serial_number": null, "board_serial": null, "cloud_instance_id": null,
                     "macs": ["52:54:00:12:34:56"]},
        "enrolled_at": t, "last_seen": t, "last_seq": 3, "connected": true,
        "outbox_events": 0, "outbox_bytes": 0,
        "collectors": [{"name": "dpkg", "status": "permission_denied", "duration_ms": 4,
                        "items": 7, "message": null, "classes": ["package"]}],
        "revoked": false,
        "last_shutdown": {"at": t, "reason": "reboot", "received_at": t}
    }));
    errs.extend(check_schema(&spec, "AgentRecord", &agent));
    let ci = json!({"id": "ci-1", "host_id": "host-1", "class": "package", "key": "dpkg:bash:amd64",
        "state": "present", "attrs": {"name": "bash", "size": 3, "ratio": 0.5, "on": true,
        "none": null, "list": ["a", 1]}, "version": 2, "first_seen": t, "last_seen": t,
        "last_changed": t, "source_agent": "agt-1", "source_seq": 12});
    let version = json!({"ci_id": "ci-1", "version": 1, "change": "added", "state": "present",
        "attrs": {"name": "bash"}, "old_attrs": {}, "observed_at": t, "agent_id": "agt-1",
        "seq": 1, "change_id": null});
    errs.extend(check_schema(
        &spec,
        "CiRecord",
        &round_trip::<crate::store::CiRecord>(ci.clone()),
    ));
    let mut detail = ci.clone();
    detail["versions"] = json!([version]);
    errs.extend(check_schema(
        &spec,
        "CiDetail",
        &round_trip::<json::CiDetail>(detail),
    ));
    let relation = round_trip::<json::RelationView>(json!({"from": "ci-2", "to": "ci-1",
        "kind": "runs", "host_id": "host-1", "present": true, "direction": "incoming",
        "other": {"id": "ci-2", "class": "service", "key": "ssh.service", "state": "present"}}));
    errs.extend(check_schema(&spec, "RelationView", &relation));
    let clone = round_trip::<crate::store::CloneRecord>(json!({"host_id": "host-1",
        "agents": ["agt-1", "agt-2"], "identity_key": "product_uuid=x", "detected_at": t}));
    errs.extend(check_schema(&spec, "CloneRecord", &clone));
    let metrics = round_trip::<json::HostMetrics>(json!({"host_id": "host-1", "from": t, "to": t,
        "items": [{"host_id": "host-1", "window_start": t, "window_seconds": 60,
                   "summaries": [{"name": "cpu_percent", "labels": {"cpu": "0"}, "min": 1.0,
                                  "avg": 2.0, "max": 3.0, "p95": 3.0, "samples": 4}]}]}));
    errs.extend(check_schema(&spec, "HostMetrics", &metrics));
    for (verdict, extra) in [
        ("authorized", json!({"change_id": "CHG0000001"})),
        ("accepted", json!({"waiver_id": "WVR0000001"})),
        ("unauthorized", json!({})),
    ] {
        let mut d = json!({"id": "DRF0000000001", "ci_id": "ci-1", "host_id": "host-1",
            "hostname": "web-1", "class": "file", "key": "/etc/motd", "kind": "changed",
            "changes": [{"name": "size", "old": 3, "new": null}], "verdict": verdict,
            "agent_id": "agt-1", "seq": 3, "version": 2, "observed_at": t, "evaluated_at": t,
            "open": true, "resolved_at": null, "resolution": null, "incident": "INC0000001"});
        for (k, v) in extra.as_object().unwrap() {
            d[k] = v.clone();
        }
        errs.extend(check_schema(
            &spec,
            "DriftRecord",
            &round_trip::<crate::drift::DriftRecord>(d),
        ));
    }
    let outage = json!({"id": "OUT0000000001", "subject": "monitor", "ci_id": "ci-m",
        "host_id": "host-1", "hostname": "web-1", "name": "nginx", "start": t, "end": null,
        "planned": false, "change_id": null, "cause": "ActiveState=failed", "incident": null});
    errs.extend(check_schema(
        &spec,
        "Outage",
        &round_trip::<crate::availability::Outage>(outage.clone()),
    ));
    let figures = round_trip::<crate::availability::AvailabilityFigures>(json!({"ci_id": "ci-h",
        "host_id": "host-1", "name": "web-1", "subject": "host", "from": t, "to": t,
        "agreed_seconds": 100, "planned_downtime_seconds": 0, "unplanned_downtime_seconds": 1,
        "availability_percent": 99.0, "outages": 1, "planned_outages": 0, "mtbf_seconds": 99.0,
        "mtrs_seconds": null, "outage_list": [outage]}));
    errs.extend(check_schema(&spec, "AvailabilityFigures", &figures));
    let forecast = round_trip::<crate::capacity::Forecast>(json!({"host_id": "host-1",
        "hostname": "db-01", "resource": "filesystem:/var", "unit": "bytes", "status": "at_risk",
        "current": 6.5e10, "capacity": 1.0e11, "threshold": 9.0e10, "threshold_percent": 90.0,
        "slope_per_day": 3.0e9, "exhaustion_at": t, "days_to_threshold": 8.3,
        "confidence": 0.71, "points": 120, "incident": null, "computed_at": t}));
    errs.extend(check_schema(&spec, "Forecast", &forecast));
    let series = serde_json::to_value(crate::capacity::SeriesView {
        host_id: "host-1".into(),
        hostname: None,
        resource: "cpu".into(),
        unit: "percent".into(),
        capacity: Some(100.0),
        tier: crate::capacity::rollup::Tier::Hour,
        points: vec![crate::capacity::PointView {
            t: std::time::SystemTime::UNIX_EPOCH,
            min: 1.0,
            avg: 2.0,
            max: 3.0,
            p95: 3.0,
            samples: 60,
        }],
    })
    .unwrap();
    errs.extend(check_schema(&spec, "CapacitySeries", &series));
    let entry = round_trip::<crate::audit_log::AuditEntry>(json!({"seq": 41,
        "at": "2026-11-25T09:30:00.000Z", "actor": "carol", "role": "change-manager",
        "action": "change.approved", "object": "CHG0000001", "why": null,
        "details": {"from": "draft"}, "prev_hash": "00", "hash": "11"}));
    errs.extend(check_schema(&spec, "AuditEntry", &entry));
    let report = serde_json::to_value(crate::audit_log::AuditVerifyReport {
        entries: 3,
        head_seq: 3,
        anchor_seq: None,
        ok: false,
        problems: vec![crate::audit_log::AuditProblem {
            seq: Some(2),
            line: 2,
            kind: crate::audit_log::AuditProblemKind::Edited,
            message: "seq 2 (line 2): hash mismatch".into(),
        }],
        omitted_problems: 0,
    })
    .unwrap();
    errs.extend(check_schema(&spec, "AuditVerifyReport", &report));
    assert!(
        errs.is_empty(),
        "schemas that disagree with the types:\n  {}",
        errs.join("\n  ")
    );
}

/// The finer role rules, as `x-roles-<case>` beside `x-roles`: (method, path, extension,
/// a body that triggers the case).
const ROLE_CASES: &[(&str, &str, &str, &str)] = &[
    (
        "post",
        "/api/v1/changes/{id}/transition",
        "x-roles-approve",
        r#"{"to": "approved"}"#,
    ),
    (
        "post",
        "/api/v1/incidents/{id}/actions",
        "x-roles-close-with-change",
        r#"{"action": "close", "note": "emergency fix", "change_id": "CHG0000001"}"#,
    ),
];

#[tokio::test]
async fn x_roles_cases_match_the_role_checks() {
    let dir = tempfile::tempdir().unwrap();
    let app = full_app(dir.path());
    let spec = spec();
    let ops = spec_ops(&spec);
    let mut wrong = Vec::new();
    for (method, path, ext, body) in ROLE_CASES {
        let op = &ops[&((*method).to_owned(), (*path).to_owned())];
        let Some(allowed) = op[*ext].as_array() else {
            wrong.push(format!(
                "  {} has no {ext}",
                show(&((*method).into(), (*path).into()))
            ));
            continue;
        };
        for role in ROLES {
            let mut req = request(method, path, Some(op), role);
            *req.body_mut() = Body::from(*body);
            let r = send(&app, req).await;
            let should_refuse = !allowed.iter().any(|a| a == role);
            if (r.status == StatusCode::FORBIDDEN) != should_refuse {
                wrong.push(format!(
                    "  {method} {path} {ext} as {role}: {} {}",
                    r.status, r.body
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "x-roles-* disagree with the handlers:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_spec_is_consistent() {
    let spec = spec();
    let mut problems = Vec::new();
    if spec["openapi"] != "3.1.0" {
        problems.push("openapi is not 3.1.0".to_owned());
    }
    // Every $ref resolves.
    let mut refs = Vec::new();
    collect_refs(&spec, "", &mut refs);
    for (at, r) in &refs {
        let ok = r
            .strip_prefix('#')
            .is_some_and(|ptr| spec.pointer(ptr).is_some());
        if !ok {
            problems.push(format!("{at}: $ref {r} does not resolve"));
        }
    }
    assert!(refs.len() > 100, "only {} $refs found", refs.len());
    // Bearer auth on /api/v1, none elsewhere.
    if spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] != "bearer"
        || spec["components"]["securitySchemes"]["bearerAuth"]["type"] != "http"
    {
        problems.push("components.securitySchemes.bearerAuth is not http bearer".into());
    }
    if spec["security"] != serde_json::json!([{"bearerAuth": []}]) {
        problems.push("the top-level security is not [{bearerAuth: []}]".into());
    }
    let mut op_ids = BTreeMap::<String, Vec<String>>::new();
    let path_items = spec["paths"].as_object().unwrap();
    for ((method, path), op) in spec_ops(&spec) {
        let name = show(&(method.clone(), path.clone()));
        match op["operationId"].as_str() {
            Some(id) if !id.is_empty() => {
                op_ids.entry(id.to_owned()).or_default().push(name.clone())
            }
            _ => problems.push(format!("{name}: no operationId")),
        }
        if op["summary"].as_str().is_none_or(str::is_empty) {
            problems.push(format!("{name}: no summary"));
        }
        // Path parameters: declared exactly as the template has them.
        let in_template: BTreeSet<String> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(str::to_owned)
            .collect();
        let params = op["parameters"].as_array().into_iter().flatten().chain(
            path_items[&path]["parameters"]
                .as_array()
                .into_iter()
                .flatten(),
        );
        let mut declared = BTreeSet::new();
        for p in params {
            let p = match p.get("$ref").and_then(Value::as_str) {
                Some(r) => r
                    .strip_prefix('#')
                    .and_then(|ptr| spec.pointer(ptr))
                    .unwrap_or(p),
                None => p,
            };
            if p["in"] == "path" {
                let n = p["name"].as_str().unwrap_or("").to_owned();
                if p["required"] != true {
                    problems.push(format!("{name}: path parameter {n} is not required"));
                }
                declared.insert(n);
            }
        }
        for n in in_template.difference(&declared) {
            problems.push(format!("{name}: path parameter {{{n}}} is not declared"));
        }
        for n in declared.difference(&in_template) {
            problems.push(format!(
                "{name}: declares path parameter {n} the template lacks"
            ));
        }
        if let Some(content) = op["requestBody"]["content"].as_object()
            && !content.values().any(|mt| mt.get("example").is_some())
        {
            problems.push(format!("{name}: a request body without an example"));
        }
        let responses = op["responses"].as_object();
        if responses.is_none_or(|r| r.is_empty()) {
            problems.push(format!("{name}: no responses"));
        }
        let api = path.starts_with("/api/v1/");
        if api {
            if op.get("security").is_some() {
                problems.push(format!("{name}: overrides the bearer security of /api/v1"));
            }
            if responses.is_none_or(|r| !r.contains_key("401")) {
                problems.push(format!("{name}: no 401 response"));
            }
            if method != "get" {
                let roles = op["x-roles"].as_array();
                let valid = roles.is_some_and(|r| {
                    !r.is_empty()
                        && r.iter()
                            .all(|v| v.as_str().is_some_and(|s| ROLES.contains(&s)))
                });
                if !valid {
                    problems.push(format!("{name}: a write without a valid x-roles list"));
                }
            }
        } else if op["security"] != serde_json::json!([]) {
            problems.push(format!("{name}: outside /api/v1 but not security: []"));
        }
    }
    for (id, ops) in op_ids {
        if ops.len() > 1 {
            problems.push(format!("operationId {id} is used by {}", ops.join(", ")));
        }
    }
    assert!(
        problems.is_empty(),
        "docs/openapi.json:\n  {}",
        problems.join("\n  ")
    );
}

fn collect_refs(v: &Value, at: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if k == "$ref" {
                    if let Some(r) = v.as_str() {
                        out.push((at.to_owned(), r.to_owned()));
                    }
                } else {
                    collect_refs(v, &format!("{at}/{k}"), out);
                }
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                collect_refs(v, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

// === the parser on its own ===

fn ops(list: &[(&str, &str)]) -> Vec<Op> {
    list.iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect()
}

#[test]
fn parser_reads_the_patterns_in_use() {
    let src = r#"
        //! `GET /api/v1/doc` in a doc comment: .route("/api/v1/doc", get(x))
        pub fn routes() -> Router<ApiState> {
            Router::new()
                .route("/api/v1/a", get(list_a).post(create_a))
                .route(
                    "/api/v1/a/import",
                    post(import_a).layer(DefaultBodyLimit::max(MAX)),
                )
                // .route("/api/v1/commented", get(nothing))
                .route("/api/v1/b/{id}", axum::routing::get(get_b).patch(update_b)) /* .route("/x", put(y)) */
                .route("/api/v1/c", get(|| async { let m = std::collections::HashMap::<u8, u8>::new(); m.get(&1).is_some().to_string() }))
                .route("/api/v1/d", delete(d).layer(tower::util::MapRequestLayer::new(|r: R| r.post(1))))
                .merge(other::routes())
        }
        const S: &str = ".route(\"/not/a/route\", get(x))";
        const C: char = '"';
        fn f<'a>(x: &'a str) -> &'a str { x }
        #[cfg(test)]
        mod tests {
            fn t() { Router::new().route("/hook", post(hook)); }
        }
    "#;
    assert_eq!(
        routes_in(src).unwrap(),
        ops(&[
            ("get", "/api/v1/a"),
            ("post", "/api/v1/a"),
            ("post", "/api/v1/a/import"),
            ("get", "/api/v1/b/{id}"),
            ("patch", "/api/v1/b/{id}"),
            ("get", "/api/v1/c"),
            ("delete", "/api/v1/d"),
        ])
    );
}

#[test]
fn parser_refuses_what_it_cannot_read() {
    for (src, says) in [
        (r#"Router::new().nest("/api", api())"#, ".nest("),
        (
            r#"Router::new().route(PATH, get(x))"#,
            "not a string literal",
        ),
        (r#"Router::new().route("/x", any(x))"#, "any(…)"),
        (
            r#"Router::new().route("/x", handler_router())"#,
            "names no method",
        ),
        (
            r#"Router::new().route_service("/x", svc)"#,
            ".route_service(",
        ),
    ] {
        let e = routes_in(src).unwrap_err();
        assert!(e.contains(says), "{src}: {e}");
    }
}

#[test]
fn parser_finds_a_route_added_without_a_spec_entry() {
    // What the source check sees when someone adds a route and forgets the spec.
    let http_rs =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/http.rs"))
            .unwrap();
    let patched = http_rs.replacen(
        ".route(\"/api/v1/whoami\", get(whoami))",
        ".route(\"/api/v1/whoami\", get(whoami))\n        .route(\"/api/v1/forgotten\", get(whoami).delete(whoami))",
        1,
    );
    assert_ne!(
        patched, http_rs,
        "http.rs no longer registers /api/v1/whoami this way"
    );
    let spec = spec();
    let in_spec: BTreeSet<Op> = spec_ops(&spec).into_keys().collect();
    let missing: Vec<Op> = routes_in(&patched)
        .unwrap()
        .into_iter()
        .filter(|op| !in_spec.contains(op))
        .collect();
    assert_eq!(
        missing,
        ops(&[
            ("get", "/api/v1/forgotten"),
            ("delete", "/api/v1/forgotten")
        ])
    );
}

proptest! {
    #[test]
    fn parser_never_panics(s in "\\PC{0,200}") {
        let _ = routes_in(&s);
    }

    #[test]
    fn parser_never_panics_on_route_shaped_input(
        parts in proptest::collection::vec(
            prop_oneof![
                Just(".route(".to_owned()), Just("\"".to_owned()), Just("(".to_owned()),
                Just(")".to_owned()), Just("get".to_owned()), Just(",".to_owned()),
                Just("'".to_owned()), Just("//".to_owned()), Just("/*".to_owned()),
                Just("*/".to_owned()), Just("#[cfg(test)] mod t {".to_owned()),
                Just("}".to_owned()), Just("r#\"".to_owned()), Just("\\".to_owned()),
                Just("é".to_owned()), Just("\n".to_owned()),
            ],
            0..40,
        )
    ) {
        let _ = routes_in(&parts.concat());
    }
}
