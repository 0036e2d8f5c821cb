//! The `waitroom` command: run the gateway, check a config, or run the demo.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use waitroom::config::{Config, ConfigError, EnvOverrides, LogFormat};

/// Exit status for an invalid configuration (EX_CONFIG-like, as sysexits' EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(name = "waitroom", version, about = "A virtual waiting-room gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway with a configuration file.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file; prints every problem and exits non-zero if any.
    CheckConfig { file: PathBuf },
    /// Run a self-contained demo: a toy checkout behind the gateway, with simulated fans.
    Demo {
        /// Public port (the admin API listens on the next one).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Simulated fans who join before you.
        #[arg(long, default_value_t = 40)]
        fans: u64,
        /// Admission rate per minute.
        #[arg(long, default_value_t = 60)]
        rate: u64,
    },
    /// Recompute a room's pre-queue order from its revealed seed and check
    /// the commitment it published before opening.
    VerifyShuffle {
        /// The revealed seed (64 hex characters).
        #[arg(long)]
        seed: String,
        /// How many pre-queue entries there were (sequence numbers 1..=N).
        #[arg(long)]
        entries: u32,
        /// The commitment published before opening (SHA-256 of the seed, hex).
        #[arg(long)]
        commitment: Option<String>,
        /// Print only this sequence number's place.
        #[arg(long)]
        seq: Option<u32>,
    },
}

fn verify_shuffle(
    seed: &str,
    entries: u32,
    commitment: Option<&str>,
    seq: Option<u32>,
) -> ExitCode {
    use waitroom::shuffle::{Seed, order};
    let seed = match Seed::from_hex(seed) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("waitroom verify-shuffle: --seed: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Some(c) = commitment {
        if !c.trim().eq_ignore_ascii_case(&seed.commitment()) {
            println!(
                "commitment MISMATCH: SHA-256(seed) = {}, published {}",
                seed.commitment(),
                c.trim()
            );
            return ExitCode::FAILURE;
        }
        println!("commitment ok: SHA-256(seed) = {}", seed.commitment());
    }
    let order = order(&seed, entries);
    match seq {
        Some(s) => match order.iter().position(|&x| x == s) {
            Some(i) => println!("sequence number {s} is at place {}", i + 1),
            None => {
                eprintln!(
                    "waitroom verify-shuffle: sequence number {s} is not among 1..={entries}"
                );
                return ExitCode::FAILURE;
            }
        },
        None => {
            println!("place sequence_number");
            for (i, s) in order.iter().enumerate() {
                println!("{} {s}", i + 1);
            }
        }
    }
    ExitCode::SUCCESS
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path, &EnvOverrides::from_process_env()).map_err(|e| {
        eprintln!("waitroom: {}: {e}", path.display());
        match e {
            ConfigError::Read { .. } => ExitCode::from(66),
            _ => ExitCode::from(EXIT_CONFIG),
        }
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("waitroom: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::CheckConfig { file } => match load(&file) {
            Ok(c) => {
                println!("{}: ok ({} room(s))", file.display(), c.rooms.len());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Run { config } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_tracing(config.log_format);
            match runtime.block_on(waitroom::server::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "gateway failed");
                    eprintln!("waitroom: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::VerifyShuffle {
            seed,
            entries,
            commitment,
            seq,
        } => verify_shuffle(&seed, entries, commitment.as_deref(), seq),
        Command::Demo { port, fans, rate } => {
            init_tracing(LogFormat::Text);
            let opts = waitroom::demo::DemoOptions {
                port,
                fans,
                rate_per_min: rate.max(1),
            };
            match runtime.block_on(waitroom::demo::run(opts)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("waitroom demo: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
