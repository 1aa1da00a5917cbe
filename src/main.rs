//! The `previewdb` binary: `serve` a configuration, run the embedded default (`dev`), hash a
//! token for the configuration, act as the `env` client of a running service, or print shell
//! completions.

use clap::{CommandFactory, Parser, Subcommand};
use previewdb::configuration::{Config, LogFormat};
use previewdb::dev::{self, DevOptions};
use previewdb::domain::token_digest;
use previewdb::startup::{init_tracing, Application};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "previewdb",
    version,
    about = "Isolated, pre-seeded PostgreSQL databases for pull requests"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service with a configuration file (production).
    Serve {
        #[arg(
            long,
            short,
            env = "PREVIEWDB_CONFIG",
            default_value = "previewdb.toml"
        )]
        config: PathBuf,
    },
    /// Run the service on a private PostgreSQL started from the installed server binaries.
    Dev {
        /// Address to serve on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Where the private cluster and its key live.
        #[arg(long, default_value = ".previewdb")]
        data_dir: PathBuf,
        /// A config file adding targets, tokens and blueprints.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Client commands for pipelines (exit codes: see README, "CLI for pipelines").
    Env(Box<previewdb::cli::EnvArgs>),
    /// Print the completion script of a shell (bash, zsh, fish, …) to stdout.
    Completion { shell: clap_complete::Shell },
    /// Print the SHA-256 of a token, as `[[tokens]] sha256` wants it.
    HashToken { token: String },
}

fn main() -> std::process::ExitCode {
    let runtime = || tokio::runtime::Runtime::new().expect("tokio runtime");
    match Cli::parse().command {
        Command::Serve { config } => exit_service(runtime().block_on(serve(config))),
        Command::Dev {
            listen,
            data_dir,
            config,
        } => exit_service(runtime().block_on(run_dev(listen, data_dir, config))),
        Command::Env(args) => exit_with(runtime().block_on(previewdb::cli::run(*args))),
        Command::Completion { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "previewdb", &mut script);
            exit_with(previewdb::cli::write_out(&String::from_utf8_lossy(&script)))
        }
        Command::HashToken { token } => exit_with(previewdb::cli::write_out(&format!(
            "{}\n",
            hex::encode(token_digest(&token))
        ))),
    }
}

fn exit_service(outcome: anyhow::Result<()>) -> std::process::ExitCode {
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            previewdb::cli::write_err(&format!("error: {e:#}"));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The exit code of a client command, its message on stderr.
fn exit_with(outcome: Result<(), previewdb::cli::Failure>) -> std::process::ExitCode {
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(f) => {
            previewdb::cli::write_err(&format!("error: {f}"));
            std::process::ExitCode::from(f.code)
        }
    }
}

async fn serve(path: PathBuf) -> anyhow::Result<()> {
    // The file says how to log, so it is read first; nothing logs while it is read, and an
    // error reading it reaches stderr through `main`.
    let config = Config::load(&path)?;
    init_tracing(config.log_format);
    let app = Application::build(&config).await?;
    tracing::info!(port = app.port(), "previewdb serving");
    app.run_until(shutdown_signal()).await
}

async fn run_dev(listen: String, data_dir: PathBuf, config: Option<PathBuf>) -> anyhow::Result<()> {
    // Before the cluster starts, so that what it logs is kept: only the variable can say how.
    let format = LogFormat::from_env()?.unwrap_or_default();
    init_tracing(format);
    let setup = dev::setup(&DevOptions {
        listen: Some(listen),
        data_dir,
        config,
    })
    .await?;
    if setup.config.log_format != format {
        tracing::warn!("previewdb dev ignores log_format in --config; set PREVIEWDB_LOG_FORMAT");
    }
    let app = Application::build(&setup.config).await?;
    let url = format!(
        "{}://{}:{}",
        app.scheme(),
        setup.config.listen.ip(),
        app.port()
    );
    println!("previewdb dev: serving on {url}");
    println!(
        "  PostgreSQL on 127.0.0.1:{} (data in {})",
        setup.postgres.port(),
        setup.postgres.data_dir().display()
    );
    println!("  export PREVIEWDB_URL={url}");
    println!("  export PREVIEWDB_TOKEN={}", setup.token);
    app.run_until(shutdown_signal()).await?;
    println!("previewdb dev: stopping PostgreSQL");
    setup.postgres.stop();
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
