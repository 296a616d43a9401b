//! The web pages `tally serve` serves besides the API: the organizers' dashboard at `/` (and
//! room for more pages in folders of their own, such as the canvassers' app at `/app/`). They are
//! built from `web/src` into `web/dist` by npm (see `web/README.md`), committed, and embedded in
//! the binary by `build.rs`, so the server needs no node and no files at run time.
//!
//! Every page is served with a strict Content-Security-Policy ([`CONTENT_SECURITY_POLICY`]: the
//! server's own scripts, styles and connections only, no inline script, no framing), no CORS
//! headers (other origins cannot read any answer), and an ETag for revalidation. The pages call
//! the API with the organizer's token in an `Authorization` header, never a cookie, so a form
//! on another site cannot ride on a signed-in browser.
//!
//! The router sends here whatever no API route takes ([`fallback`]): a built file, a page
//! folder's `index.html` (`/` and `/app/`), or the API's JSON 404.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

/// One built file of `web/dist`.
pub(crate) struct Asset {
    /// Its URL path from the site's root (`/index.html`, `/dashboard.js`, `/app/index.html`).
    pub path: &'static str,
    /// Its Content-Type, by extension.
    pub content_type: &'static str,
    /// A quoted hash of its bytes, for `If-None-Match`.
    pub etag: &'static str,
    /// Its bytes.
    pub body: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));

/// The pages' Content-Security-Policy: everything from the server itself and nothing else; no
/// inline script or style, no `eval`, no plugins, no framing by another site, and forms that
/// never submit anywhere (the pages send their requests from script).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' blob:; font-src 'self'; connect-src 'self'; \
     manifest-src 'self'; worker-src 'self'; form-action 'none'; frame-ancestors 'none'; \
     base-uri 'none'";

/// The canvassers' app's policy (`/app/`): the same, and `'wasm-unsafe-eval'`, without which a
/// browser refuses to compile WebAssembly, and the app keeps its documents with automerge, which
/// is WebAssembly. It allows compiling WebAssembly only: `eval` and inline scripts stay refused.
pub const APP_CONTENT_SECURITY_POLICY: &str = "default-src 'none'; \
     script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; img-src 'self' blob:; \
     font-src 'self'; connect-src 'self'; manifest-src 'self'; worker-src 'self'; \
     form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

/// The policy a path is served with.
fn policy_for(path: &str) -> &'static str {
    if path == "/app" || path.starts_with("/app/") {
        APP_CONTENT_SECURITY_POLICY
    } else {
        CONTENT_SECURITY_POLICY
    }
}

/// The paths of every embedded file, sorted.
pub fn paths() -> impl Iterator<Item = &'static str> {
    ASSETS.iter().map(|a| a.path)
}

fn find(path: &str) -> Option<&'static Asset> {
    ASSETS
        .binary_search_by(|a| a.path.cmp(path))
        .ok()
        .map(|i| &ASSETS[i])
}

/// What a path is, among the built files.
enum Found {
    /// A file (a folder's path ending in `/` is its `index.html`).
    File(&'static Asset),
    /// A page folder named without its trailing slash: redirect there, so its relative links
    /// resolve.
    Folder(String),
    /// Nothing here.
    None,
}

fn lookup(path: &str) -> Found {
    if path.ends_with('/') {
        if let Some(a) = find(&format!("{path}index.html")) {
            return Found::File(a);
        }
        // A page's own routes (`/app/sign`, kept in its history) load the page itself.
    } else if let Some(a) = find(path) {
        return Found::File(a);
    } else if find(&format!("{path}/index.html")).is_some() {
        return Found::Folder(format!("{path}/"));
    }
    // A path inside a page folder other than the root, with no file extension: that page's
    // client-side route.
    let last = path.rsplit('/').next().unwrap_or("");
    if !last.contains('.') {
        let mut dir = path.trim_end_matches('/');
        while let Some((parent, _)) = dir.rsplit_once('/') {
            if parent.is_empty() {
                break;
            }
            if let Some(a) = find(&format!("{parent}/index.html")) {
                return Found::File(a);
            }
            dir = parent;
        }
    }
    Found::None
}

/// The headers every page and file is served with (`path`'s policy: [`policy_for`]).
fn security_headers(headers: &mut HeaderMap, path: &str) {
    let set = |h: &mut HeaderMap, k: header::HeaderName, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(headers, header::CONTENT_SECURITY_POLICY, policy_for(path));
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::REFERRER_POLICY, "no-referrer");
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(
        headers,
        header::HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    );
    set(
        headers,
        header::HeaderName::from_static("cross-origin-resource-policy"),
        "same-origin",
    );
    // Revalidated on every load (a 304 when unchanged), so a new server's pages are used at once.
    set(headers, header::CACHE_CONTROL, "no-cache");
}

/// Answers a request for `path` from the built files, or `None` when there is none.
pub fn respond(method: &Method, path: &str, request: &HeaderMap) -> Option<Response> {
    if path.starts_with("/api/") {
        return None;
    }
    let asset = match lookup(path) {
        Found::File(a) => a,
        Found::Folder(to) => {
            let mut r = StatusCode::PERMANENT_REDIRECT.into_response();
            if let Ok(v) = HeaderValue::from_str(&to) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            security_headers(r.headers_mut(), path);
            return Some(r);
        }
        Found::None => return None,
    };
    if method != Method::GET && method != Method::HEAD {
        let mut r = (
            StatusCode::METHOD_NOT_ALLOWED,
            axum::Json(serde_json::json!({ "error": format!(
                "{method} is not served at {path}: it is a page of the web dashboard (GET); the API is under /api/v1"
            ) })),
        )
            .into_response();
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Some(r);
    }
    let unchanged = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == asset.etag));
    let mut r = if unchanged {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let body = if method == Method::HEAD {
            Body::empty()
        } else {
            Body::from(asset.body)
        };
        let mut r = Response::new(body);
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(asset.body.len()));
        r
    };
    r.headers_mut()
        .insert(header::ETAG, HeaderValue::from_static(asset.etag));
    security_headers(r.headers_mut(), path);
    Some(r)
}

