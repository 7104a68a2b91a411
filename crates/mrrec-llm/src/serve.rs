//! `mrrec llm serve`: the serving policy behind mistral.rs's own
//! OpenAI-compatible routes (mistralrs-server-core), so the LLM tier scales
//! apart from the recommenders. Calls to the `default` model run on the
//! serving version; a middleware holds a lease on that version for the whole
//! call, so a hot swap never removes a model under a running call.
//! `GET /mrrec/policy` tells which version serves.

use crate::EmbeddedLlm;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::get;
use axum::Json;
use mistralrs_server_core::mistralrs_server_router_builder::MistralRsServerRouterBuilder;
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

/// The HTTP routes for `llm`.
pub async fn router(llm: Arc<EmbeddedLlm>) -> anyhow::Result<axum::Router> {
    let routes = MistralRsServerRouterBuilder::new()
        .with_mistralrs(llm.runner().clone())
        .build()
        .await?;
    let policy_route = axum::Router::new()
        .route("/mrrec/policy", get(policy))
        .with_state(llm.clone());
    Ok(routes
        .merge(policy_route)
        .layer(axum::middleware::from_fn_with_state(llm, hold_lease)))
}

/// Serves `llm` on `listener` until `stop` resolves.
pub async fn serve(
    llm: Arc<EmbeddedLlm>,
    listener: tokio::net::TcpListener,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = router(llm).await?;
    tracing::info!(address = %listener.local_addr()?, "serving the policy (OpenAI-compatible routes under /v1)");
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await?;
    Ok(())
}
