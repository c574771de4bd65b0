//! The floor: a bare axum + rustls server on the same stack as the webhook (axum 0.8, axum-server
//! 0.9 with rustls on aws-lc-rs) that reads the request body and answers every POST with a fixed
//! response of a given size. Nothing is decoded or decided, so the throughput and latency it
//! reaches are the most any handler on this stack can reach on this machine; the webhook benchmark
//! reports its figures as a ratio to this one.
//!
//! It uses the webhook's allocator (mimalloc), so the ratio measures the webhook's own work.
//!
//! usage: bench-floor --listen 127.0.0.1:18443 --response-bytes 512

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Router, http::StatusCode};
use axum_server::tls_rustls::RustlsConfig;
use clap::Parser;

/// The webhook's body limit (controller-runtime's 7 MiB: two 3 MiB objects plus overhead).
const BODY_LIMIT: usize = 7 * 1024 * 1024;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(about = "Bare axum + rustls server answering every POST with a fixed body")]
struct Args {
    /// Address to listen on (loopback only).
    #[arg(long, default_value = "127.0.0.1:18443")]
    listen: SocketAddr,
    /// Size of the fixed response body in bytes (match the webhook's response size).
    #[arg(long, default_value_t = 512)]
    response_bytes: usize,
}

/// A syntactically valid AdmissionReview response padded to exactly `size` bytes (or the minimum
/// valid review when `size` is smaller than that).
fn fixed_response(size: usize) -> Bytes {
    let head = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"00000000-0000-0000-0000-000000000000","allowed":true,"warnings":[""#;
    let tail = r#""]}}"#;
    let pad = size.saturating_sub(head.len() + tail.len());
    let mut body = String::with_capacity(head.len() + pad + tail.len());
    body.push_str(head);
    body.extend(std::iter::repeat_n('x', pad));
    body.push_str(tail);
    Bytes::from(body)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if !args.listen.ip().is_loopback() {
        return Err(format!("refusing to listen on {}: loopback only", args.listen).into());
    }
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])?;
    let tls = RustlsConfig::from_pem(
        cert.cert.pem().into_bytes(),
        cert.signing_key.serialize_pem().into_bytes(),
    )
    .await?;

    let response = fixed_response(args.response_bytes);
    let app = Router::new()
        .route(
            "/{*path}",
            post(move |body: Bytes| {
                let response = response.clone();
                async move {
                    // Touch the body so the read cannot be optimised away.
                    std::hint::black_box(body.len());
                    (
                        StatusCode::OK,
                        [(header::CONTENT_TYPE, "application/json")],
                        response,
                    )
                        .into_response()
                }
            }),
        )
        .layer(DefaultBodyLimit::max(BODY_LIMIT));

    println!("bench-floor listening on https://{}", args.listen);
    axum_server::bind_rustls(args.listen, tls)
        .serve(app.into_make_service())
        .await?;
    Ok(())
}
