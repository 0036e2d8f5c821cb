//! Many replicas, one line: real gateway processes sharing a real Redis.
//!
//! The shared tests use the Redis at `WAITROOM_TEST_REDIS_URL` (default
//! 127.0.0.1:6379; `scripts/test.sh` starts one when none answers), each
//! under a key prefix of its own. Tests that stop Redis start their own
//! `redis-server` on a free port and never touch the shared one.

#[path = "common/admission.rs"]
mod checkout;
mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use serde_json::{Value, json};

fn shared_redis_url() -> String {
    std::env::var("WAITROOM_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn unique_prefix() -> String {
    format!("wrtest-{:016x}", rand::random::<u64>())
}

fn write_config(
    dir: &Path,
    upstream: &str,
    url: &str,
    prefix: &str,
    extra_store: &str,
    room: &str,
) -> PathBuf {
    let store = format!(
        "[store]\nkind = \"redis\"\nurl = \"{url}\"\nkey_prefix = \"{prefix}\"\nlease_ms = 1000\n{extra_store}"
    );
    let text = config_toml_with_store(&store, &room_toml("demo", upstream, room), "");
    let path = dir.join("waitroom.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A config for replicas sharing the test Redis under a fresh prefix.
fn shared_config(dir: &Path, upstream: &str, room: &str) -> PathBuf {
    write_config(
        dir,
        upstream,
        &shared_redis_url(),
        &unique_prefix(),
        "",
        room,
    )
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// The sequence number inside a queue token (its payload is plain JSON).
fn seq_of(token: &str) -> u64 {
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url payload");
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    v["seq"].as_u64().expect("seq")
}

/// A fan using the JSON API: a token, and the replica it talks to.
struct ApiFan {
    token: String,
    seq: u64,
    home: usize,
    claimed: bool,
}

async fn join(base: &str) -> reqwest::Response {
    client()
        .post(format!("{base}/_waitroom/join?room=demo"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
}

async fn join_ok(base: &str) -> (String, u64) {
    let res = join(base).await;
    assert_eq!(res.status(), 200, "join on {base}");
    let v: Value = res.json().await.unwrap();
    let token = v["token"].as_str().unwrap().to_string();
    let seq = seq_of(&token);
    (token, seq)
}

async fn status(base: &str, token: &str) -> Value {
    let url = format!("{base}/_waitroom/status?room=demo");
    let (status, v) = bearer_json(&client(), reqwest::Method::GET, url, token, None).await;
    assert_eq!(status, 200, "status on {base}");
    v
}

async fn claim(base: &str, token: &str) -> reqwest::StatusCode {
    client()
        .post(format!("{base}/_waitroom/claim?room=demo"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
}

async fn claim_with_key(base: &str, token: &str, key: Option<&str>) -> reqwest::StatusCode {
    let mut req = client()
        .post(format!("{base}/_waitroom/claim?room=demo"))
        .bearer_auth(token);
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    req.send().await.unwrap().status()
}

/// Claims and returns the access token.
async fn claim_access(base: &str, token: &str) -> String {
    let url = format!("{base}/_waitroom/claim?room=demo");
    let (status, v) = bearer_json(&client(), reqwest::Method::POST, url, token, None).await;
    assert_eq!(status, 200);
    v["access_token"].as_str().unwrap().to_string()
}

/// A fan who joins through `procs[0]`, is called, and claims through
/// `procs[via]`: their access token.
async fn admitted_access(procs: &[Proc], via: usize) -> String {
    let (token, _) = join_ok(&procs[0].public).await;
    eventually(10, "the fan's turn", || async {
        (status(&procs[via].public, &token).await["state"] == "admitted").then_some(())
    })
    .await;
    claim_access(&procs[via].public, &token).await
}

/// A request with `access` to `base` + `path`: the JSON answer.
async fn visit_with(base: &str, access: &str, path: &str) -> Value {
    client()
        .get(format!("{base}{path}"))
        .header("x-waitroom-token", access)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()
}

async fn metric(admin: &str, name: &str) -> Option<f64> {
    let text = client()
        .get(format!("{admin}/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn readyz(admin: &str) -> (u16, Value) {
    let res = client()
        .get(format!("{admin}/readyz"))
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

/// Polls every fan (highest place first) until all are admitted and have
/// claimed, checking on every round that the line moved in global order:
/// once a place is seen admitted, every earlier place polled after it must
/// be admitted too. Returns the largest count admitted at any instant,
/// relative to `started`, for the rate bound.
async fn admit_all(
    procs: &mut [Option<Proc>],
    fans: &mut [ApiFan],
    started: Instant,
    rate_per_sec: f64,
    mut on_round: impl FnMut(usize, &mut [Option<Proc>]) -> Option<usize>,
) {
    fans.sort_by_key(|f| std::cmp::Reverse(f.seq));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut round = 0;
    loop {
        round += 1;
        if let Some(dead) = on_round(round, procs) {
            // That replica's fans move to the next live one.
            for f in fans.iter_mut().filter(|f| f.home == dead) {
                f.home = (0..procs.len())
                    .map(|i| (dead + 1 + i) % procs.len())
                    .find(|&i| procs[i].is_some())
                    .unwrap();
            }
        }
        // One replica answers a whole round (a different one each round):
        // replicas adopt the published line up to a tick apart, so order is
        // only comparable within one replica's view.
        let live: Vec<usize> = (0..procs.len()).filter(|&i| procs[i].is_some()).collect();
        let checker = procs[live[round % live.len()]]
            .as_ref()
            .unwrap()
            .public
            .clone();
        let mut higher_admitted: Option<u64> = None;
        let mut admitted = 0u64;
        for f in fans.iter_mut() {
            let s = status(&checker, &f.token).await;
            let state = s["state"].as_str().unwrap_or_default().to_string();
            let let_in = matches!(state.as_str(), "admitted" | "claimed");
            if let Some(h) = higher_admitted {
                assert!(
                    let_in,
                    "place {} is {state} after place {h} was let in: not FIFO",
                    f.seq
                );
            }
            if let_in {
                higher_admitted.get_or_insert(f.seq);
                admitted += 1;
                if !f.claimed {
                    // On the fan's own replica, which may be a tick behind.
                    let home = procs[f.home].as_ref().unwrap().public.clone();
                    eventually(5, "claimed on the fan's replica", || async {
                        (claim(&home, &f.token).await == 200).then_some(())
                    })
                    .await;
                    f.claimed = true;
                }
            } else {
                assert!(
                    matches!(state.as_str(), "waiting" | "paused"),
                    "place {}: {s}",
                    f.seq
                );
            }
        }
        // Entries never outrun one global rate (plus at most one second of
        // burst), however many replicas run.
        let bound = rate_per_sec * started.elapsed().as_secs_f64() + rate_per_sec + 1.0;
        assert!(
            admitted as f64 <= bound,
            "{admitted} admitted after {:?}: more than one global rate allows ({bound:.0})",
            started.elapsed()
        );
        if admitted == fans.len() as u64 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {admitted} of {} admitted",
            fans.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn paused(procs: &[Option<Proc>], i: usize, paused: bool) {
    procs[i]
        .as_ref()
        .unwrap()
        .admin(
            reqwest::Method::PATCH,
            "/admin/rooms/demo",
            Some(json!({ "paused": paused })),
        )
        .await;
}

async fn leader_of(procs: &[Option<Proc>]) -> usize {
    eventually(10, "one replica drives the drip", || async {
        let mut leaders = Vec::new();
        for (i, p) in procs.iter().enumerate() {
            if let Some(p) = p
                && metric(&p.admin, "waitroom_drip_leader{room=\"demo\"}").await == Some(1.0)
            {
                leaders.push(i);
            }
        }
        (leaders.len() == 1).then(|| leaders[0])
    })
    .await
}

async fn join_spread(procs: &[Option<Proc>], n: usize) -> Vec<ApiFan> {
    let mut fans = Vec::new();
    for i in 0..n {
        let home = i % procs.len();
        let (token, seq) = join_ok(&procs[home].as_ref().unwrap().public).await;
        fans.push(ApiFan {
            token,
            seq,
            home,
            claimed: false,
        });
    }
    let mut seqs: Vec<u64> = fans.iter().map(|f| f.seq).collect();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=n as u64).collect::<Vec<_>>(),
        "places are unique and gapless across replicas"
    );
    fans
}

/// `n` replicas on the shared Redis (their room paused) and `fans` fans
/// who joined spread over them.
async fn paused_replicas(
    n: usize,
    rate_per_min: u64,
    fans: usize,
) -> (
    TestUpstream,
    tempfile::TempDir,
    Vec<Option<Proc>>,
    Vec<ApiFan>,
) {
    let (up, dir, procs) = replicas(n, &format!("admit_rate_per_min = {rate_per_min}")).await;
    paused(&procs, 0, true).await;
    let fans = join_spread(&procs, fans).await;
    (up, dir, procs, fans)
}

#[tokio::test]
async fn three_replicas_admit_in_one_global_order_at_one_global_rate() {
    let (_up, _dir, mut procs, mut fans) = paused_replicas(3, 1200, 60).await;

    // An admin change on one replica applies on all.
    paused(&procs, 2, false).await;
    let started = Instant::now();
    leader_of(&procs).await;
    admit_all(&mut procs, &mut fans, started, 20.0, |_, _| None).await;

    // Claim-once holds across replicas.
    let first = &fans[fans.len() - 1];
    assert_eq!(first.seq, 1);
    for p in procs.iter().flatten() {
        // (A retry within seconds gets the same answer, for replies lost
        // on the way; after that the place is spent.)
        eventually(10, "the place is spent", || async {
            (claim(&p.public, &first.token).await == 403).then_some(())
        })
        .await;
    }
    let admitted: f64 = {
        let mut sum = 0.0;
        for p in procs.iter().flatten() {
            sum += metric(&p.admin, "waitroom_admissions_total{room=\"demo\"}")
                .await
                .unwrap_or(0.0);
        }
        sum
    };
    assert_eq!(admitted, 60.0, "every place admitted exactly once");
}

#[tokio::test]
async fn a_killed_replicas_fans_keep_their_places_on_another() {
    let (_up, _dir, mut procs, mut fans) = paused_replicas(3, 600, 45).await;
    // Kill the replica that drives the drip: the line must go on without it.
    let leader = leader_of(&procs).await;
    paused(&procs, (leader + 1) % 3, false).await;
    let started = Instant::now();
    let mut killed = false;
    admit_all(&mut procs, &mut fans, started, 10.0, |round, procs| {
        if round == 2 && !killed {
            killed = true;
            procs[leader].take().unwrap().kill_9();
            return Some(leader);
        }
        None
    })
    .await;
    assert!(killed);
    assert_ne!(
        leader_of(&procs).await,
        leader,
        "another replica took the drip over"
    );
    // Every fan was admitted exactly once, in order (checked every round).
}

/// A Redis server of the test's own, persisting with AOF + fsync always.
struct OwnRedis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    /// Extra `redis-server` arguments.
    extra: Vec<String>,
    /// `user:password` to connect as, if not the default user.
    auth: Option<String>,
}

impl OwnRedis {
    fn start() -> OwnRedis {
        Self::start_with(Vec::new(), None)
    }

    fn start_with(extra: Vec<String>, auth: Option<String>) -> OwnRedis {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = OwnRedis {
            child: None,
            port,
            dir: tempfile::tempdir().unwrap(),
            extra,
            auth,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server; scripts/test.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(c) = redis::Client::open(self.url())
                && let Ok(mut con) = c.get_connection()
                && redis::cmd("PING").query::<String>(&mut con).is_ok()
            {
                return;
            }
            assert!(Instant::now() < deadline, "own redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill_9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    fn url(&self) -> String {
        match &self.auth {
            Some(auth) => format!("redis://{auth}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill_9();
    }
}

/// The shipped least-privilege ACL (`config/redis-acl.conf`) is enough:
/// two replicas run the whole flow as that user (places, the drip lease,
/// claims, sessions, the checkout's end and stock, the checkout-health
/// controller's exchange, an admin change, a reset), and the default user
/// is off.
#[tokio::test]
async fn the_shipped_least_privilege_acl_runs_the_whole_flow() {
    let secret = format!("{:032x}", rand::random::<u128>());
    let shipped = std::fs::read_to_string("config/redis-acl.conf").unwrap();
    let acl_dir = tempfile::tempdir().unwrap();
    let acl = acl_dir.path().join("users.acl");
    let lines: Vec<String> = shipped
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.replace("change-me-to-a-long-random-secret", &secret))
        .collect();
    std::fs::write(&acl, lines.join("\n") + "\n").unwrap();
    let redis = OwnRedis::start_with(
        vec!["--aclfile".into(), acl.display().to_string()],
        Some(format!("waitroom:{secret}")),
    );
    let anonymous = redis::Client::open(format!("redis://127.0.0.1:{}", redis.port))
        .unwrap()
        .get_connection()
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
    assert!(anonymous.is_err(), "the default user is off");

    let up = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &up.url(),
        &redis.url(),
        "waitroom",
        "",
        "admit_rate_per_min = 6000\nmax_active = 1\nupstream_target_p95_ms = 5000\ncontrol_interval_secs = 1",
    );
    let procs: Vec<Proc> = (0..2).map(|_| Proc::start(&config)).collect();
    let access = admitted_access(&procs, 1).await;
    let visit = |i: usize, path: &'static str| visit_with(&procs[i].public, &access, path);
    assert_eq!(
        visit(0, "/cart?set=waitroom-stock:40").await["upstream"],
        true
    );
    assert_eq!(
        visit(1, "/done?set=waitroom-session:end").await["upstream"],
        true
    );
    procs[0]
        .admin(
            reqwest::Method::PATCH,
            "/admin/rooms/demo",
            Some(json!({ "paused": true })),
        )
        .await;
    eventually(5, "the stock and the pause on both replicas", || async {
        let room = procs[1]
            .admin(reqwest::Method::GET, "/admin/rooms/demo", None)
            .await;
        (room["stock"] == 40 && room["paused"] == true).then_some(())
    })
    .await;
    assert_eq!(
        metric(&procs[1].admin, "waitroom_completions_total{room=\"demo\"}")
            .await
            .unwrap_or(0.0),
        1.0
    );
    procs[1]
        .admin(reqwest::Method::POST, "/admin/rooms/demo/reset", None)
        .await;
    let (_, seq) = join_ok(&procs[0].public).await;
    assert_eq!(seq, 1, "a new epoch");
    for p in &procs {
        assert_eq!(readyz(&p.admin).await.1["store_healthy"], true);
    }
}

#[tokio::test]
async fn redis_killed_mid_run_holds_the_line_and_reuses_no_number() {
    let mut redis = OwnRedis::start();
    let up = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &up.url(),
        &redis.url(),
        "wr",
        "",
        "admit_rate_per_min = 600",
    );
    let mut procs: Vec<Option<Proc>> = (0..2).map(|_| Some(Proc::start(&config))).collect();
    paused(&procs, 0, true).await;
    let mut fans = join_spread(&procs, 10).await;
    let p0 = procs[0].as_ref().unwrap();
    let (p0_public, p0_admin) = (p0.public.clone(), p0.admin.clone());
    let (p0_public, p0_admin) = (p0_public.as_str(), p0_admin.as_str());
    eventually(5, "every replica shows the line", || async {
        let s = status(&procs[1].as_ref().unwrap().public, &fans[9].token).await;
        (s["position"] == 10).then_some(())
    })
    .await;

    redis.kill_9();
    // Hold: waiting fans keep their page and their place...
    eventually(5, "the store failure is noticed", || async {
        let (code, body) = readyz(p0_admin).await;
        (body["store_healthy"] == false).then_some(code)
    })
    .await;
    let (code, body) = readyz(p0_admin).await;
    assert_eq!(
        code, 200,
        "a replica stays in rotation while it holds: {body}"
    );
    assert_eq!(body["degraded"], true);
    assert_eq!(body["on_store_failure"], "hold");
    for f in &fans {
        let s = status(&procs[f.home].as_ref().unwrap().public, &f.token).await;
        assert_eq!(s["state"], "paused", "{s}");
        assert_eq!(s["position"].as_u64(), Some(f.seq), "{s}");
    }
    // ...new arrivals are told to come back, nothing is lost...
    let res = join(p0_public).await;
    assert_eq!(res.status(), 503);
    assert!(res.headers().get("retry-after").is_some());
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "store_unavailable");
    assert!(
        !body.to_string().to_lowercase().contains("redis"),
        "no infrastructure details in public answers: {body}"
    );
    let page = Fan::new(p0_public).get("/checkout").await;
    assert_eq!(page.status(), 503);
    assert_eq!(page.headers()["retry-after"], "5");
    let html = page.text().await.unwrap();
    assert!(html.contains("tries again by itself"), "{html}");
    assert!(!html.to_lowercase().contains("redis"), "{html}");
    eventually(5, "the metric says so", || async {
        (metric(p0_admin, "waitroom_store_up{room=\"demo\"}").await == Some(0.0)).then_some(())
    })
    .await;

    // ...and it recovers by itself when Redis is back (with its AOF).
    redis.spawn();
    eventually(10, "the store answers again", || async {
        (readyz(p0_admin).await.1["store_healthy"] == true).then_some(())
    })
    .await;
    let (_, seq) = join_ok(p0_public).await;
    assert_eq!(seq, 11, "no number is reused after a Redis restart");
    paused(&procs, 1, false).await;
    admit_all(&mut procs, &mut fans, Instant::now(), 10.0, |_, _| None).await;
}

#[tokio::test]
async fn open_mode_lets_requests_through_while_redis_is_down() {
    let mut redis = OwnRedis::start();
    let up = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &up.url(),
        &redis.url(),
        "wr",
        &format!(
            "on_store_failure = \"open\"\n{}",
            checkout::admission_toml(Some(&checkout::key_file(dir.path(), "k1")))
        ),
        "admit_rate_per_min = 600",
    );
    let gw = Proc::start(&config);
    gw.admin(
        reqwest::Method::PATCH,
        "/admin/rooms/demo",
        Some(json!({ "paused": true })),
    )
    .await;
    let keys = checkout::jwks(&format!("{}/admin/jwks.json", gw.admin)).await;
    // Queued while the store answers.
    let fan = Fan::new(&gw.public);
    let page = fan.get("/checkout").await;
    assert_eq!(page.status(), 200);
    assert!(!page.text().await.unwrap().contains("\"upstream\":true"));
    redis.kill_9();
    eventually(5, "the store failure is noticed", || async {
        (readyz(&gw.admin).await.1["store_healthy"] == false).then_some(())
    })
    .await;
    let res = Fan::new(&gw.public).get("/checkout").await;
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["path"], "/checkout", "passed to the upstream: {body}");
    // It says it came through an open gate: never silently no admission,
    // which a verifying checkout would read as "closed".
    let token = body["headers"]["waitroom-admission"]
        .as_str()
        .unwrap_or_else(|| panic!("an unqueued request carries an admission: {body}"));
    let claims = checkout::verify(token, &keys, "demo").expect("verifies");
    assert_eq!(claims["mode"], "open", "{claims}");
    assert_eq!(claims["seq"], 0, "no place: {claims}");
    assert!(
        metric(&gw.admin, "waitroom_store_bypassed_total{room=\"demo\"}")
            .await
            .unwrap_or(0.0)
            >= 1.0
    );
}

#[tokio::test]
async fn three_replicas_sign_admissions_any_of_their_jwks_verifies() {
    let up = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let keys = checkout::key_file(dir.path(), "shared-1");
    let config = write_config(
        dir.path(),
        &up.url(),
        &shared_redis_url(),
        &unique_prefix(),
        &checkout::admission_toml(Some(&keys)),
        "admit_rate_per_min = 6000",
    );
    let procs: Vec<Proc> = (0..3).map(|_| Proc::start(&config)).collect();
    let mut published = Vec::new();
    for p in &procs {
        let set = checkout::jwks(&format!("{}/_waitroom/jwks.json", p.public)).await;
        published.push(serde_json::to_value(&set).unwrap());
    }
    assert!(
        published.iter().all(|p| *p == published[0]),
        "every replica publishes the same keys: {published:?}"
    );
    let jwks = checkout::jwks(&format!("{}/admin/jwks.json", procs[2].admin)).await;

    // Joined on one replica, claimed on another, visiting all three.
    let (token, seq) = join_ok(&procs[0].public).await;
    eventually(10, "the fan's turn", || async {
        (status(&procs[1].public, &token).await["state"] == "admitted").then_some(())
    })
    .await;
    let access = claim_access(&procs[1].public, &token).await;
    for p in &procs {
        let body: Value = client()
            .get(format!("{}/checkout", p.public))
            .header("x-waitroom-token", &access)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let admission = body["headers"]["waitroom-admission"]
            .as_str()
            .unwrap_or_else(|| panic!("admitted through {}: {body}", p.public));
        let claims = checkout::verify(admission, &jwks, "demo").expect("verifies");
        assert_eq!(claims["seq"], seq, "{claims}");
        assert_eq!(claims["mode"], "queued", "{claims}");
        assert_eq!(claims["room"], "demo", "{claims}");
    }
    // Without the access token nothing reaches the checkout.
    for p in &procs {
        let res = client()
            .get(format!("{}/checkout", p.public))
            .send()
            .await
            .unwrap();
        assert!(!res.text().await.unwrap().contains("waitroom-admission"));
    }
}

/// The checkout's `Waitroom-Session: end` on one replica ends the session
/// on all three, counts one completion, and frees the `max_active` slot
/// for the next fan.
#[tokio::test]
async fn the_checkout_ends_a_session_on_every_replica() {
    let up = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = shared_config(
        dir.path(),
        &up.url(),
        "admit_rate_per_min = 6000\nmax_active = 1",
    );
    let procs: Vec<Proc> = (0..3).map(|_| Proc::start(&config)).collect();
    let visit = |i: usize, access: String, path: &'static str| {
        let base = procs[i].public.clone();
        async move {
            let res = client()
                .get(format!("{base}{path}"))
                .header("accept", "application/json")
                .header("x-waitroom-token", access)
                .send()
                .await
                .unwrap();
            assert!(res.headers().get("waitroom-session").is_none());
            res.json::<Value>().await.unwrap()
        }
    };
    let (first, _) = join_ok(&procs[0].public).await;
    let (second, _) = join_ok(&procs[1].public).await;
    eventually(10, "the first fan's turn", || async {
        (status(&procs[0].public, &first).await["state"] == "admitted").then_some(())
    })
    .await;
    let access = claim_access(&procs[0].public, &first).await;
    // Live on every replica (each now holds it in memory).
    for i in 0..3 {
        assert_eq!(visit(i, access.clone(), "/basket").await["upstream"], true);
    }
    assert_ne!(
        status(&procs[1].public, &second).await["state"],
        "admitted",
        "max_active = 1: the second fan waits"
    );
    // Each replica has written the fan's activity back and holds the
    // session live in memory, with nothing more to write.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let done = visit(1, access.clone(), "/confirm?set=waitroom-session:end").await;
    assert_eq!(done["upstream"], true, "the confirmation reaches the fan");
    // Every replica hears of the end at its next tick (100 ms): soon
    // after, the fan's very next request anywhere gets "session ended",
    // also on the replicas that held the session live in memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..3 {
        let ended = visit(i, access.clone(), "/basket").await;
        assert_eq!(ended["state"], "ended", "replica {i}: {ended}");
        assert_eq!(ended["upstream"], Value::Null, "{ended}");
    }
    let mut total = 0.0;
    for p in &procs {
        total += metric(&p.admin, "waitroom_completions_total{room=\"demo\"}")
            .await
            .unwrap_or(0.0);
    }
    assert_eq!(total, 1.0, "one completion across the replicas");
    eventually(10, "the freed slot calls the second fan", || async {
        (status(&procs[2].public, &second).await["state"] == "admitted").then_some(())
    })
    .await;
}

/// The checkout's stock news on one replica is the room's on all three;
/// its sold-out closes every replica's line within a few seconds (an open
/// event stream on another replica hears it), and the promoter's reopening
/// on a third keeps every place.
#[tokio::test]
async fn stock_and_sold_out_from_the_checkout_reach_every_replica() {
    use eventsource_stream::Eventsource;
    use futures_util::StreamExt;
    let up = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = shared_config(
        dir.path(),
        &up.url(),
        "admit_rate_per_min = 6000\nmax_active = 1",
    );
    let procs: Vec<Proc> = (0..3).map(|_| Proc::start(&config)).collect();
    let access = admitted_access(&procs, 0).await;
    let visit = |i: usize, path: &'static str| visit_with(&procs[i].public, &access, path);
    let (waiting, _) = join_ok(&procs[1].public).await;
    let before = status(&procs[1].public, &waiting).await["position"].clone();

    assert_eq!(
        visit(0, "/cart?set=waitroom-stock:900").await["upstream"],
        true
    );
    for p in &procs {
        eventually(5, "the stock on every replica", || async {
            (status(&p.public, &waiting).await["tickets_left"] == 900).then_some(())
        })
        .await;
    }

    let mut events = client()
        .get(format!(
            "{}/_waitroom/events?room=demo&token={waiting}",
            procs[2].public
        ))
        .send()
        .await
        .unwrap()
        .bytes_stream()
        .eventsource();
    assert_eq!(events.next().await.unwrap().unwrap().event, "position");
    assert_eq!(
        visit(1, "/cart?set=waitroom-stock:sold-out").await["upstream"],
        true
    );
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let e = events.next().await.unwrap().unwrap();
            if e.event == "closed" {
                return serde_json::from_str::<Value>(&e.data).unwrap();
            }
        }
    })
    .await
    .expect("another replica's stream hears the sale is sold out");
    assert_eq!(closed["closed_reason"], "sold_out", "{closed}");
    let arrival: Value = join(&procs[0].public).await.json().await.unwrap();
    assert!(arrival["token"].is_null(), "no place: {arrival}");
    assert_eq!(arrival["closed_reason"], "sold_out", "{arrival}");
    assert_eq!(
        visit(2, "/pay").await["upstream"],
        true,
        "the buyer inside goes on"
    );

    procs[2]
        .admin(
            reqwest::Method::PATCH,
            "/admin/rooms/demo",
            Some(json!({ "sold_out": false })),
        )
        .await;
    let s = eventually(5, "reopened on every replica", || async {
        let s = status(&procs[0].public, &waiting).await;
        (s["state"] == "waiting").then_some(s)
    })
    .await;
    assert_eq!(s["position"], before, "the place is kept");
}

/// Every replica's measurements reach the one controller: no replica alone
/// has enough slow answers to act on, together they do; the cut rate is
/// the room's on every replica, and a new drip leader continues from it
/// instead of jumping back to the promoter's rate.
#[tokio::test]
async fn a_slow_checkout_seen_across_replicas_lowers_the_rate_for_all_and_survives_a_new_leader() {
    let up = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = shared_config(
        dir.path(),
        &up.url(),
        "admit_rate_per_min = 600\nupstream_target_p95_ms = 200\nupstream_rate_floor_per_min = 60\ncontrol_interval_secs = 3\ncontrol_min_samples = 7",
    );
    let mut procs: Vec<Option<Proc>> = (0..3).map(|_| Some(Proc::start(&config))).collect();
    let public = |i: usize| procs[i].as_ref().unwrap().public.clone();
    let (token, _) = join_ok(&public(0)).await;
    eventually(10, "the buyer's turn", || async {
        (status(&public(0), &token).await["state"] == "admitted").then_some(())
    })
    .await;
    let access = claim_access(&public(0), &token).await;
    // A slow checkout under steady load: two requests at a time through
    // each replica, each answered in 1.5 s. A three-second window holds
    // about four answers a replica, fewer than the 7 the controller needs:
    // only the replicas' deltas together are enough to act on.
    let load = Load::start(
        (0..6)
            .map(|i| {
                client()
                    .get(format!("{}/slow", public(i % 3)))
                    .header("x-waitroom-token", &access)
            })
            .collect(),
    );
    let mut cut = 0;
    for p in procs.iter().flatten() {
        let room = eventually(20, "every replica shows the cut", || async {
            let room = p
                .admin(reqwest::Method::GET, "/admin/rooms/demo", None)
                .await;
            (room["rate_reason"] == "checkout_slow").then_some(room)
        })
        .await;
        cut = cut.max(room["effective_rate_per_min"].as_u64().unwrap());
        assert!(
            room["effective_rate_per_min"].as_u64().unwrap() < 600,
            "{room}"
        );
    }
    load.stop().await;

    let leader = leader_of(&procs).await;
    procs[leader].take().unwrap().kill_9();
    let next = eventually(15, "a new drip leader", || async {
        let i = leader_of(&procs).await;
        (i != leader).then_some(i)
    })
    .await;
    let room = procs[next]
        .as_ref()
        .unwrap()
        .admin(reqwest::Method::GET, "/admin/rooms/demo", None)
        .await;
    assert_eq!(room["rate_reason"], "checkout_slow", "{room}");
    assert!(
        room["effective_rate_per_min"].as_u64().unwrap() <= cut,
        "the new leader continues from the cut: {room}"
    );
}

#[tokio::test]
async fn redis_that_lost_its_data_starts_a_new_epoch_and_voids_old_places() {
    let redis = OwnRedis::start();
    let up = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &up.url(),
        &redis.url(),
        "wr",
        "",
        "admit_rate_per_min = 600",
    );
    let procs: Vec<Option<Proc>> = (0..2).map(|_| Some(Proc::start(&config))).collect();
    paused(&procs, 0, true).await;
    let fans = join_spread(&procs, 4).await;
    // What a restart without persistence leaves: nothing.
    let mut con = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    redis::cmd("FLUSHALL").query::<()>(&mut con).unwrap();
    for p in procs.iter().flatten() {
        eventually(5, "the old places are void everywhere", || async {
            let res = client()
                .get(format!("{}/_waitroom/status?room=demo", p.public))
                .bearer_auth(&fans[0].token)
                .send()
                .await
                .unwrap();
            (res.status() == 401).then_some(())
        })
        .await;
    }
    // A number from the new epoch may repeat an old one: the epoch tells them apart.
    let (_, seq) = join_ok(&procs[1].as_ref().unwrap().public).await;
    assert_eq!(seq, 1);
}

#[tokio::test]
async fn a_session_taken_on_one_replica_is_honoured_by_the_others() {
    let (_up, _dir, procs, fans) = paused_replicas(2, 600, 1).await;
    paused(&procs, 1, false).await;
    let (a, b) = (
        procs[0].as_ref().unwrap().public.clone(),
        procs[1].as_ref().unwrap().public.clone(),
    );
    eventually(10, "called, as both replicas see it", || async {
        (status(&a, &fans[0].token).await["state"] == "admitted"
            && status(&b, &fans[0].token).await["state"] == "admitted")
            .then_some(())
    })
    .await;
    let key = "app-claim-key-0001";
    let url = format!("{a}/_waitroom/claim?room=demo");
    let res = client()
        .post(url)
        .bearer_auth(&fans[0].token)
        .header("idempotency-key", key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let access = res.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        claim_with_key(&b, &fans[0].token, Some(key)).await,
        200,
        "a claim retried with its Idempotency-Key (its answer lost) gets the same answer"
    );
    for other in [None, Some("not-the-claimants-key")] {
        assert_eq!(
            claim_with_key(&b, &fans[0].token, other).await,
            403,
            "a repeat without the claimant's key ({other:?}) is a copy"
        );
    }
    for base in [&b, &a, &b] {
        let res = client()
            .get(format!("{base}/checkout"))
            .header("x-waitroom-token", &access)
            .send()
            .await
            .unwrap();
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["upstream"], true, "let through on {base}: {body}");
    }
}

#[tokio::test]
async fn a_scheduled_pre_queue_is_drawn_once_for_every_replica() {
    let up = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Far enough ahead for two gateways to start and eight fans to join
    // even on a loaded machine.
    let opens_at = waitroom::rfc3339::format(now + 8);
    let config = write_config(
        dir.path(),
        &up.url(),
        &shared_redis_url(),
        &unique_prefix(),
        "",
        &format!("admit_rate_per_min = 600\nopens_at = \"{opens_at}\""),
    );
    let procs: Vec<Option<Proc>> = (0..2).map(|_| Some(Proc::start(&config))).collect();
    paused(&procs, 0, true).await;
    let fans = join_spread(&procs, 8).await;
    for f in &fans {
        let s = status(&procs[f.home].as_ref().unwrap().public, &f.token).await;
        assert_eq!(s["state"], "prequeue", "{s}");
    }
    let bases: Vec<String> = procs.iter().flatten().map(|p| p.public.clone()).collect();
    // After opening, both replicas show each fan the same drawn place...
    let mut ranks = vec![0u64; fans.len()];
    for (i, f) in fans.iter().enumerate() {
        let pos = eventually(25, "opened", || async {
            let s = status(&bases[0], &f.token).await;
            (s["state"] == "paused").then(|| s["position"].as_u64().unwrap())
        })
        .await;
        for base in &bases {
            let s = eventually(5, "opened on every replica", || async {
                let s = status(base, &f.token).await;
                (s["state"] == "paused").then_some(s)
            })
            .await;
            assert_eq!(
                s["position"].as_u64(),
                Some(pos),
                "same place on {base}: {s}"
            );
        }
        ranks[i] = pos;
    }
    // ...and it is the draw anyone can check from the revealed seed.
    let shuffle: Value = client()
        .get(format!("{}/_waitroom/shuffle?room=demo", bases[1]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shuffle["entries"], 8, "{shuffle}");
    let seed = waitroom::shuffle::Seed::from_hex(shuffle["seed"].as_str().unwrap()).unwrap();
    let order = waitroom::shuffle::order(&seed, 8);
    for (i, f) in fans.iter().enumerate() {
        let drawn = order.iter().position(|&s| u64::from(s) == f.seq).unwrap() as u64 + 1;
        assert_eq!(ranks[i], drawn, "place of entry {}", f.seq);
    }
}

#[tokio::test]
async fn max_active_caps_sessions_across_every_replica() {
    let up = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = shared_config(
        dir.path(),
        &up.url(),
        "admit_rate_per_min = 6000\nmax_active = 2",
    );
    let procs: Vec<Option<Proc>> = (0..3).map(|_| Some(Proc::start(&config))).collect();
    paused(&procs, 0, true).await;
    let mut fans = join_spread(&procs, 5).await;
    fans.sort_by_key(|f| f.seq);
    paused(&procs, 0, false).await;
    // Places 1 and 2 take the two slots, on two different replicas.
    for f in &fans[..2] {
        let home = procs[f.home].as_ref().unwrap().public.clone();
        eventually(10, "called and claimed", || async {
            (claim(&home, &f.token).await == 200).then_some(())
        })
        .await;
    }
    // At 100 a second the rest would be in at once without the cap; with
    // both sessions live, nobody else is let in, on any replica.
    for round in 0..15 {
        let base = &procs[round % 3].as_ref().unwrap().public;
        for f in &fans[2..] {
            let s = status(base, &f.token).await;
            assert_eq!(s["state"], "waiting", "place {}: {s}", f.seq);
            assert_eq!(s["eta_reason"], "checkout_full", "{s}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn reset(procs: &[Option<Proc>], i: usize) {
    procs[i]
        .as_ref()
        .unwrap()
        .admin(reqwest::Method::POST, "/admin/rooms/demo/reset", None)
        .await;
}

async fn through(base: &str, access: &str) -> Value {
    client()
        .get(format!("{base}/checkout"))
        .header("x-waitroom-token", access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn a_reset_on_one_replica_starts_every_replica_over() {
    let (_up, _dir, procs, fans) = paused_replicas(2, 600, 4).await;
    let (a, b) = (
        procs[0].as_ref().unwrap().public.clone(),
        procs[1].as_ref().unwrap().public.clone(),
    );
    // Place 1 of the first epoch comes in and is known to replica b.
    let first = fans.iter().find(|f| f.seq == 1).unwrap();
    paused(&procs, 0, false).await;
    eventually(10, "called", || async {
        (status(&b, &first.token).await["state"] == "admitted").then_some(())
    })
    .await;
    let old_access = claim_access(&b, &first.token).await;
    assert_eq!(through(&b, &old_access).await["upstream"], true);

    reset(&procs, 0).await;
    paused(&procs, 0, true).await;
    for base in [&a, &b] {
        eventually(5, "old places are void on every replica", || async {
            let res = client()
                .get(format!("{base}/_waitroom/status?room=demo"))
                .bearer_auth(&fans[3].token)
                .send()
                .await
                .unwrap();
            (res.status() == 401).then_some(())
        })
        .await;
    }
    // The new line starts at 1 wherever the fan arrives...
    let (token, seq) = join_ok(&b).await;
    assert_eq!(seq, 1, "the new epoch's counter starts over");
    paused(&procs, 1, false).await;
    eventually(10, "called in the new epoch", || async {
        (status(&a, &token).await["state"] == "admitted").then_some(())
    })
    .await;
    // ...and its place 1 is not mistaken for the old epoch's place 1.
    let access = claim_access(&a, &token).await;
    for base in [&a, &b] {
        let v = through(base, &access).await;
        assert_eq!(v["upstream"], true, "new session on {base}: {v}");
    }
    assert_ne!(
        through(&b, &old_access).await["upstream"],
        true,
        "an old-epoch session is over"
    );
}

#[tokio::test]
async fn admin_changes_made_at_once_on_two_replicas_both_hold() {
    let (_up, _dir, procs, _fans) = paused_replicas(2, 600, 1).await;
    let p = |i: usize| procs[i].as_ref().unwrap();
    let (one, two) = tokio::join!(
        p(0).admin(
            reqwest::Method::PATCH,
            "/admin/rooms/demo",
            Some(json!({ "admit_rate_per_min": 1234 })),
        ),
        p(1).admin(
            reqwest::Method::PATCH,
            "/admin/rooms/demo",
            Some(json!({ "max_active": 77 })),
        ),
    );
    let _ = (one, two);
    for i in 0..2 {
        eventually(5, "both changes everywhere", || async {
            let room = p(i)
                .admin(reqwest::Method::GET, "/admin/rooms/demo", None)
                .await;
            (room["admit_rate_per_min"] == 1234
                && room["max_active"] == 77
                && room["paused"] == true)
                .then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn over_capacity_lets_arrivals_straight_in_on_every_replica() {
    let up = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = shared_config(
        dir.path(),
        &up.url(),
        "admit_rate_per_min = 6000\nmax_active = 50\nqueue = \"over_capacity\"",
    );
    let procs: Vec<Option<Proc>> = (0..2).map(|_| Some(Proc::start(&config))).collect();
    leader_of(&procs).await;
    for round in 0..6 {
        let base = &procs[round % 2].as_ref().unwrap().public;
        let fan = Fan::new(base);
        let res = fan.get("/checkout").await;
        let text = res.text().await.unwrap();
        assert!(
            text.contains("\"upstream\":true"),
            "arrival {round} on {base} went straight in: {text:.200}"
        );
    }
}

/// A burst of arrivals on two replicas at once: each replica hands out
/// numbers to the arrivals waiting on it in one Redis call (a block of
/// consecutive numbers), and across both every fan still gets a number of
/// their own, with no gap, and no replica takes Redis for down.
#[tokio::test]
async fn a_burst_of_arrivals_on_two_replicas_gets_unique_gapless_places() {
    use futures_util::StreamExt;
    let (_up, _dir, procs, _) = paused_replicas(2, 60, 0).await;
    let publics: Vec<String> = procs.iter().flatten().map(|p| p.public.clone()).collect();
    let http = client();
    let seqs: Vec<u64> = futures_util::stream::iter(0..3000)
        .map(|i| {
            let req = http
                .post(format!("{}/_waitroom/join?room=demo", publics[i % 2]))
                .header("accept", "application/json");
            async move {
                let res = req.send().await.unwrap();
                assert_eq!(res.status(), 200, "a join in the burst");
                let v: Value = res.json().await.unwrap();
                seq_of(v["token"].as_str().unwrap())
            }
        })
        .buffer_unordered(600)
        .collect()
        .await;
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (1..=3000).collect::<Vec<u64>>());
    for p in procs.iter().flatten() {
        let errors = metric(&p.admin, "waitroom_errors_total{origin=\"store\"}").await;
        assert_eq!(
            errors.unwrap_or(0.0),
            0.0,
            "no arrival refused for want of Redis"
        );
    }
}

/// `n` replicas on the shared Redis serving one room (`room` adds lines).
async fn replicas(n: usize, room: &str) -> (TestUpstream, tempfile::TempDir, Vec<Option<Proc>>) {
    let up = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &up.url(),
        &shared_redis_url(),
        &unique_prefix(),
        "",
        room,
    );
    let procs = (0..n).map(|_| Some(Proc::start(&config))).collect();
    (up, dir, procs)
}

async fn three_replicas(room: &str) -> (TestUpstream, tempfile::TempDir, Vec<Option<Proc>>) {
    replicas(3, room).await
}

fn public(procs: &[Option<Proc>], i: usize) -> String {
    procs[i].as_ref().unwrap().public.clone()
}

#[tokio::test]
async fn a_copied_queue_cookie_replayed_on_other_replicas_never_claims_a_second_time() {
    let (up, _dir, procs) = three_replicas("admit_rate_per_min = 6000").await;
    let fan = Fan::new(&public(&procs, 0));
    fan.get("/checkout").await;
    let queue = fan.cookie("wr_q_demo").expect("queue cookie");
    let key = fan.cookie("wr_k_demo").expect("claim-key cookie");
    eventually(10, "called", || async {
        (fan.status("demo").await["state"] == "admitted").then_some(())
    })
    .await;
    let res = fan.get("/checkout").await;
    assert_eq!(res.json::<Value>().await.unwrap()["upstream"], true);

    // Every replica's view has the place past its turn (else a lagging
    // replica would rightly show a waiting page, not a refusal).
    for i in 0..3 {
        let base = public(&procs, i);
        eventually(10, "every replica sees the claim", || async {
            let s = status(&base, &queue).await;
            (s["state"] == "claimed").then_some(())
        })
        .await;
    }
    // Copies of the queue cookie, each from a fresh jar, another
    // User-Agent and another replica, at once after the claim.
    for i in 0..30 {
        let base = public(&procs, 1 + i % 2);
        let copier = reqwest::Client::builder()
            .no_proxy()
            .user_agent(format!("copier/{i}"))
            .build()
            .unwrap();
        let res = copier
            .post(format!("{base}/_waitroom/claim?room=demo"))
            .header("cookie", format!("wr_q_demo={queue}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 403, "copy {i} on {base} claimed again");
        let res = copier
            .get(format!("{base}/checkout"))
            .header("cookie", format!("wr_q_demo={queue}"))
            .header("accept", "text/html")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 403, "copy {i} on {base} got through");
    }
    assert_eq!(
        up.requests.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "only the fan reached the checkout"
    );

    // The fan's own retry (answer lost) on another replica: its claim key.
    let res = client()
        .get(format!("{}/checkout", public(&procs, 2)))
        .header("cookie", format!("wr_q_demo={queue}; wr_k_demo={key}"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(res.json::<Value>().await.unwrap()["upstream"], true);
}

/// Three replicas with a 5 s claim window, and a fan joined on the first
/// whose turn the third shows.
async fn three_replicas_and_a_called_fan()
-> (TestUpstream, tempfile::TempDir, Vec<Option<Proc>>, String) {
    let (up, dir, procs) = three_replicas("admit_rate_per_min = 6000\nclaim_grace_secs = 5").await;
    let (token, _) = join_ok(&public(&procs, 0)).await;
    eventually(10, "called", || async {
        (status(&public(&procs, 2), &token).await["state"] == "admitted").then_some(())
    })
    .await;
    (up, dir, procs, token)
}

#[tokio::test]
async fn a_pause_on_one_replica_holds_a_called_fan_on_another_at_once_and_keeps_the_call() {
    let (_up, _dir, procs, token) = three_replicas_and_a_called_fan().await;
    paused(&procs, 1, true).await;
    // No waiting for the pause to reach replica 2's view: Redis decides.
    let res = client()
        .post(format!("{}/_waitroom/claim?room=demo", public(&procs, 2)))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
    assert_eq!(res.json::<Value>().await.unwrap()["error"], "room_paused");
    eventually(5, "every replica shows the pause", || async {
        let mut all = true;
        for i in 0..3 {
            all &= status(&public(&procs, i), &token).await["state"] == "paused";
        }
        all.then_some(())
    })
    .await;
    // Longer than the claim window: the call is kept.
    tokio::time::sleep(Duration::from_secs(6)).await;
    paused(&procs, 1, false).await;
    assert_eq!(
        claim(&public(&procs, 2), &token).await,
        200,
        "the call survived the pause, on every replica at once"
    );
}

#[tokio::test]
async fn one_solved_proof_of_work_buys_one_place_across_every_replica() {
    let (_up, _dir, procs) = three_replicas("pow_bits = 8").await;
    let v: Value = client()
        .get(format!(
            "{}/_waitroom/challenge?room=demo",
            public(&procs, 0)
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let challenge = v["challenge"].as_str().unwrap().to_string();
    let proof = format!("{challenge}:{}", waitroom::pow::solve(&challenge, 8));
    let join_with = |i: usize| {
        let (base, proof) = (public(&procs, i), proof.clone());
        async move {
            client()
                .post(format!("{base}/_waitroom/join?room=demo"))
                .header("accept", "application/json")
                .header("x-waitroom-pow", proof)
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(join_with(0).await.status(), 200);
    for i in [1, 2, 0] {
        let res = join_with(i).await;
        assert_eq!(res.status(), 422, "replica {i} took the same proof again");
        let v: Value = res.json().await.unwrap();
        assert_eq!(v["reason"], "reused", "{v}");
    }
}

/// Sold out holds a called fan's call as a pause does, on every replica:
/// past the claim window the fan is told the sale is sold out (not that
/// they missed their turn), and once the promoter reopens they enter.
#[tokio::test]
async fn sold_out_on_one_replica_keeps_a_called_fans_call_on_another_past_the_claim_window() {
    let (_up, _dir, procs, token) = three_replicas_and_a_called_fan().await;
    let sold_out = |v: bool| {
        procs[1].as_ref().unwrap().admin(
            reqwest::Method::PATCH,
            "/admin/rooms/demo",
            Some(json!({ "sold_out": v })),
        )
    };
    sold_out(true).await;
    // Longer than the claim window: the call is kept.
    tokio::time::sleep(Duration::from_secs(6)).await;
    for i in 0..3 {
        let s = status(&public(&procs, i), &token).await;
        assert_eq!(s["state"], "closed", "replica {i}: {s}");
        assert_eq!(s["closed_reason"], "sold_out", "replica {i}: {s}");
    }
    sold_out(false).await;
    assert_eq!(
        claim(&public(&procs, 2), &token).await,
        200,
        "the call survived the sold-out, on every replica at once"
    );
}
