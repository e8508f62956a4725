//! `luametrics serve`: the HTTP sidecar.

use super::CliError;
use luametrics::server::{self, Tokens};
use luametrics::{Config, Runtime};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) async fn serve(
    config: Option<PathBuf>,
    addr: Option<String>,
) -> Result<ExitCode, CliError> {
    let config = Config::load(config.as_deref())?;
    let mut settings = config.server.clone();
    if let Some(a) = addr {
        settings.addr = a;
    }
    Tokens::check(&settings).map_err(|problem| CliError::Arg {
        arg: "server.tenant_tokens",
        problem,
    })?;
    let tokens = Tokens::from_settings(&settings);
    let runtime = Arc::new(Runtime::start(config).await?);
    let listener = tokio::net::TcpListener::bind(&settings.addr)
        .await
        .map_err(|source| CliError::Listen {
            addr: settings.addr.clone(),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| CliError::Listen {
        addr: settings.addr.clone(),
        source,
    })?;
    if settings.execute_token.is_none() {
        eprintln!("execute token (generated): {}", tokens.execute);
    }
    if settings.admin_token.is_none() {
        eprintln!("admin token (generated): {}", tokens.admin);
    }
    // Tests and scripts read this line to find the port.
    println!("listening on http://{local}");
    // The shutdown deadline starts when the signal arrives: draining requests, writing traces
    // and the final flush all fit in `recorder.shutdown_timeout_ms`.
    let timeout = Duration::from_millis(runtime.config().recorder.shutdown_timeout_ms);
    let signalled: Arc<parking_lot::Mutex<Option<Instant>>> = Arc::default();
    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let at = signalled.clone();
    let signal = async move {
        server::shutdown_signal().await;
        *at.lock() = Some(Instant::now());
        let _ = drain_tx.send(());
    };
    let server = tokio::spawn(server::serve(
        listener,
        runtime.clone(),
        settings,
        tokens,
        signal,
    ));
    let mut server = server;
    let served = tokio::select! {
        r = &mut server => Some(r),
        _ = drain_rx => None,
    };
    let served = match served {
        Some(r) => r,
        None => {
            // Requests in flight get up to half the deadline to finish; the rest of the time
            // belongs to traces and the final flush.
            let started = signalled.lock().unwrap_or_else(Instant::now);
            match tokio::time::timeout_at((started + timeout / 2).into(), &mut server).await {
                Ok(r) => r,
                Err(_) => {
                    server.abort();
                    eprintln!("luametrics: requests still in flight at half the shutdown deadline were cut off");
                    Ok(Ok(()))
                }
            }
        }
    };
    match served {
        Ok(Ok(())) => {}
        Ok(Err(source)) => {
            return Err(CliError::Listen {
                addr: local.to_string(),
                source,
            })
        }
        Err(join) => {
            return Err(CliError::Listen {
                addr: local.to_string(),
                source: std::io::Error::other(join.to_string()),
            })
        }
    }
    let started = signalled.lock().unwrap_or_else(Instant::now);
    let summary = runtime.shutdown_by(started + timeout).await?;
    eprintln!(
        "stopped: flushed {} metric rows, {} traces written",
        summary.final_rows, summary.traces_written
    );
    Ok(ExitCode::SUCCESS)
}
