//! The web console: a single-page application served by the collector at `/`, its assets
//! compiled into the binary (no CDN, no files to deploy, no build step).
//!
//! Promises:
//! - Every asset comes from `collector/console/` via `include_bytes!`; nothing is read from
//!   disk or fetched from another origin at run time.
//! - Each answer carries its content type, a strict Content-Security-Policy
//!   ([`CONTENT_SECURITY_POLICY`]: same-origin only, no inline script, no framing),
//!   `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer` and an `ETag`
//!   with `Cache-Control: no-cache`: browsers keep the assets but revalidate them, so a
//!   collector upgrade is picked up at the next load (a matching `If-None-Match` gets a
//!   `304` without a body).
//! - The assets are public (they hold no CMDB data); the page asks for a token and calls
//!   the bearer-protected API under `/api/v1`, which enforces the roles. The console's
//!   role awareness (hiding buttons a role may not use) is a convenience, never the check.
//! - Unknown asset names fall through to the API's JSON 404.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The policy every console answer carries: everything from this origin only, scripts and
/// styles only from files (no inline code), no plugins, no framing by other sites.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const INDEX: Asset = Asset {
    name: "index.html",
    content_type: "text/html; charset=utf-8",
    body: include_bytes!("../console/index.html"),
};

/// The files under `/console/`.
const ASSETS: &[Asset] = &[
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../console/app.js"),
    },
    Asset {
        name: "charts.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../console/charts.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../console/app.css"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../console/favicon.svg"),
    },
];

/// The console's routes: `/`, `/console/` (both the page) and `/console/{file}`.
/// Stateless, so they merge into any router; keep them outside the bearer-token layer.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/console", get(index))
        .route("/console/", get(index))
        .route("/console/{file}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    serve(&INDEX, &headers)
}

async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    if file == INDEX.name {
        return serve(&INDEX, &headers);
    }
    match ASSETS.iter().find(|a| a.name == file) {
        Some(a) => serve(a, &headers),
        None => crate::http::not_found_response(),
    }
}

/// The entity tag of an asset: a digest of its bytes, so it changes exactly when the file
/// does.
fn etag(a: &Asset) -> String {
    let digest = blake3::hash(a.body);
    format!("\"{}\"", &digest.to_hex()[..32])
}

fn serve(a: &Asset, request: &HeaderMap) -> Response {
    let tag = etag(a);
    let fresh = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| {
            let v = v.trim();
            v == "*" || v.trim_start_matches("W/") == tag
        });
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(a.content_type),
            )],
            a.body,
        )
            .into_response()
    };
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&tag) {
        h.insert(header::ETAG, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn fetch(uri: &str, if_none_match: Option<&str>) -> (StatusCode, HeaderMap, Vec<u8>) {
        let mut req = Request::get(uri);
        if let Some(tag) = if_none_match {
            req = req.header(header::IF_NONE_MATCH, tag);
        }
        let resp = routes::<()>()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 24)
            .await
            .unwrap()
            .to_vec();
        (status, headers, body)
    }

    #[tokio::test]
    async fn the_page_and_its_assets_are_served_with_their_types_and_a_strict_policy() {
        for (uri, ty) in [
            ("/", "text/html; charset=utf-8"),
            ("/console/", "text/html; charset=utf-8"),
            ("/console/app.js", "text/javascript; charset=utf-8"),
            ("/console/charts.js", "text/javascript; charset=utf-8"),
            ("/console/app.css", "text/css; charset=utf-8"),
            ("/console/favicon.svg", "image/svg+xml"),
        ] {
            let (status, h, body) = fetch(uri, None).await;
            assert_eq!(status, StatusCode::OK, "{uri}");
            assert_eq!(h[header::CONTENT_TYPE], ty, "{uri}");
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
            assert_eq!(h[header::CACHE_CONTROL], "no-cache");
            let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
            assert!(csp.contains("default-src 'self'"), "{csp}");
            assert!(csp.contains("script-src 'self';"), "{csp}");
            assert!(
                !csp.contains("unsafe-inline") && !csp.contains("http"),
                "{csp}"
            );
            assert!(h.contains_key(header::ETAG));
            assert!(!body.is_empty());
        }
    }

    #[tokio::test]
    async fn a_matching_etag_is_answered_without_a_body() {
        let (_, h, _) = fetch("/console/app.js", None).await;
        let tag = h[header::ETAG].to_str().unwrap().to_owned();
        let (status, h2, body) = fetch("/console/app.js", Some(&tag)).await;
        assert_eq!(status, StatusCode::NOT_MODIFIED);
        assert_eq!(h2[header::ETAG].to_str().unwrap(), tag);
        assert!(body.is_empty());
        let (status, _, _) = fetch("/console/app.js", Some("\"other\"")).await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn unknown_assets_are_a_json_404() {
        let (status, h, body) = fetch("/console/secret.txt", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(
            h[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("application/json")
        );
        assert!(String::from_utf8(body).unwrap().contains("not_found"));
    }

    #[test]
    fn the_page_loads_no_inline_script_and_nothing_from_other_origins() {
        let all: Vec<(&str, &str)> = std::iter::once(&INDEX)
            .chain(ASSETS.iter())
            .map(|a| (a.name, std::str::from_utf8(a.body).unwrap()))
            .collect();
        let (_, html) = all[0];
        // Every <script> has a src (no inline code) and no on*= handler attributes.
        for part in html.split("<script").skip(1) {
            let tag = &part[..part.find('>').unwrap()];
            assert!(tag.contains("src=\"/console/"), "inline script: {tag}");
        }
        assert!(!html.contains(" onclick=") && !html.contains(" onload="));
        for (name, text) in &all {
            // The SVG namespace is a name, not a place anything is loaded from.
            let text = text.replace("http://www.w3.org/2000/svg", "");
            assert!(!text.contains("http://"), "{name} names an http origin");
            assert!(!text.contains("https://"), "{name} names an https origin");
        }
        // Data goes into the DOM as text, never as markup.
        for (name, text) in &all {
            assert!(!text.contains("innerHTML"), "{name} uses innerHTML");
            assert!(!text.contains("eval("), "{name} uses eval");
        }
    }
}
