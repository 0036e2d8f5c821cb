//! The hostile edges over real sockets: TLS (HTTP/1.1 and h2, certificate
//! reload), slow and idle connections, the connection cap, unread bodies,
//! the join rate limit per address, forwarded-for trust, security headers,
//! and TLS config errors from `check-config`.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

// ------------------------------------------------------------ certificates

/// A CA and a `localhost` leaf it signed, as PEM files in `dir`.
struct TestPki {
    ca_pem: String,
    cert: PathBuf,
    key: PathBuf,
}

fn make_pki(dir: &Path, name: &str) -> TestPki {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let cert = dir.join(format!("{name}-fullchain.pem"));
    let key = dir.join(format!("{name}-key.pem"));
    std::fs::write(&cert, format!("{}{}", leaf.pem(), ca.pem())).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    TestPki {
        ca_pem: ca.pem(),
        cert,
        key,
    }
}

fn tls_toml(pki: &TestPki) -> String {
    format!(
        "[tls]\ncert = {}\nkey = {}\n",
        toml_str(&pki.cert),
        toml_str(&pki.key)
    )
}

fn toml_str(p: &Path) -> String {
    serde_json::to_string(&p.display().to_string()).unwrap()
}

/// A reqwest client that trusts only `ca_pem` and reaches `localhost` at `addr`.
fn tls_client(ca_pem: &str, addr: SocketAddr, http1_only: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
        .resolve("localhost", addr)
        .redirect(reqwest::redirect::Policy::none());
    if http1_only {
        b = b.http1_only();
    }
    b.build().unwrap()
}

fn public_addr(gw: &Gateway) -> SocketAddr {
    gw.running.as_ref().unwrap().public_addr
}

// --------------------------------------------------------------------- TLS

#[tokio::test]
async fn tls_listener_serves_http1_and_h2_by_alpn_with_secure_cookies_and_https_proto() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "a");
    let up = TestUpstream::start().await;
    let gw = Gateway::start_with(
        &room_toml("demo", &up.url(), "path_prefix = \"/shop\""),
        &format!(
            "{}[proxy]\ndefault_upstream = \"{}\"\n",
            tls_toml(&pki),
            up.url()
        ),
    )
    .await;
    let addr = public_addr(&gw);
    let base = format!("https://localhost:{}", addr.port());

    let h1 = tls_client(&pki.ca_pem, addr, true);
    let res = h1.get(format!("{base}/shop")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.version(), reqwest::Version::HTTP_11);
    let cookie = res.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.starts_with("wr_q_demo=") && cookie.ends_with("; Secure"),
        "{cookie}"
    );

    let h2 = tls_client(&pki.ca_pem, addr, false);
    let res = h2.get(format!("{base}/shop")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.version(), reqwest::Version::HTTP_2, "ALPN picks h2");

    // Not protected: straight to the upstream, which is told the fan used https.
    let echo: Value = h2
        .get(format!("{base}/about"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https", "{echo}");

    // Plain HTTP on the TLS port is not served.
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    assert!(
        plain
            .get(format!("http://{addr}/about"))
            .send()
            .await
            .is_err()
    );
}

/// A TLS connection that trusts only `ca_pem`, offering `alpn` (if any).
async fn tls_to(
    addr: SocketAddr,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())
}

/// A raw HTTP/1.1 connection over TLS that trusts only `ca_pem`.
async fn h1_over_tls(
    addr: SocketAddr,
    ca_pem: &str,
) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>, String> {
    let tls = tls_to(addr, ca_pem, &[]).await?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(send)
}

async fn get_status(send: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>) -> u16 {
    let req = hyper::Request::get("/_waitroom/status?room=demo")
        .header("host", "localhost")
        .body(Empty::new())
        .unwrap();
    let res = send
        .send_request(req)
        .await
        .expect("the connection is still open");
    let status = res.status().as_u16();
    res.into_body().collect().await.unwrap();
    status
}

