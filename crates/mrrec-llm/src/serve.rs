//! `mrrec llm serve`: the serving policy behind an OpenAI-compatible
//! surface, so the LLM tier scales apart from the recommenders. Calls to the
//! `default` model run on the serving version; a middleware holds a lease on
//! that version for the whole call, so a hot swap never removes a model
//! under a running call.
//!
//! The surface is closed: only `POST /v1/chat/completions` (mistral.rs's
//! handler), `GET /v1/models`, `GET /health` and `GET /mrrec/policy` (which
//! version serves) exist. mistral.rs's own router also mounts admin routes
//! (`/v1/models/unload`, `/re_isq`, `/v1/models/tune`, …) and any-origin
//! CORS; neither is served here, and there is no CORS at all. With
//! `llm.api_key` set every route but `/health` needs
//! `Authorization: Bearer <key>` and answers 401 without it.

use crate::EmbeddedLlm;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use mistralrs_server_core::chat_completion::chatcompletions;
use std::future::Future;
use std::sync::Arc;

async fn hold_lease(State(llm): State<Arc<EmbeddedLlm>>, request: Request, next: Next) -> Response {
    let lease = llm.lease();
    let response = next.run(request).await;
    drop(lease);
    response
}

async fn policy(State(llm): State<Arc<EmbeddedLlm>>) -> Json<serde_json::Value> {
    let lease = llm.lease();
    Json(serde_json::json!({
        "version": lease.version,
        "model": lease.dir.display().to_string(),
    }))
}

/// The OpenAI model list: `default` (the serving version) and the serving
/// version's directory, the name chat answers carry.
async fn models(State(llm): State<Arc<EmbeddedLlm>>) -> Json<serde_json::Value> {
    let lease = llm.lease();
    let model =
        |id: String| serde_json::json!({ "id": id, "object": "model", "owned_by": "mrrec" });
    Json(serde_json::json!({
        "object": "list",
        "data": [model("default".into()), model(lease.dir.display().to_string())],
    }))
}

async fn health() -> &'static str {
    "OK"
}

/// Largest request body accepted (a chat call carries a prompt of a few
/// thousand tokens; mistral.rs's own default is 50 MB).
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Answers 401 unless the request carries `Authorization: Bearer <key>`.
async fn require_key(State(key): State<Arc<str>>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|given| same_secret(given.as_bytes(), key.as_bytes())) {
        next.run(request).await
    } else {
        metrics::counter!("mrrec_llm_serve_unauthorized_total").increment(1);
        (
            axum::http::StatusCode::UNAUTHORIZED,
            [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
            "a bearer token (llm.api_key) is required\n",
        )
            .into_response()
    }
}

/// Compares without stopping at the first difference, so the time taken
/// says nothing about how much of a guess was right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The HTTP routes of `llm serve`; `api_key` (empty: none) guards all but
/// `/health`.
pub fn router(llm: Arc<EmbeddedLlm>, api_key: &str) -> axum::Router {
    metrics::describe_counter!(
        "mrrec_llm_serve_unauthorized_total",
        "Calls to llm serve refused for a missing or wrong bearer token."
    );
    let chat = axum::Router::new()
        .route("/v1/chat/completions", post(chatcompletions))
        .with_state(llm.runner().clone());
    let ours = axum::Router::new()
        .route("/v1/models", get(models))
        .route("/mrrec/policy", get(policy))
        .with_state(llm.clone());
    let mut guarded = chat
        .merge(ours)
        .layer(axum::middleware::from_fn_with_state(llm, hold_lease));
    if !api_key.is_empty() {
        let key: Arc<str> = Arc::from(api_key);
        guarded = guarded.layer(axum::middleware::from_fn_with_state(key, require_key));
    }
    axum::Router::new()
        .route("/health", get(health))
        .merge(guarded)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

/// Serves `llm` on `listener` until `stop` resolves.
pub async fn serve(
    llm: Arc<EmbeddedLlm>,
    listener: tokio::net::TcpListener,
    api_key: &str,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(llm, api_key);
    tracing::info!(
        address = %listener.local_addr()?,
        bearer_token = !api_key.is_empty(),
        "serving the policy (POST /v1/chat/completions, GET /v1/models, /health, /mrrec/policy)"
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secrets_match_only_when_equal() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
        assert!(!same_secret(b"", b"a"));
    }
}
