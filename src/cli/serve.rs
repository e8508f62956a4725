//! `luametrics serve`: the HTTP sidecar.

use super::CliError;
use luametrics::server::{self, Tokens};
use luametrics::{Config, Runtime};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

pub(crate) async fn serve(
    config: Option<PathBuf>,
    addr: Option<String>,
) -> Result<ExitCode, CliError> {
    let config = Config::load(config.as_deref())?;
    let mut settings = config.server.clone();
    if let Some(a) = addr {
        settings.addr = a;
    }
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
    server::serve(
        listener,
        runtime.clone(),
        settings,
        tokens,
        server::shutdown_signal(),
    )
    .await
    .map_err(|source| CliError::Listen {
        addr: local.to_string(),
        source,
    })?;
    let summary = runtime.shutdown().await?;
    eprintln!(
        "stopped: flushed {} metric rows, {} traces written",
        summary.final_rows, summary.traces_written
    );
    Ok(ExitCode::SUCCESS)
}