#[tokio::test]
async fn reload_certs_serves_the_new_pair_to_new_connections_and_keeps_open_ones() {
    let dir = tempfile::tempdir().unwrap();
    let old = make_pki(dir.path(), "old");
    let new = make_pki(dir.path(), "new");
    let live = TestPki {
        ca_pem: old.ca_pem.clone(),
        cert: dir.path().join("live-fullchain.pem"),
        key: dir.path().join("live-key.pem"),
    };
    std::fs::copy(&old.cert, &live.cert).unwrap();
    std::fs::copy(&old.key, &live.key).unwrap();
    let up = TestUpstream::start().await;
    let gw = Gateway::start_with(&room_toml("demo", &up.url(), ""), &tls_toml(&live)).await;
    let addr = public_addr(&gw);

    let mut open = h1_over_tls(addr, &old.ca_pem)
        .await
        .expect("old pair served");
    assert_eq!(get_status(&mut open).await, 200);

    std::fs::copy(&new.cert, &live.cert).unwrap();
    std::fs::copy(&new.key, &live.key).unwrap();
    assert!(gw.running.as_ref().unwrap().reload_certs().unwrap());

    // The connection made before the reload keeps working.
    assert_eq!(get_status(&mut open).await, 200);
    // New connections get the new pair.
    assert!(h1_over_tls(addr, &old.ca_pem).await.is_err());
    let mut fresh = h1_over_tls(addr, &new.ca_pem)
        .await
        .expect("new pair served");
    assert_eq!(get_status(&mut fresh).await, 200);
    assert!(
        gw.metrics()
            .await
            .contains("waitroom_cert_reloads_total{result=\"ok\"} 1")
    );
}

#[tokio::test]
async fn a_bad_new_certificate_is_refused_and_the_old_pair_stays() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "a");
    let other = make_pki(dir.path(), "b");
    let up = TestUpstream::start().await;
    let gw = Gateway::start_with(&room_toml("demo", &up.url(), ""), &tls_toml(&pki)).await;
    let running = gw.running.as_ref().unwrap();

    std::fs::write(&pki.cert, "-----BEGIN CERTIFICATE-----\nnot base64!\n").unwrap();
    let err = running.reload_certs().unwrap_err();
    assert_eq!(err.field(), "tls.cert", "{err}");

    // Another certificate next to the old key: they do not belong together.
    std::fs::copy(&other.cert, &pki.cert).unwrap();
    let err = running.reload_certs().unwrap_err();
    assert_eq!(err.field(), "tls.key", "{err}");
    assert!(err.to_string().contains("does not belong"), "{err}");

    let mut conn = h1_over_tls(running.public_addr, &pki.ca_pem)
        .await
        .expect("the old pair is still served");
    assert_eq!(get_status(&mut conn).await, 200);
    assert!(
        gw.metrics()
            .await
            .contains("waitroom_cert_reloads_total{result=\"error\"} 2")
    );
}

#[tokio::test]
async fn sighup_reloads_the_certificate_of_the_running_binary() {
    let dir = tempfile::tempdir().unwrap();
    let old = make_pki(dir.path(), "old");
    let new = make_pki(dir.path(), "new");
    let up = TestUpstream::start().await;
    let config = dir.path().join("waitroom.toml");
    let text = config_toml(
        &dir.path().join("state"),
        &room_toml("demo", &up.url(), ""),
        // Relative to the config file's directory.
        "[tls]\ncert = \"live-fullchain.pem\"\nkey = \"live-key.pem\"\n",
    );
    std::fs::write(&config, text).unwrap();
    std::fs::copy(&old.cert, dir.path().join("live-fullchain.pem")).unwrap();
    std::fs::copy(&old.key, dir.path().join("live-key.pem")).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_waitroom"))
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr: SocketAddr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("public="))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .parse()
        .unwrap();
    let old_client = tls_client(&old.ca_pem, addr, true);
    let url = format!(
        "https://localhost:{}/_waitroom/status?room=demo",
        addr.port()
    );
    assert_eq!(old_client.get(&url).send().await.unwrap().status(), 200);

    std::fs::copy(&new.cert, dir.path().join("live-fullchain.pem")).unwrap();
    std::fs::copy(&new.key, dir.path().join("live-key.pem")).unwrap();
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );

    eventually(10, "the new certificate after SIGHUP", || {
        let client = tls_client(&new.ca_pem, addr, true);
        let url = url.clone();
        async move { client.get(&url).send().await.ok().map(|_| ()) }
    })
    .await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP must not stop the gateway"
    );
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(child.wait().unwrap().success());
}

