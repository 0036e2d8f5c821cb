//! Load generators for the benchmark harness (`benches/run.sh`): a tool,
//! not part of the gateway. Built with `cargo build --release --example
//! loadgen`; plain HTTP/1.1 to loopback addresses only, every run bounded
//! in connections and time.

mod load;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "loadgen",
    about = "Load generators for waitroom's benchmarks (loopback only)"
)]
struct Cli {
    #[command(subcommand)]
    kind: Loadgen,
}

#[derive(Subcommand)]
enum Loadgen {
    /// Open N event streams, change the room, measure the fan-out.
    Sse {
        /// A public listener (repeatable: replicas of a shared room share
        /// the streams out between them).
        #[arg(long, required = true)]
        public: Vec<std::net::SocketAddr>,
        #[arg(long)]
        admin: std::net::SocketAddr,
        #[arg(long)]
        admin_token: String,
        #[arg(long, default_value = "bench")]
        room: String,
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        #[arg(long, default_value_t = 8)]
        sources: u8,
        /// A gateway's pid, to read its RSS and CPU (repeatable: summed).
        #[arg(long)]
        gateway_pid: Vec<u32>,
        /// Streams per load-generator process (each needs one open file
        /// per stream).
        #[arg(long, default_value_t = 15000)]
        per_process: usize,
        /// After the change, let the line move this many seconds (each
        /// stream then a fan of its own, in a fresh line).
        #[arg(long, requires = "moving_rate_per_min")]
        moving_secs: Option<u64>,
        /// The admit rate while the line moves.
        #[arg(long, requires = "moving_secs")]
        moving_rate_per_min: Option<u64>,
    },
    /// One child process of `loadgen sse` (driven over stdin/stdout).
    #[command(hide = true)]
    SseStreams {
        #[arg(long, required = true)]
        public: Vec<std::net::SocketAddr>,
        #[arg(long)]
        room: String,
        /// Absent: each stream joins as a fan of its own.
        #[arg(long)]
        token: Option<String>,
        #[arg(long)]
        count: usize,
        #[arg(long, default_value_t = 8)]
        sources: u8,
        #[arg(long, default_value_t = 0)]
        offset: usize,
    },
    /// Entries per second against the configured rate.
    Drip {
        #[arg(long)]
        public: std::net::SocketAddr,
        /// Another replica's public listener (repeatable): joins and claims
        /// are spread over all of them.
        #[arg(long)]
        also_public: Vec<std::net::SocketAddr>,
        #[arg(long)]
        admin: std::net::SocketAddr,
        #[arg(long)]
        admin_token: String,
        #[arg(long, default_value = "bench")]
        room: String,
        #[arg(long)]
        rate: u64,
        #[arg(long, default_value_t = 60)]
        secs: u64,
    },
    /// A tiny `200 ok` upstream.
    Upstream {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
    },
}

fn run_loadgen(runtime: &tokio::runtime::Runtime, kind: Loadgen) -> ExitCode {
    use serde_json::Value;
    let result = runtime.block_on(async {
        match kind {
            Loadgen::Sse {
                public,
                admin,
                admin_token,
                room,
                connections,
                sources,
                gateway_pid,
                per_process,
                moving_secs,
                moving_rate_per_min,
            } => {
                load::sse(load::SseOptions {
                    publics: public,
                    admin,
                    admin_token,
                    room,
                    connections,
                    sources,
                    gateway_pids: gateway_pid,
                    per_process,
                    moving: moving_secs
                        .zip(moving_rate_per_min)
                        .map(|(secs, rate_per_min)| load::Moving { rate_per_min, secs }),
                })
                .await
            }
            Loadgen::SseStreams {
                public,
                room,
                token,
                count,
                sources,
                offset,
            } => {
                load::streams(load::StreamsOptions {
                    publics: public,
                    room,
                    token,
                    count,
                    sources,
                    offset,
                })
                .await
            }
            Loadgen::Drip {
                public,
                also_public,
                admin,
                admin_token,
                room,
                rate,
                secs,
            } => {
                load::drip(load::DripOptions {
                    public,
                    also_public,
                    admin,
                    admin_token,
                    room,
                    rate_per_min: rate,
                    secs,
                })
                .await
            }
            Loadgen::Upstream { listen } => load::upstream(listen)
                .await
                .map(|()| serde_json::Value::Null),
        }
    });
    match result {
        Ok(Value::Null) => ExitCode::SUCCESS,
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A `sse-streams` child is one of several processes on the same cores
    // as the gateway it measures: one thread each, not one per core.
    let runtime = if matches!(cli.kind, Loadgen::SseStreams { .. }) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    match runtime {
        Ok(rt) => run_loadgen(&rt, cli.kind),
        Err(e) => {
            eprintln!("loadgen: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}
