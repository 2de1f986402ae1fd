//! `GET <route-prefix>/`: the status page (see [`crate::status`]); `HEAD` too.

use std::time::SystemTime;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::status::{render, StatusPage};

/// Renders the page from a snapshot of the store and the source's sections.
pub(super) async fn status_page(State(state): State<AppState>) -> Response {
    let groups = state.inner.store.snapshot();
    let sections = state.inner.source.status_sections();
    let html = render(&StatusPage {
        now: SystemTime::now(),
        started: state.inner.start_time,
        route_prefix: &state.inner.route_prefix,
        groups: &groups,
        sections: &sections,
    });
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // The page is a view of now; a cached copy would show a stale verdict.
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}