#[tokio::test]
async fn https_upstream_with_a_custom_ca_is_proxied() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "upstream");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let upstream = start_tls_echo(&pki).await;
    let up = TestUpstream::start().await;
    let gw = Gateway::start_with(
        &room_toml("demo", &up.url(), "path_prefix = \"/shop\""),
        &format!(
            "[proxy]\ndefault_upstream = \"https://localhost:{}\"\nupstream_ca = {}\n",
            upstream.port(),
            toml_str(&ca_file)
        ),
    )
    .await;
    let fan = Fan::new(&gw.public);
    let res = fan.get("/about").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "tls upstream /about");
}

/// An HTTPS upstream answering `tls upstream <path>`.
async fn start_tls_echo(pki: &TestPki) -> SocketAddr {
    let config = waitroom::tls::server_config(
        waitroom::tls::CertStore::load(&waitroom::config::TlsConfig {
            cert_path: pki.cert.clone(),
            key_path: pki.key.clone(),
        })
        .unwrap(),
    );
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(Bytes::from(format!(
                                "tls upstream {}",
                                req.uri().path()
                            ))),
                        ))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

// ------------------------------------------------------------- connections

/// Reads until the server closes the connection (or the deadline passes).
async fn read_until_closed(
    stream: &mut (impl AsyncRead + Unpin),
    secs: u64,
) -> Result<Vec<u8>, &'static str> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return Err("still open at the deadline"),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A test upstream, a gateway (room `demo` with `room_extra`, `[server]`
/// settings `server`) and a raw connection to its public listener.
async fn raw_connection(room_extra: &str, server: &str) -> (TestUpstream, Gateway, TcpStream) {
    let up = TestUpstream::start().await;
    let gw = Gateway::start_with(&room_toml("demo", &up.url(), room_extra), server).await;
    let s = TcpStream::connect(public_addr(&gw)).await.unwrap();
    (up, gw, s)
}

/// Starts a request head and stalls: the server must close the connection
/// well within `secs` (hyper's timer may answer 408 first).
async fn a_stalled_head_is_cut_off(stream: &mut (impl AsyncRead + AsyncWrite + Unpin), secs: u64) {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    stream.flush().await.unwrap();
    let answer = read_until_closed(stream, secs)
        .await
        .expect("the server closes a stalled head");
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
}

#[tokio::test]
async fn slowloris_partial_header_is_closed_after_the_header_timeout() {
    let (_up, _gw, mut s) =
        raw_connection("", "header_read_timeout_secs = 1\nidle_timeout_secs = 600").await;
    // Well within the idle timeout.
    a_stalled_head_is_cut_off(&mut s, 30).await;
}

/// Reads one answer with a `Content-Length` body; returns its head and body.
async fn read_answer(stream: &mut (impl AsyncRead + Unpin)) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("an answer within 10 s")
            .expect("read");
        assert!(
            n > 0,
            "closed mid-answer: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse().ok())
                .expect("a Content-Length");
            if body.len() >= length {
                return text;
            }
        }
    }
}

const STATUS_REQUEST: &[u8] = b"GET /_waitroom/status?room=demo HTTP/1.1\r\nHost: x\r\n\r\n";

/// A keep-alive connection that is quiet between requests is idle, not a
/// slow request: it lasts `idle_timeout_secs`, whatever the header timeout.
async fn quiet_keep_alive_carries_a_second_request(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
) {
    stream.write_all(STATUS_REQUEST).await.unwrap();
    assert!(read_answer(stream).await.starts_with("HTTP/1.1 200"));
    // Twice the header timeout with nothing sent.
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    stream.write_all(STATUS_REQUEST).await.unwrap();
    let second = read_answer(stream).await;
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
}

#[tokio::test]
async fn a_quiet_keep_alive_connection_outlives_the_header_timeout() {
    let (_up, _gw, mut s) =
        raw_connection("", "header_read_timeout_secs = 1\nidle_timeout_secs = 600").await;
    quiet_keep_alive_carries_a_second_request(&mut s).await;

    // The third head starts, then stalls: that is a slow request, not idling.
    a_stalled_head_is_cut_off(&mut s, 30).await;
}

