//! The `luametrics` command line.

mod cli;

/// Executions move their inputs to a runner thread and their results back: with glibc's
/// malloc each such free takes the slow path and a pooled execution cost ~15% more
/// (BENCHMARKS.md, twelfth session). mimalloc frees across threads cheaply.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use luametrics::engine::EngineSettings;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "luametrics",
    version,
    about = "Lua-embedded user-metrics runtime"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run pipelines over an events file (one JSON object per line:
    /// {"trigger", "tenant", "event"}) and print a summary.
    Run {
        /// The events file (JSON Lines).
        events: PathBuf,
        /// Configuration file (default: ./luametrics.toml if present, else defaults).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Executions in flight at once.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Serve the HTTP API (execute, query, traces, pool, /metrics) until Ctrl-C or SIGTERM,
    /// then drain requests and flush every accepted point.
    Serve {
        /// Configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address to listen on (overrides server.addr); port 0 picks a free port.
        #[arg(long)]
        addr: Option<String>,
    },
    /// Compile and run a script under the sandbox and its limits; print its result, log,
    /// warnings and the metrics it recorded. Exits 1 when the script fails.
    Check {
        /// The Lua script.
        script: PathBuf,
        /// A JSON file with the event the script receives.
        #[arg(long)]
        event: Option<PathBuf>,
        /// A JSON file with the context the script receives.
        #[arg(long)]
        context: Option<PathBuf>,
        /// Tenant to run as.
        #[arg(long, default_value = "check")]
        tenant: String,
        /// Raise Lua errors for rejected metrics instead of returning false, reason.
        #[arg(long)]
        strict: bool,
        /// Time limit in ms.
        #[arg(long, default_value_t = EngineSettings::default().time_limit_ms)]
        time_limit_ms: u64,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Aggregate a stored metric per time bucket.
    Query(cli::query::QueryArgs),
    /// List the metric names in the store.
    Names {
        /// Configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Measure performance on this machine (ratios to baselines measured in the same run).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Build rollups and apply retention now.
    Retention {
        /// Configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Write a deterministic events file for `run` (the example pipelines' triggers).
    GenEvents {
        /// Number of events.
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        /// Number of tenants.
        #[arg(long, default_value_t = 5)]
        tenants: usize,
        /// Random seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Output file (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Pool sizes x concurrency: throughput, latency, waits; a recommended size.
    Pool(cli::bench::PoolArgs),
    /// Targets 1-3 and 6 of docs/targets.md as ratios, each next to its target; exits 1 naming every
    /// target that misses.
    HotPath {
        /// Alternating baseline/subject rounds (medians are reported).
        #[arg(long, default_value_t = 7)]
        rounds: usize,
    },
    /// Targets E1-E4 of docs/targets.md: the login pipeline through the library and over HTTP against
    /// its scripts alone, as ratios; exits 1 naming every target that misses.
    E2e(cli::bench::E2eArgs),
    /// One tenant flooding the pool against another's modest load: the second tenant's p99
    /// and completions with and without the flood, and the first's engine time against its
    /// budget; exits 1 naming every target that misses.
    Fairness(cli::bench::FairnessArgs),
    /// A flush of 10,000 rows and `luametrics run` of the example events into a real libSQL
    /// server (sqld, started on a free port) against a local file, as ratios; exits 1 naming
    /// every target that misses.
    Remote(cli::bench::RemoteArgs),
}

fn main() -> ExitCode {
    luametrics::prepare_process();
    // Like other command-line tools, end quietly when the reader of our output goes away
    // (`luametrics names | head`) instead of printing a panic for the failed print. SIGPIPE
    // itself stays ignored (Rust's default): restored to its default, it killed `serve` (exit
    // 141, no log) whenever a client closed a connection the server was still writing to.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default_hook(info)
    }));
    let cli = Cli::parse();
    // The library reports faults (failing writes, recoveries, a deleted database) through
    // `tracing`; the binary prints them on stderr.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_max_level(tracing::Level::INFO)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("luametrics: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run {
                events,
                config,
                concurrency,
                json,
            } => cli::run::run(events, config, concurrency, json).await,
            Command::Serve { config, addr } => cli::serve::serve(config, addr).await,
            Command::Check {
                script,
                event,
                context,
                tenant,
                strict,
                time_limit_ms,
                json,
            } => {
                cli::check::check(script, event, context, tenant, strict, time_limit_ms, json).await
            }
            Command::Query(args) => cli::query::query(args).await,
            Command::Names { config } => cli::query::names(config).await,
            Command::Retention { config } => cli::query::retention(config).await,
            Command::Bench(BenchCommand::Pool(args)) => cli::bench::pool(args).await,
            Command::Bench(BenchCommand::HotPath { rounds }) => cli::bench::hot_path(rounds).await,
            Command::Bench(BenchCommand::E2e(args)) => cli::bench::e2e(args).await,
            Command::Bench(BenchCommand::Fairness(args)) => cli::bench::fairness(args).await,
            Command::Bench(BenchCommand::Remote(args)) => cli::bench::remote(args).await,
            Command::GenEvents {
                count,
                tenants,
                seed,
                out,
            } => cli::gen::gen_events(count, tenants, seed, out),
        }
    });
    // What still runs now is stuck (the commands keep their own deadlines for the work that
    // matters: flushes, traces): dropping the runtime would wait for its blocking threads
    // for good (adversary round 23: a server whose reads hung never exited on SIGTERM).
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(code) => code,
        // Accepted data that could not be written before the shutdown deadline.
        Err(e @ cli::CliError::Runtime(luametrics::Error::Unwritten { .. })) => {
            eprintln!("luametrics: {e}");
            ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("luametrics: {e}");
            ExitCode::from(2)
        }
    }
}