/// The router's fallback: a built file or page, else the API's JSON 404.
pub(crate) async fn fallback(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    match respond(&method, uri.path(), &headers) {
        Some(r) => r,
        None => crate::no_route(uri).await.into_response(),
    }
}

/// Makes a one-time sign-in link to the dashboard for `api`'s token (`tally dashboard`): a
/// throwaway age identity is made here, the token is sealed to it and left with the server
/// (`POST /api/v1/signin-links`), and the link carries the identity in its fragment, which the
/// browser never sends (see `api::signin`). Returns the link and when it stops working.
pub fn signin_link(api: &crate::organizer_cli::Api) -> anyhow::Result<(String, i64)> {
    use std::io::Write as _;

    use age::secrecy::ExposeSecret as _;

    use crate::api::types::{NewSigninLink, SigninLink};

    let key = age::x25519::Identity::generate();
    let recipient = key.to_public();
    let encryptor =
        age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))?;
    let mut sealed = Vec::new();
    let mut w = encryptor.wrap_output(&mut sealed)?;
    w.write_all(api.token.as_bytes())?;
    w.finish()?;
    let link: SigninLink = api.post(
        "/api/v1/signin-links",
        &NewSigninLink {
            sealed: hex::encode(&sealed),
        },
    )?;
    let url = format!(
        "{}/#signin={}.{}",
        api.server.trim_end_matches('/'),
        link.id,
        key.to_string().expose_secret()
    );
    Ok((url, link.expires_at))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> Response {
        respond(&Method::GET, path, &HeaderMap::new()).expect(path)
    }

    #[test]
    fn the_dashboard_is_served_at_the_root_with_its_files() {
        let r = get("/");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert_eq!(
            r.headers()[header::CONTENT_SECURITY_POLICY],
            CONTENT_SECURITY_POLICY
        );
        assert_eq!(r.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert!(
            r.headers()
                .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
                .is_none()
        );
        for (path, ty) in [
            ("/index.html", "text/html; charset=utf-8"),
            ("/dashboard.js", "text/javascript; charset=utf-8"),
            ("/dashboard.css", "text/css; charset=utf-8"),
        ] {
            assert_eq!(get(path).headers()[header::CONTENT_TYPE], ty, "{path}");
        }
    }

    #[test]
    fn the_csp_allows_nothing_from_elsewhere() {
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
            "form-action 'none'",
        ] {
            assert!(CONTENT_SECURITY_POLICY.contains(directive), "{directive}");
        }
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
        assert!(!CONTENT_SECURITY_POLICY.contains("http"));
    }

    #[test]
    fn the_app_is_served_at_app_with_its_worker_manifest_and_webassembly() {
        for (path, ty) in [
            ("/app/", "text/html; charset=utf-8"),
            ("/app/sign", "text/html; charset=utf-8"),
            ("/app/app.js", "text/javascript; charset=utf-8"),
            ("/app/sw.js", "text/javascript; charset=utf-8"),
            ("/app/manifest.webmanifest", "application/manifest+json"),
            ("/app/automerge.wasm", "application/wasm"),
            ("/app/icons/icon-192.png", "image/png"),
        ] {
            let r = get(path);
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            assert_eq!(r.headers()[header::CONTENT_TYPE], ty, "{path}");
            let csp = r.headers()[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap();
            assert_eq!(csp, APP_CONTENT_SECURITY_POLICY, "{path}");
        }
        // Compiling WebAssembly is all the app's policy adds: no eval, no inline script.
        let app = APP_CONTENT_SECURITY_POLICY.replace(" 'wasm-unsafe-eval'", "");
        assert_eq!(app, CONTENT_SECURITY_POLICY);
        assert!(!app.contains("unsafe"));
        assert_eq!(
            get("/app").headers()[header::LOCATION],
            "/app/",
            "the folder without its slash redirects"
        );
        // The dashboard keeps the stricter policy.
        assert_eq!(
            get("/").headers()[header::CONTENT_SECURITY_POLICY],
            CONTENT_SECURITY_POLICY
        );
    }

    #[test]
    fn an_unchanged_file_is_not_sent_again() {
        let etag = get("/dashboard.js").headers()[header::ETAG].clone();
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, etag);
        let r = respond(&Method::GET, "/dashboard.js", &h).unwrap();
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    }

    #[test]
    fn the_api_and_unknown_paths_are_not_pages() {
        assert!(respond(&Method::GET, "/api/v1/nothing", &HeaderMap::new()).is_none());
        assert!(respond(&Method::GET, "/nothing.js", &HeaderMap::new()).is_none());
        let r = respond(&Method::POST, "/", &HeaderMap::new()).unwrap();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn the_embedded_files_are_web_dist() {
        let dist = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../web/dist");
        for a in ASSETS {
            let on_disk = std::fs::read(dist.join(a.path.trim_start_matches('/'))).unwrap();
            assert_eq!(on_disk, a.body, "{} differs from web/dist", a.path);
        }
        assert!(paths().any(|p| p == "/index.html"));
    }
}