#[tokio::test]
async fn a_slow_head_after_a_long_request_is_closed_at_the_header_timeout() {
    let (_up, _gw, mut s) = raw_connection(
        "exempt_paths = [\"/slow\"]",
        "header_read_timeout_secs = 1\nidle_timeout_secs = 600",
    )
    .await;
    // The upstream takes 1.5 s: the connection is busy, not idle, meanwhile.
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let first = read_answer(&mut s).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    // Cut off after the 1 s header timeout, long before the 600 s idle one.
    a_stalled_head_is_cut_off(&mut s, 20).await;
}

#[tokio::test]
async fn over_tls_a_quiet_keep_alive_outlives_the_header_timeout_and_a_slow_head_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "a");
    let up = TestUpstream::start().await;
    let gw = Gateway::start_with(
        &room_toml("demo", &up.url(), ""),
        &format!(
            "header_read_timeout_secs = 1\nidle_timeout_secs = 600\n{}",
            tls_toml(&pki)
        ),
    )
    .await;
    let addr = public_addr(&gw);
    for alpn in [&[b"http/1.1".as_slice()][..], &[]] {
        let mut quiet = tls_to(addr, &pki.ca_pem, alpn).await.unwrap();
        quiet_keep_alive_carries_a_second_request(&mut quiet).await;

        let mut slow = tls_to(addr, &pki.ca_pem, alpn).await.unwrap();
        a_stalled_head_is_cut_off(&mut slow, 30).await;
    }
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_and_counted() {
    let (_up, gw, mut s) =
        raw_connection("", "header_read_timeout_secs = 300\nidle_timeout_secs = 1").await;
    s.write_all(STATUS_REQUEST).await.unwrap();
    let answer = read_until_closed(&mut s, 30)
        .await
        .expect("the idle connection is closed");
    assert!(answer.starts_with(b"HTTP/1.1 200"), "one full answer first");
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "waitroom_connections_idle_closed_total{listener=\"public\"}"
        ),
        1,
        "{m}"
    );
}

#[tokio::test]
async fn a_slow_response_is_not_cut_by_the_idle_timeout() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start_with(
        &room_toml("demo", &up.url(), "path_prefix = \"/shop\""),
        &format!(
            "idle_timeout_secs = 1\n[proxy]\ndefault_upstream = \"{}\"",
            up.url()
        ),
    )
    .await;
    // The upstream takes 1.5 s: longer than the idle timeout, but a request is in flight.
    let res = Fan::new(&gw.public).get("/slow").await;
    assert_eq!(res.status(), 200);
    let echo: Value = res.json().await.unwrap();
    assert_eq!(echo["path"], "/slow");
}

#[tokio::test]
async fn connections_beyond_max_connections_are_closed_at_once_and_counted() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start_with(&room_toml("demo", &up.url(), ""), "max_connections = 2").await;
    let addr = public_addr(&gw);
    let request = STATUS_REQUEST;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        held.push(s);
    }
    let mut third = TcpStream::connect(addr).await.unwrap();
    let _ = third.write_all(request).await;
    let answer = read_until_closed(&mut third, 10)
        .await
        .expect("closed at once");
    assert!(answer.is_empty(), "no answer over the cap");
    let m = gw.metrics().await;
    assert!(
        metric(
            &m,
            "waitroom_connections_refused_total{listener=\"public\"}"
        ) >= 1,
        "{m}"
    );

    // A slot frees when a held connection goes.
    drop(held.pop());
    eventually(10, "a connection is served again", || async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(request).await.ok()?;
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).await.ok()?;
        (&buf == b"HTTP/1.1 200").then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_huge_body_to_waitroom_endpoints_is_answered_without_being_read() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start(&room_toml("demo", &up.url(), "")).await;
    let addr = public_addr(&gw);

    // Declared 1 GB: refused from the headers alone.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut head =
        b"POST /_waitroom/join?room=demo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n"
            .to_vec();
    head.extend_from_slice(&[b'x'; 1024]);
    s.write_all(&head).await.unwrap();
    let answer = read_until_closed(&mut s, 10)
        .await
        .expect("answered and closed");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("body_too_large"), "{text}");

    // Chunked with no end in sight: answered without waiting for the body.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"POST /_waitroom/join?room=demo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n",
    )
    .await
    .unwrap();
    s.write_all(&[b'x'; 1024]).await.unwrap();
    let mut buf = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf))
        .await
        .expect("an answer before the body ends")
        .unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");
}

