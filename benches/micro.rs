//! Micro-benchmarks of the per-request hot path: token issue and verify,
//! the admitted-request decision, reading a request's path and host for
//! routing, building the status document (with serde, as the API does,
//! and written by hand, as every event stream does), and recording an
//! upstream latency for the capacity controller.
//! Run: `cargo bench --bench micro`. Numbers go in BENCHMARKS.md.

use futures_util::FutureExt;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use waitroom::capacity::LatencySketch;
use waitroom::config::{Config, EnvOverrides};
use waitroom::gate;
use waitroom::queue::Place;
use waitroom::room::{Clock, Room};
use waitroom::store::Store;
use waitroom::store::embedded::EmbeddedStore;
use waitroom::token::{Claims, Expect, Keys, Kind, new_visitor_id};

fn config(state: &std::path::Path) -> Config {
    let text = format!(
        r#"
[listen]
public = "127.0.0.1:0"
admin = "127.0.0.1:0"
[admin]
token = "bench"
[signing]
keys = [{{ kid = "b1", secret = "bench-secret-bench-secret-bench-secret" }}]
[store]
path = {path}
[[rooms]]
id = "demo"
upstream = "http://127.0.0.1:9"
admit_rate_per_min = 600
"#,
        path = serde_json::to_string(&state.display().to_string()).unwrap()
    );
    Config::from_toml_str(&text, &EnvOverrides::default()).unwrap()
}

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let keys = Keys::new(&cfg.signing_keys);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let room = rt
        .block_on(Room::open(
            cfg.rooms[0].clone(),
            store,
            Clock::default(),
            1 << 20,
            Duration::from_secs(5),
        ))
        .unwrap();
    let now = room.clock.wall_secs();
    let epoch = room.epoch();

    let queue_claims = Claims {
        typ: Kind::Queue,
        room: "demo".into(),
        ep: epoch,
        seq: 123_456,
        vid: new_visitor_id(),
        iat: now,
        exp: now + 3600,
        sat: None,
        bnd: None,
    };
    c.bench_function("token/issue_queue_token", |b| {
        b.iter(|| keys.sign(black_box(&queue_claims)))
    });

    let token = keys.sign(&queue_claims);
    let expect = Expect {
        kind: Kind::Queue,
        room: "demo",
        epoch,
    };
    c.bench_function("token/verify_queue_token", |b| {
        b.iter(|| keys.verify(black_box(&token), expect, now).unwrap())
    });

    // An admitted fan: arrive, get called, claim; then time the decision.
    let (seq, vid) = rt.block_on(async {
        room.update_settings(|s| s.admit_rate_per_min = 6_000_000)
            .await
            .unwrap();
        let (_, seq, _) = room.arrive().await.unwrap();
        room.touch(epoch, seq).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        room.tick(true);
        let vid = new_visitor_id();
        room.claim(epoch, seq, &vid, None).await.unwrap();
        (seq, vid)
    });
    let access = keys.sign(&Claims {
        typ: Kind::Access,
        room: "demo".into(),
        ep: epoch,
        seq,
        vid: vid.clone(),
        iat: now,
        exp: now + 600,
        sat: Some(now),
        bnd: None,
    });
    let access_expect = Expect {
        kind: Kind::Access,
        room: "demo",
        epoch,
    };
    c.bench_function("gate/admitted_decision", |b| {
        b.iter(|| {
            let claims = keys.verify(black_box(&access), access_expect, now).unwrap();
            // Ready at once for a session this node holds (no store trip).
            room.check_session(
                epoch,
                claims.seq,
                &claims.vid,
                claims.sat.unwrap_or(claims.iat),
            )
            .now_or_never()
            .expect("a local session check never waits")
        })
    });

    // What routing adds to every request: the path's normal form and
    // routing view, and the host, for a request that needs no rewriting.
    let uri: hyper::Uri = "/checkout/seats/42?section=b&row=7".parse().unwrap();
    let mut headers = hyper::HeaderMap::new();
    headers.insert(hyper::header::HOST, "tickets.example.com".parse().unwrap());
    c.bench_function("route/normal_path_and_host", |b| {
        b.iter(|| {
            let uri = black_box(&uri);
            let path = waitroom::path::normalize(uri.path()).unwrap();
            let view = waitroom::path::without_params(&path);
            let host = waitroom::host::of_request(uri, black_box(&headers)).unwrap();
            (view.len(), host.map(str::len))
        })
    });

    let snap = room.snapshot();
    let build = || {
        gate::status_of(
            &room,
            Some(Place::Waiting {
                position: black_box(4242),
            }),
            &snap,
            "/",
        )
    };
    c.bench_function("status/build_and_serialize", |b| {
        b.iter(|| serde_json::to_vec(&build()).unwrap())
    });
    // What every event stream does per change: the same bytes, written by hand.
    c.bench_function("status/build_and_write_json", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(512);
            build().write_json(&mut out);
            out
        })
    });

    // Every proxied request records its upstream latency: one atomic add.
    let sketch = LatencySketch::new();
    let mut micros = 0u64;
    c.bench_function("capacity/record_latency", |b| {
        b.iter(|| {
            micros = (micros + 7_919) % 2_000_000;
            sketch.record(Duration::from_micros(black_box(micros)))
        })
    });
}

criterion_group! {
    name = micro;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = benches
}
criterion_main!(micro);
