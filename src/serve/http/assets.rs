//! The dashboard: one page whose HTML, CSS, script, chart library and map are compiled into the
//! binary, so that it loads nothing from another host. `assets/README.md` says where each
//! vendored file came from and how to refresh it.

use axum::http::header;
use axum::response::IntoResponse;

struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("assets/index.html"),
    },
    Asset {
        path: "/assets/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("assets/app.js"),
    },
    Asset {
        path: "/assets/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("assets/style.css"),
    },
    Asset {
        path: "/assets/vendor/uplot/uPlot.iife.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("assets/vendor/uplot/uPlot.iife.min.js"),
    },
    Asset {
        path: "/assets/vendor/uplot/uPlot.min.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("assets/vendor/uplot/uPlot.min.css"),
    },
    Asset {
        path: "/assets/vendor/world/world.json",
        content_type: "application/json",
        body: include_bytes!("assets/vendor/world/world.json"),
    },
];

/// The routes of every asset.
pub fn routes() -> axum::Router<super::AppState> {
    let mut router = axum::Router::new();
    for asset in ASSETS {
        let (content_type, body) = (asset.content_type, asset.body);
        router = router.route(
            asset.path,
            axum::routing::get(move || async move {
                (
                    [
                        (header::CONTENT_TYPE, content_type),
                        // The binary is the version: a new one may change any asset.
                        (header::CACHE_CONTROL, "no-cache"),
                    ],
                    body,
                )
                    .into_response()
            }),
        );
    }
    router
}