// -------------------------------------------------------- join rate limit

fn limited(burst: u32) -> String {
    format!(
        "[proxy]\ntrusted_proxies = [\"127.0.0.1\"]\n[limits]\njoins_per_min_per_client = 1\njoin_burst = {burst}\n"
    )
}

async fn join_from(client: &reqwest::Client, base: &str, xff: &str) -> reqwest::Response {
    client
        .post(format!("{base}/_waitroom/join?room=demo"))
        .header("x-forwarded-for", xff)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn join_rate_limit_is_shared_by_addresses_in_one_ipv6_slash_64() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start_with(&room_toml("demo", &up.url(), ""), &limited(2)).await;
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    // Two places for one address of the /64...
    for _ in 0..2 {
        assert_eq!(
            join_from(&c, &gw.public, "2001:db8:1:2::a").await.status(),
            200
        );
    }
    // ...and its neighbour in the same /64 has nothing left.
    let res = join_from(&c, &gw.public, "198.51.100.9, 2001:db8:1:2:ffff::b").await;
    assert_eq!(res.status(), 429);
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(body["retry_after_secs"], retry);
    // Another /64 and an IPv4 address have their own budgets.
    assert_eq!(
        join_from(&c, &gw.public, "2001:db8:1:3::a").await.status(),
        200
    );
    assert_eq!(join_from(&c, &gw.public, "192.0.2.1").await.status(), 200);
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "waitroom_rate_limited_total{room=\"demo\"}"),
        1,
        "{m}"
    );
}

#[tokio::test]
async fn a_limited_browser_gets_a_calm_page_that_retries_and_returning_fans_are_never_limited() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start_with(
        &room_toml("demo", &up.url(), "admit_rate_per_min = 1"),
        &limited(1),
    )
    .await;
    let fan = Fan::new(&gw.public);
    let first = fan
        .client
        .get(format!("{}/tickets", gw.public))
        .header("accept", "text/html")
        .header("x-forwarded-for", "203.0.113.5")
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200, "a place");

    // A stranger from the same address: the slow-down page, not a new place.
    let stranger = Fan::new(&gw.public);
    let res = stranger
        .client
        .get(format!("{}/tickets", gw.public))
        .header("accept", "text/html")
        .header("x-forwarded-for", "203.0.113.5")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    assert!(
        res.headers().get("set-cookie").is_none(),
        "no place handed out"
    );
    let retry = res.headers()["retry-after"].to_str().unwrap().to_string();
    assert!(
        res.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    let page = res.text().await.unwrap();
    assert!(
        page.contains(&format!("http-equiv=\"refresh\" content=\"{retry}\"")),
        "{page}"
    );
    assert!(!page.to_lowercase().contains(" bot"), "{page}");

    // The fan who has a place keeps coming back from the same address.
    for _ in 0..5 {
        let res = fan
            .client
            .get(format!("{}/tickets", gw.public))
            .header("accept", "text/html")
            .header("x-forwarded-for", "203.0.113.5")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert!(res.text().await.unwrap().contains("Your place in line"));
    }
}

#[tokio::test]
async fn spoofed_forwarded_for_from_an_untrusted_peer_is_ignored() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start_with(
        &room_toml("demo", &up.url(), ""),
        "[limits]\njoins_per_min_per_client = 1\njoin_burst = 1\n",
    )
    .await;
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    assert_eq!(join_from(&c, &gw.public, "192.0.2.1").await.status(), 200);
    // A different claimed address changes nothing: the peer (127.0.0.1) is the key.
    assert_eq!(join_from(&c, &gw.public, "192.0.2.2").await.status(), 429);
}

// -------------------------------------------------------- security headers

