//! HTTP/2 gets the head timing HTTP/1 has: the client preface and each
//! header block must arrive within `header_read_timeout_secs` of their
//! first byte (over h2c and over TLS), however the bytes are spaced;
//! prompt clients and long event streams are not cut.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// `header_read_timeout_secs` here; the idle timeout is far longer, so
/// only the head timer can close a trickling connection in time.
const HEAD_SECS: u64 = 2;
/// Closing must come within the head timeout plus this.
const MARGIN_SECS: u64 = 5;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn server_toml() -> String {
    format!("header_read_timeout_secs = {HEAD_SECS}\nidle_timeout_secs = 120\n")
}

async fn gateway(extra_top: &str) -> (TestUpstream, Gateway) {
    let up = TestUpstream::start().await;
    let rooms = room_toml("demo", &up.url(), "exempt_paths = [\"/static/\"]");
    let gw = Gateway::start_with(&rooms, &format!("{}{extra_top}", server_toml())).await;
    (up, gw)
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A complete request header block (HPACK, no Huffman): `GET /static/a.css`.
fn get_headers(stream: u32) -> Vec<u8> {
    // :method GET, :scheme http (static table), :path literal, :authority literal.
    let mut block = vec![0x82, 0x86, 0x04, 13];
    block.extend_from_slice(b"/static/a.css");
    block.extend_from_slice(&[0x01, 9]);
    block.extend_from_slice(b"localhost");
    // END_STREAM | END_HEADERS
    frame(0x1, 0x5, stream, &block)
}

/// The client's start: preface, empty SETTINGS, and one whole request.
fn prompt_start() -> Vec<u8> {
    let mut start = PREFACE.to_vec();
    start.extend(frame(0x4, 0, 0, &[]));
    start.extend(get_headers(1));
    start
}

/// Writes `at_once`, then `trickled` one byte a second, reading whatever
/// the server sends; true if the server closed the connection within
/// `HEAD_SECS + MARGIN_SECS` of the first trickled byte.
async fn closed_while_trickling<S>(stream: S, at_once: &[u8], trickled: &[u8]) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    if wr.write_all(at_once).await.is_err() {
        return true;
    }
    let closed = async {
        let mut buf = [0u8; 4096];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    let trickle = async {
        for b in trickled {
            if wr.write_all(&[*b]).await.is_err() || wr.flush().await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        std::future::pending::<()>().await
    };
    tokio::select! {
        _ = closed => true,
        _ = trickle => unreachable!("the trickle never ends by itself"),
        _ = tokio::time::sleep(Duration::from_secs(HEAD_SECS + MARGIN_SECS)) => false,
    }
}

async fn plain(gw: &Gateway) -> TcpStream {
    TcpStream::connect(gw.public.trim_start_matches("http://"))
        .await
        .unwrap()
}

#[tokio::test]
async fn an_h2c_preface_sent_a_byte_a_second_is_closed_after_header_read_timeout() {
    let (_up, gw) = gateway("").await;
    assert!(
        closed_while_trickling(plain(&gw).await, &[], PREFACE).await,
        "still open {MARGIN_SECS} s after header_read_timeout"
    );
}

#[tokio::test]
async fn an_h2c_headers_frame_sent_a_byte_a_second_is_closed_after_header_read_timeout() {
    let (up, gw) = gateway("").await;
    assert!(
        closed_while_trickling(plain(&gw).await, &prompt_start(), &get_headers(3)).await,
        "still open {MARGIN_SECS} s after header_read_timeout"
    );
    // The whole request before it was served.
    assert_eq!(up.requests.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_whole_h2c_frame_header_trickled_is_closed_too() {
    // Nine bytes of a DATA frame header, slowly: the frame header itself is timed.
    let (_up, gw) = gateway("").await;
    let mut start = PREFACE.to_vec();
    start.extend(frame(0x4, 0, 0, &[]));
    assert!(
        closed_while_trickling(plain(&gw).await, &start, &frame(0x0, 0, 1, &[0; 4])).await,
        "still open {MARGIN_SECS} s after header_read_timeout"
    );
}

/// A CA and a `localhost` leaf it signed, as PEM files in `dir`.
fn make_pki(dir: &Path) -> (String, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let (cert, key) = (dir.join("fullchain.pem"), dir.join("key.pem"));
    std::fs::write(&cert, format!("{}{}", leaf.pem(), ca.pem())).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    let toml = |p: &Path| serde_json::to_string(&p.display().to_string()).unwrap();
    let tls = format!("[tls]\ncert = {}\nkey = {}\n", toml(&cert), toml(&key));
    (ca.pem(), tls)
}

/// A TLS connection to `addr` trusting only `ca_pem`, offering ALPN `h2`.
async fn h2_over_tls(addr: SocketAddr, ca_pem: &str) -> tokio_rustls::client::TlsStream<TcpStream> {
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
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls
}

#[tokio::test]
async fn an_h2_preface_and_a_headers_frame_trickled_over_tls_are_closed_after_header_read_timeout()
{
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, tls) = make_pki(dir.path());
    let (up, gw) = gateway(&format!("\n{tls}")).await;
    let addr = gw.running.as_ref().unwrap().public_addr;
    assert!(
        closed_while_trickling(h2_over_tls(addr, &ca_pem).await, &[], PREFACE).await,
        "the preface: still open {MARGIN_SECS} s after header_read_timeout"
    );
    assert!(
        closed_while_trickling(
            h2_over_tls(addr, &ca_pem).await,
            &prompt_start(),
            &get_headers(3)
        )
        .await,
        "a HEADERS frame: still open {MARGIN_SECS} s after header_read_timeout"
    );
    // The whole request before it was served.
    assert_eq!(up.requests.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn prompt_h2c_requests_and_a_long_h2_event_stream_outlive_the_head_timer() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start_with(
        &room_toml("demo", &up.url(), "admit_rate_per_min = 600"),
        &server_toml(),
    )
    .await;
    gw.patch_room("demo", json!({"paused": true})).await;
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let joined = h2
        .post(format!("{}/_waitroom/join?room=demo", gw.public))
        .send()
        .await
        .unwrap();
    assert_eq!(joined.version(), reqwest::Version::HTTP_2);
    let token = joined.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let res = h2
        .get(format!(
            "{}/_waitroom/events?room=demo&token={token}",
            gw.public
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut events = res.bytes_stream().eventsource();
    assert_eq!(events.next().await.unwrap().unwrap().event, "paused");
    // Well past the head timer, the stream is still open...
    let quiet = tokio::time::timeout(Duration::from_secs(HEAD_SECS * 2 + 1), async {
        loop {
            match events.next().await {
                Some(Ok(_)) => {}
                other => return other.map(|e| e.map(|_| ())),
            }
        }
    })
    .await;
    assert!(quiet.is_err(), "the event stream ended: {quiet:?}");
    // ...and the connection still takes requests...
    let status = h2
        .get(format!(
            "{}/_waitroom/status?room=demo&token={token}",
            gw.public
        ))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    // ...and the stream still carries the fan's call.
    gw.patch_room("demo", json!({"paused": false})).await;
    let called = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(e)) = events.next().await {
            if e.event == "admitted" {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(called, Ok(true), "no admitted event on the open stream");
}
