//! GraphiQL at `GET /graphql`, served wholly by this server. The page and
//! its start script (`api/static/`) and the browser builds of GraphiQL and
//! React (`api/vendor/graphiql/`: pinned, unmodified npm builds, vendored by
//! `scripts/vendor-graphiql` with their licences) are compiled into the
//! binary and served under `/graphql/assets/`. Every answer carries a
//! Content-Security-Policy that lets the page load scripts, styles and
//! connections from this server only, so GraphiQL works offline, and a
//! script from anywhere else (a CDN, an injected tag) does not run under
//! the API's origin.
//!
//! Not here: the GraphQL schema (`graphql.rs`) and what `POST /graphql`
//! checks (`graphql_guard.rs`).

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use honeycell_types::ErrorClass;

use crate::error::ApiError;

/// The policy of the page and its assets: nothing from elsewhere. Fonts and
/// a few images are `data:` URLs inside GraphiQL's stylesheet.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; font-src 'self' data:; connect-src 'self'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const PAGE: &[u8] = include_bytes!("../static/graphiql.html");

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// What `/graphql/assets/{name}` serves: (name, content type, bytes).
const ASSETS: &[(&str, &str, &[u8])] = &[
    ("start.js", JS, include_bytes!("../static/start.js")),
    ("page.css", CSS, include_bytes!("../static/page.css")),
    (
        "graphiql.min.js",
        JS,
        include_bytes!("../vendor/graphiql/graphiql.min.js"),
    ),
    (
        "graphiql.min.css",
        CSS,
        include_bytes!("../vendor/graphiql/graphiql.min.css"),
    ),
    (
        "react.production.min.js",
        JS,
        include_bytes!("../vendor/graphiql/react.production.min.js"),
    ),
    (
        "react-dom.production.min.js",
        JS,
        include_bytes!("../vendor/graphiql/react-dom.production.min.js"),
    ),
    // The licences travel with the code they cover.
    (
        "LICENSE-graphiql",
        TEXT,
        include_bytes!("../vendor/graphiql/LICENSE-graphiql"),
    ),
    (
        "LICENSE-react",
        TEXT,
        include_bytes!("../vendor/graphiql/LICENSE-react"),
    ),
    (
        "THIRD_PARTY_LICENSES",
        TEXT,
        include_bytes!("../vendor/graphiql/THIRD_PARTY_LICENSES"),
    ),
];

/// `GET /graphql`: the GraphiQL page.
pub async fn page() -> Response {
    respond("text/html; charset=utf-8", PAGE, "no-cache")
}

/// `GET /graphql/assets/{name}`: a script, stylesheet or licence of the page.
pub async fn asset(Path(name): Path<String>) -> Result<Response, ApiError> {
    let (_, content_type, body) = ASSETS.iter().find(|(n, ..)| *n == name).ok_or_else(|| {
        ApiError::new(
            ErrorClass::NotFound,
            "not_found",
            format!("no GraphiQL asset {name:?}; GET /graphql for the page"),
        )
    })?;
    // Pinned builds change only with the binary: an hour is safe.
    Ok(respond(content_type, body, "public, max-age=3600"))
}

fn respond(content_type: &'static str, body: &'static [u8], cache: &'static str) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every script and stylesheet the page names is an asset served here,
    /// and the page names nothing outside the server.
    #[test]
    fn the_page_names_only_served_assets() {
        let page = std::str::from_utf8(PAGE).expect("UTF-8 page");
        let mut named = 0;
        for attr in ["src=\"", "href=\""] {
            for (i, _) in page.match_indices(attr) {
                let rest = &page[i + attr.len()..];
                let url = &rest[..rest.find('"').expect("a closed attribute")];
                if url.starts_with("data:") {
                    continue;
                }
                let name = url
                    .strip_prefix("/graphql/assets/")
                    .unwrap_or_else(|| panic!("{url} is not one of ours"));
                assert!(ASSETS.iter().any(|(n, ..)| *n == name), "{name} not served");
                named += 1;
            }
        }
        assert_eq!(named, 6, "four scripts and two stylesheets");
        assert!(!page.contains("//"), "no URL with a host in the page");
    }
}
