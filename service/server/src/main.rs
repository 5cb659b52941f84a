//! The `computearbitrage` command.

use clap::{Parser, Subcommand};
use computearbitrage::cli::{self, ClientCommand};
use computearbitrage::config::{self, LogFormat, Overrides};
use std::path::PathBuf;
use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "computearbitrage",
    version,
    about = "Cross-cloud spot placement service"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service: price collectors and the gRPC API.
    Serve {
        /// A TOML config file (see docs/configuration.md).
        #[arg(long, env = "COMPUTEARBITRAGE_CONFIG")]
        config: Option<PathBuf>,
        /// Listen address, e.g. 127.0.0.1:7070 (port 0 picks a free one). Overrides `listen`.
        #[arg(long)]
        listen: Option<String>,
        /// Directory for state. Overrides `data_dir`.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Run only the HTTP/TCP router, as its own process, next to a running service
    /// whose `router.enabled` is false. It shares the service's store (same config /
    /// data dir) and follows its route changes via --endpoint, with the admin token.
    Router {
        /// A TOML config file (see docs/configuration.md).
        #[arg(long, env = "COMPUTEARBITRAGE_CONFIG")]
        config: Option<PathBuf>,
        /// The service's data directory. Overrides `data_dir`.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Talk to a running service (prints JSON).
    #[command(flatten)]
    Client(ClientCommand),
}

/// Where the operator commands find the service.
#[derive(clap::Args, Debug)]
struct Connection {
    /// The service's gRPC URL.
    #[arg(
        long,
        global = true,
        env = "COMPUTEARBITRAGE_ENDPOINT",
        default_value = "http://127.0.0.1:7070"
    )]
    endpoint: String,
    /// An API token of the service.
    #[arg(
        long,
        global = true,
        env = "COMPUTEARBITRAGE_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// A PEM file of CA certificates to trust for an https:// endpoint, besides the
    /// system's.
    #[arg(long, global = true, env = "COMPUTEARBITRAGE_CA_FILE")]
    ca_file: Option<PathBuf>,
}

impl Connection {
    fn target(&self) -> computearbitrage_api::connect::Target {
        computearbitrage_api::connect::Target {
            url: self.endpoint.clone(),
            ca_file: self.ca_file.clone(),
        }
    }
}

fn main() -> ExitCode {
    // Files the service makes are its own (the data dir 0700, state, logs, records and
    // secrets 0600); workloads get the usual umask back.
    // SAFETY: umask has no preconditions.
    unsafe {
        libc::umask(0o077);
    }
    // Taken before any thread exists, so no later reader of the environment sees it.
    let bootstrap_token =
        computearbitrage::secrets::take_from_environment("COMPUTEARBITRAGE_BOOTSTRAP_TOKEN");
    let cli = Cli::parse();
    // Read by clap above; the process keeps the value in `cli` only.
    let _ = computearbitrage::secrets::take_from_environment("COMPUTEARBITRAGE_TOKEN");
    match cli.command {
        Command::Client(command) => {
            let Some(token) = cli.connection.token.clone() else {
                eprintln!("error: no token; set COMPUTEARBITRAGE_TOKEN or pass --token");
                return ExitCode::from(2);
            };
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let target = cli::Target {
                service: cli.connection.target(),
                token,
            };
            match runtime.block_on(cli::run(target, command)) {
                Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Router { config, data_dir } => {
            let overrides = Overrides {
                listen: None,
                data_dir,
            };
            let config = match config::load(config.as_deref(), std::env::vars(), &overrides) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let Some(token) = cli.connection.token.clone() else {
                eprintln!("error: the router follows the service's route changes with the admin token; set COMPUTEARBITRAGE_TOKEN or pass --token");
                return ExitCode::from(2);
            };
            init_logging(&config.log_level, config.log_format);
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(computearbitrage::routing::run_standalone(
                config,
                cli.connection.target(),
                token,
                shutdown_signal(),
            )) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, origin = ?e.origin(), "router stopped with an error");
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Serve {
            config,
            listen,
            data_dir,
        } => {
            let overrides = Overrides { listen, data_dir };
            let config = match config::load(config.as_deref(), std::env::vars(), &overrides) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(&config.log_level, config.log_format);

            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(computearbitrage::server::serve(
                config,
                bootstrap_token,
                shutdown_signal(),
            )) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, origin = ?e.origin(), "service stopped with an error");
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_logging(level: &str, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
