//! `--metrics ADDR`: the engine's metrics as Prometheus text over plain
//! HTTP, from a recorder installed for the process.

use std::net::SocketAddr;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::error::CliError;

/// How long a scraper may take to send its request.
const REQUEST_WITHIN: Duration = Duration::from_secs(5);
/// The most request bytes read; the path is all that matters.
const MAX_REQUEST_BYTES: usize = 8 << 10;

/// Install the process's metrics recorder and serve it on `addr` until
/// `shutdown`. Returns the address actually bound (for port 0).
///
/// # Errors
/// [`CliError::Metrics`] when the recorder cannot be installed or `addr`
/// cannot be bound.
pub(crate) async fn serve(
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> Result<SocketAddr, CliError> {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)
        .map_err(|e| CliError::Metrics(format!("cannot install the recorder: {e}")))?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| CliError::Metrics(format!("cannot listen on {addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| CliError::Metrics(format!("listening on {addr}: {e}")))?;
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, _)) => {
                    let handle = handle.clone();
                    tokio::spawn(async move {
                        if let Err(e) = respond(stream, &handle).await {
                            tracing::debug!(error = %e, "metrics request failed");
                        }
                    });
                }
                Err(e) => tracing::warn!(error = %e, "metrics listener accept failed"),
            }
        }
    });
    tracing::info!(%bound, "serving Prometheus metrics at /metrics");
    Ok(bound)
}

async fn respond(mut stream: TcpStream, handle: &PrometheusHandle) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let read_head = async {
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < MAX_REQUEST_BYTES {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            request.extend_from_slice(&buf[..n]);
        }
        Ok::<(), std::io::Error>(())
    };
    tokio::time::timeout(REQUEST_WITHIN, read_head)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request head"))??;
    let line = request.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut words = line.split(|&b| b == b' ');
    let method = words.next().unwrap_or_default();
    let path = words.next().unwrap_or_default();
    let (status, body) = if method != b"GET" {
        ("405 Method Not Allowed", String::from("only GET\n"))
    } else if path == b"/metrics" || path == b"/" {
        handle.run_upkeep();
        ("200 OK", handle.render())
    } else {
        ("404 Not Found", String::from("metrics are at /metrics\n"))
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