fn sha256_source(script: &str) -> String {
    use base64::Engine;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, script.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
    )
}

#[tokio::test]
async fn security_headers_are_on_every_gateway_page_and_the_csp_allows_the_waiting_script() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start(&room_toml("demo", &up.url(), "path_prefix = \"/shop\"")).await;
    let fan = Fan::new(&gw.public);
    let res = fan.get("/shop").await;
    assert_eq!(res.status(), 200);
    let h = res.headers().clone();
    let csp = h["content-security-policy"].to_str().unwrap().to_string();
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["referrer-policy"], "same-origin");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["cache-control"], "no-store");
    for directive in [
        "default-src 'none'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
    ] {
        assert!(csp.contains(directive), "{directive} missing: {csp}");
    }
    let page = res.text().await.unwrap();
    let start = page.find("<script").unwrap();
    let body_start = start + page[start..].find('>').unwrap() + 1;
    let body_end = body_start + page[body_start..].find("</script>").unwrap();
    assert!(
        csp.contains(&format!(
            "script-src {}",
            sha256_source(&page[body_start..body_end])
        )),
        "{csp}"
    );

    // An error page the gateway renders carries them too.
    let res = fan.get("/nowhere").await;
    assert_eq!(res.status(), 404);
    assert_eq!(res.headers()["content-security-policy"], csp.as_str());
    assert_eq!(res.headers()["x-frame-options"], "DENY");
}

// ------------------------------------------------------------ check-config

fn check_config(dir: &Path, tls: &str) -> (i32, String) {
    let path = dir.join("check.toml");
    let text = config_toml(
        &dir.join("state"),
        &room_toml("demo", "http://127.0.0.1:9", ""),
        tls,
    );
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_waitroom"))
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_names_the_tls_field_for_missing_unparsable_and_mismatched_files() {
    let dir = tempfile::tempdir().unwrap();
    let a = make_pki(dir.path(), "a");
    let b = make_pki(dir.path(), "b");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN PRIVATE KEY-----\n%%%\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();

    let cases = [
        (
            dir.path().join("missing.pem"),
            &a.key,
            "tls.cert",
            "cannot read",
        ),
        (a.cert.clone(), &garbage, "tls.key", "not valid PEM"),
        (a.cert.clone(), &b.key, "tls.key", "does not belong"),
    ];
    for (cert, key, field, why) in cases {
        let tls = format!(
            "[tls]\ncert = {}\nkey = {}\n",
            toml_str(&cert),
            toml_str(key)
        );
        let (code, stderr) = check_config(dir.path(), &tls);
        assert_eq!(code, 64, "{stderr}");
        assert!(stderr.contains(&format!("{field}: ")), "{field}: {stderr}");
        assert!(stderr.contains(why), "{why}: {stderr}");
    }

    // The good pair passes, with the path relative to the config file.
    let (code, stderr) = check_config(
        dir.path(),
        "[tls]\ncert = \"a-fullchain.pem\"\nkey = \"a-key.pem\"\n",
    );
    assert_eq!(code, 0, "{stderr}");
}

/// The gateway's own answers have a known size: they carry Content-Length,
/// not chunked encoding (an HTTP/1.0 client could not read that, and a
/// cache or a load generator must otherwise parse the chunks).
#[tokio::test]
async fn own_answers_carry_content_length_not_chunked_encoding() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start(&room_toml("demo", &up.url(), "admit_rate_per_min = 1")).await;
    for (request, what) in [
        ("POST /_waitroom/join?room=demo", "a join"),
        ("GET /tickets", "the waiting page"),
        ("GET /_waitroom/status?room=demo", "an error (no token)"),
    ] {
        let mut s = TcpStream::connect(public_addr(&gw)).await.unwrap();
        let text = format!(
            "{request} HTTP/1.1\r\nHost: x\r\nAccept: text/html\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        s.write_all(text.as_bytes()).await.unwrap();
        let answer = read_until_closed(&mut s, 30).await.expect("an answer");
        let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
        let (head, body) = answer.split_once("\r\n\r\n").expect("a head");
        assert!(
            head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())),
            "{what}: {head}"
        );
        assert!(!head.contains("transfer-encoding"), "{what}: {head}");
    }
}
