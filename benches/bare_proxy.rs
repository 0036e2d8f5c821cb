//! The floor of the chosen HTTP stack: a reverse proxy built from hyper
//! alone, for `benches/run.sh` to measure beside nginx and waitroom.
//!
//! It does what the nginx baseline's config does per request and nothing
//! more: every downstream connection gets its own upstream HTTP/1.1
//! connection, driven in the same task (as waitroom's `UpstreamLink`), and
//! each request gains `X-Forwarded-For` and `X-Forwarded-Proto`. No gate,
//! no token, no metrics, no timeouts. Whatever waitroom's passthrough costs
//! beyond this is waitroom's own; what this costs beyond nginx is hyper's
//! (and tokio's).
//!
//! Usage: `bare_proxy LISTEN_ADDR UPSTREAM_ADDR` (both `ip:port`).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, upstream] = args.as_slice() else {
        eprintln!("usage: bare_proxy LISTEN_ADDR UPSTREAM_ADDR");
        return ExitCode::from(64);
    };
    let (Ok(listen), Ok(upstream)) = (listen.parse(), upstream.parse()) else {
        eprintln!("bare_proxy: addresses are ip:port (got {listen} and {upstream})");
        return ExitCode::from(64);
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bare_proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(listen, upstream)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bare_proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (stream, peer) = listener.accept().await?;
        tokio::spawn(async move {
            if let Err(e) = connection(stream, peer, upstream).await {
                eprintln!("bare_proxy: connection from {peer}: {e}");
            }
        });
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    upstream: SocketAddr,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    stream.set_nodelay(true)?;
    let up = TcpStream::connect(upstream).await?;
    up.set_nodelay(true)?;
    let (sender, link) = hyper::client::conn::http1::handshake(TokioIo::new(up)).await?;
    let sender = Arc::new(Mutex::new(sender));
    let peer_ip = HeaderValue::from_str(&peer.ip().to_string())?;
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let (sender, peer_ip) = (sender.clone(), peer_ip.clone());
        async move {
            req.headers_mut().insert(X_FORWARDED_FOR, peer_ip);
            req.headers_mut()
                .insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
            let mut sender = sender.lock().await;
            sender.ready().await?;
            let res: Response<Incoming> = sender.send_request(req).await?;
            Ok::<_, hyper::Error>(res)
        }
    });
    let downstream =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    // One task drives both ends, so an answer never crosses threads.
    tokio::select! {
        biased;
        r = link => r?,
        r = downstream => r?,
    }
    Ok(())
}
