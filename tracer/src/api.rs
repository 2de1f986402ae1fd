//! The tracer's own HTTP routes, served by the gateway beside its API:
//! `GET /api/v1/drops?limit=N` returns the most recent drop samples as JSON.

use std::sync::Arc;

use axum::{
    extract::{Query, State},
    http::header,
    response::IntoResponse,
    routing::get,
    Router,
};
use serde::Deserialize;

use crate::samples::SampleHub;

/// Samples returned when no `limit` is given.
const DEFAULT_LIMIT: usize = 100;

#[derive(Deserialize)]
struct DropsQuery {
    limit: Option<usize>,
}

/// The routes, under `prefix` (the gateway's normalised route prefix, `""` for none).
pub fn routes(samples: Arc<SampleHub>, prefix: &str) -> Router {
    Router::new()
        .route(&format!("{prefix}/api/v1/drops"), get(drops))
        .with_state(samples)
}

async fn drops(
    State(samples): State<Arc<SampleHub>>,
    Query(query): Query<DropsQuery>,
) -> impl IntoResponse {
    let events = samples.recent(query.limit.unwrap_or(DEFAULT_LIMIT));
    let body = serde_json::json!({
        "status": "success",
        "data": events.iter().map(|e| &**e).collect::<Vec<_>>(),
    });
    // Same CORS stance as the gateway's /api/v1 routes.
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        body.to_string(),
    )
}

#[cfg(test)]
mod tests {
    use axum::{body::Body, http::Request};
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    use super::*;
    use crate::{enrich::Destination, samples::DropEvent};

    fn event(port: u16) -> DropEvent {
        DropEvent {
            time: "2026-11-25T10:00:00.000001Z".into(),
            netns: "host".into(),
            interface: "eth0".into(),
            direction: Some(crate::samples::Direction::Ingress),
            protocol: "tcp",
            src: Some("10.0.0.2".parse().expect("ip")),
            sport: port,
            dst: Some("172.18.0.2".parse().expect("ip")),
            dport: 80,
            reason: "IP_INADDRERRORS".into(),
            location: "ip_error".into(),
            class: crate::drop_class::DropClass::Transit,
            len: 60,
            target: Destination::default(),
        }
    }

    async fn get_json(app: Router, uri: &str) -> serde_json::Value {
        let response = app
            .oneshot(Request::get(uri).body(Body::empty()).expect("request"))
            .await
            .expect("the router answers");
        assert_eq!(response.status(), 200, "GET {uri}");
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        serde_json::from_slice(&body).expect("JSON body")
    }

    #[tokio::test]
    async fn drops_returns_the_newest_samples_up_to_limit() {
        let hub = Arc::new(SampleHub::new(10));
        for port in 1..=5 {
            hub.publish(event(port));
        }
        let all = get_json(routes(Arc::clone(&hub), ""), "/api/v1/drops").await;
        assert_eq!(all["status"], "success");
        assert_eq!(all["data"].as_array().expect("array").len(), 5);
        let two = get_json(routes(Arc::clone(&hub), "/pg"), "/pg/api/v1/drops?limit=2").await;
        let ports: Vec<u64> = two["data"]
            .as_array()
            .expect("array")
            .iter()
            .map(|e| e["sport"].as_u64().expect("sport"))
            .collect();
        assert_eq!(ports, vec![4, 5], "the two newest, oldest first");
        assert_eq!(two["data"][0]["dst"], "172.18.0.2");
        assert_eq!(two["data"][0]["location"], "ip_error");
    }
}
