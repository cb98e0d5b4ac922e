//! The opt-in HTTP listener (`metrics_listen`): `/metrics` (Prometheus text format),
//! `/health` (200 while serving, 503 with the reason when not) and `/events`
//! (Server-Sent Events; `?kinds=file.,library.changed` selects).

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use futures_util::{Stream, StreamExt};
use serde::Deserialize;

use super::events::selected;
use super::metrics::Metrics;

/// Serves the listener on `listener` until `stop` resolves.
pub async fn serve(
    metrics: Metrics,
    listener: tokio::net::TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/health", get(health))
        .route("/events", get(events))
        .with_state(Arc::new(metrics));
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::warn!("HTTP listener stopped: {e}");
    }
}

async fn metrics_page(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    let body = tokio::task::spawn_blocking(move || super::metrics::render(&m))
        .await
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}

async fn health(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    let d = m.daemon.clone();
    let verdict = tokio::task::spawn_blocking(move || d.serving())
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    match verdict {
        Ok(()) => (StatusCode::OK, "serving\n".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

#[derive(Deserialize)]
struct EventsQuery {
    kinds: Option<String>,
}

async fn events(
    State(m): State<Arc<Metrics>>,
    Query(q): Query<EventsQuery>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let kinds: Vec<String> = q
        .kinds
        .unwrap_or_default()
        .split(',')
        .filter(|k| !k.is_empty())
        .map(str::to_string)
        .collect();
    let rx = m.daemon.hub.subscribe();
    let stream = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(move |item| {
        let keep = match &item {
            Ok(d) => selected(&kinds, d.kind),
            Err(_) => true,
        };
        async move {
            if !keep {
                return None;
            }
            Some(Ok(match item {
                Ok(d) => SseEvent::default()
                    .id(d.seq.to_string())
                    .event(d.kind)
                    .data(d.json.clone()),
                Err(e) => SseEvent::default().event("events.lost").data(e.to_string()),
            }))
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
