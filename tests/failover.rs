//! Redis Sentinel failover with real processes: one primary, two
//! replicas and three sentinels (Debian's `redis-server` in sentinel
//! mode), started here on free loopback ports; three gateway replicas
//! following the primary through the sentinels while the test kills it.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const MASTER: &str = "wr";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `redis-server` process (a data node or a sentinel), killed on drop.
struct Node {
    child: Option<Child>,
    port: u16,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill_9();
    }
}

impl Node {
    fn start(dir: &Path, port: u16, args: &[&str]) -> Node {
        let child = Command::new("redis-server")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server; scripts/test.sh installs it)");
        let node = Node {
            child: Some(child),
            port,
        };
        node.wait_ping();
        node
    }

    fn wait_ping(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cmd(&["PING"]).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis on {} did not start",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn cmd(&self, args: &[&str]) -> redis::RedisResult<redis::Value> {
        let c = redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))?;
        let mut con = c.get_connection_with_timeout(Duration::from_secs(1))?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut con)
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            signal(c, sig);
        }
    }

    fn kill_9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One primary, two replicas, three sentinels.
struct Sentinel {
    _dir: tempfile::TempDir,
    data: Vec<Node>,
    sentinels: Vec<Node>,
}

impl Sentinel {
    fn start() -> Sentinel {
        let dir = tempfile::tempdir().unwrap();
        let mut data = Vec::new();
        let primary_port = free_port();
        for i in 0..3 {
            let port = if i == 0 { primary_port } else { free_port() };
            let sub = dir.path().join(format!("data{i}"));
            std::fs::create_dir(&sub).unwrap();
            let port_s = port.to_string();
            let primary_s = primary_port.to_string();
            let mut args = vec![
                "--port",
                &port_s,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--repl-diskless-sync-delay",
                "0",
            ];
            if i > 0 {
                args.extend(["--replicaof", "127.0.0.1", &primary_s]);
            }
            data.push(Node::start(&sub, port, &args));
        }
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let port = free_port();
            let sub = dir.path().join(format!("sentinel{i}"));
            std::fs::create_dir(&sub).unwrap();
            let conf = sub.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\nsentinel monitor {MASTER} 127.0.0.1 {primary_port} 2\nsentinel down-after-milliseconds {MASTER} 1000\nsentinel failover-timeout {MASTER} 10000\nsentinel parallel-syncs {MASTER} 1\n"
                ),
            )
            .unwrap();
            let conf_s = conf.display().to_string();
            sentinels.push(Node::start(&sub, port, &[&conf_s, "--sentinel"]));
        }
        Sentinel {
            _dir: dir,
            data,
            sentinels,
        }
    }

    /// The `[store]` section for gateways following the primary.
    fn store_toml(&self, prefix: &str) -> String {
        let list: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("\"127.0.0.1:{}\"", s.port))
            .collect();
        format!(
            "[store]\nkind = \"redis\"\nsentinels = [{}]\nmaster_name = \"{MASTER}\"\nkey_prefix = \"{prefix}\"\nlease_ms = 1000",
            list.join(", ")
        )
    }

    /// The port the sentinels name as the primary now.
    fn primary_port(&self) -> Option<u16> {
        for s in &self.sentinels {
            if let Ok(redis::Value::Array(v)) =
                s.cmd(&["SENTINEL", "get-master-addr-by-name", MASTER])
                && let Some(redis::Value::BulkString(port)) = v.get(1)
            {
                return std::str::from_utf8(port).ok()?.parse().ok();
            }
        }
        None
    }

    fn data_node(&mut self, port: u16) -> &mut Node {
        self.data.iter_mut().find(|n| n.port == port).unwrap()
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// A new place: its token and sequence number (read from the token).
async fn join(base: &str) -> Option<(String, u64)> {
    let v: Value = client()
        .post(format!("{base}/_waitroom/join?room=demo"))
        .header("accept", "application/json")
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let token = v["token"].as_str()?.to_string();
    use base64::Engine;
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.split('.').nth(1)?)
        .ok()?;
    let seq = serde_json::from_slice::<Value>(&payload).ok()?["seq"].as_u64()?;
    Some((token, seq))
}

/// What each failover test runs: the Redis processes, the primary's port
/// at the start, an upstream, and three gateway replicas following the
/// primary with room `demo` (`room`: its extra settings).
struct Rig {
    redis: Sentinel,
    first: u16,
    _up: TestUpstream,
    _dir: tempfile::TempDir,
    procs: Vec<Proc>,
}

impl Rig {
    async fn start(room: &str) -> Rig {
        let redis = Sentinel::start();
        let first = redis.primary_port().expect("the sentinels name a primary");
        let up = TestUpstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("waitroom.toml");
        std::fs::write(
            &config,
            config_toml_with_store(
                &redis.store_toml(&format!("fo{:08x}", rand::random::<u32>())),
                &room_toml("demo", &up.url(), room),
                "",
            ),
        )
        .unwrap();
        let procs = (0..3).map(|_| Proc::start(&config)).collect();
        Rig {
            redis,
            first,
            _up: up,
            _dir: dir,
            procs,
        }
    }
}

/// `n` new places spread over the gateways, each retried until one is
/// given (the line may be holding while no primary answers).
async fn join_spread(procs: &[Proc], n: usize, what: &str) -> Vec<(String, u64)> {
    let mut joined = Vec::new();
    for i in 0..n {
        joined.push(
            eventually(20, what, || {
                let base = procs[i % procs.len()].public.clone();
                async move { join(&base).await }
            })
            .await,
        );
    }
    joined
}

/// Sends `sig` (`-STOP`, `-CONT`) to a process.
fn signal(child: &Child, sig: &str) {
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success()
    );
}

async fn status(base: &str, token: &str) -> Option<Value> {
    let url = format!("{base}/_waitroom/status?room=demo");
    let (s, v) = bearer_json(&client(), reqwest::Method::GET, url, token, None).await;
    (s == 200).then_some(v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_follow_the_primary_through_a_failover_and_admissions_resume() {
    let mut rig =
        Rig::start("admit_rate_per_min = 120\nabandon_after_secs = 600\nclaim_grace_secs = 600")
            .await;
    let procs = std::mem::take(&mut rig.procs);
    let (redis, first) = (&mut rig.redis, rig.first);
    // Fans in line on every replica before the failure.
    let fans: Vec<String> = join_spread(&procs, 6, "a place while the primary answers")
        .await
        .into_iter()
        .map(|(token, _)| token)
        .collect();

    // Both replicas hold what the primary acknowledged so far (the case
    // where they do not is the asynchronous-replication one).
    let synced = redis.data_node(first).cmd(&["WAIT", "2", "5000"]);
    assert_eq!(synced, Ok(redis::Value::Int(2)), "both replicas in sync");
    redis.data_node(first).kill_9();
    let started = Instant::now();
    let second = eventually(30, "the sentinels promote a replica", || async {
        redis.primary_port().filter(|p| *p != first)
    })
    .await;
    assert_ne!(second, first);

    // New places and admissions resume by themselves on the new primary.
    let (late, _) = eventually(20, "a new place after the failover", || {
        let base = procs[1].public.clone();
        async move { join(&base).await }
    })
    .await;
    let pause = started.elapsed();
    eprintln!("failover: new places again {pause:?} after the primary was killed");
    for (i, token) in fans.iter().chain([&late]).enumerate() {
        eventually(30, "every fan is admitted in turn", || {
            let base = procs[i % 3].public.clone();
            async move {
                let s = status(&base, token).await?;
                matches!(s["state"].as_str(), Some("admitted")).then_some(())
            }
        })
        .await;
    }
}

/// The hard case: the primary's last writes never reach a replica, and
/// the gateway replica that handed them out dies with it, so nobody alive
/// knows those numbers. The replicas' links are cut, fans join through one
/// gateway (their numbers exist only on the primary), and the primary and
/// that gateway are killed. After the failover no number is handed out
/// twice (the survivors raise the counter past a margin), the fans holding
/// the lost numbers keep their places, and the line moves on past the
/// numbers nobody holds without waiting for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_handed_out_only_on_the_dying_primary_are_never_handed_out_again() {
    let mut rig =
        Rig::start("admit_rate_per_min = 600\nabandon_after_secs = 600\nclaim_grace_secs = 600")
            .await;
    let mut procs = std::mem::take(&mut rig.procs);
    let (redis, first) = (&mut rig.redis, rig.first);
    let dying = procs.pop().unwrap();
    let before: Vec<u64> = join_spread(&procs, 4, "a place while the primary answers")
        .await
        .into_iter()
        .map(|(_, seq)| seq)
        .collect();
    let synced = redis.data_node(first).cmd(&["WAIT", "2", "5000"]);
    assert_eq!(synced, Ok(redis::Value::Int(2)));

    // Cut the replicas off and stop the surviving gateways (so not even
    // their ticks read the counter), hand out numbers through the third,
    // kill the primary and that gateway, and let the survivors go on.
    // Stopped, the replicas read nothing more; the primary drops their
    // links (and whatever it had not sent yet).
    for n in redis.data.iter().filter(|n| n.port != first) {
        n.signal("-STOP");
    }
    redis
        .data_node(first)
        .cmd(&["CLIENT", "KILL", "TYPE", "replica"])
        .unwrap();
    for p in &procs {
        signal(&p.child, "-STOP");
    }
    let mut lost = Vec::new();
    for _ in 0..3 {
        lost.push(
            join(&dying.public)
                .await
                .expect("the primary still answers"),
        );
    }
    redis.data_node(first).kill_9();
    dying.kill_9();
    for p in &procs {
        signal(&p.child, "-CONT");
    }
    for n in redis.data.iter().filter(|n| n.port != first) {
        n.signal("-CONT");
    }
    eventually(30, "the sentinels promote a replica", || async {
        redis.primary_port().filter(|p| *p != first)
    })
    .await;
    let after = join_spread(&procs, 4, "a new place after the failover").await;
    let lost_seqs: Vec<u64> = lost.iter().map(|l| l.1).collect();
    let after_seqs: Vec<u64> = after.iter().map(|a| a.1).collect();
    let mut all: Vec<u64> = before
        .iter()
        .chain(&lost_seqs)
        .chain(&after_seqs)
        .copied()
        .collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(
        all.len(),
        before.len() + lost.len() + after.len(),
        "a number handed out twice: before {before:?}, lost {lost_seqs:?}, after {after_seqs:?}"
    );
    // The fans the new primary never heard of keep their places (their
    // pages keep asking), and the last to join is admitted in turn: the
    // numbers nobody holds are skipped, not waited for.
    for (token, _) in lost.iter().chain(&after) {
        eventually(30, "every fan is admitted in turn", || async {
            let s = status(&procs[0].public, token).await?;
            (s["state"] == "admitted").then_some(())
        })
        .await;
    }
}

async fn claim(base: &str, token: &str, key: Option<&str>) -> (u16, Value) {
    let mut req = client()
        .post(format!("{base}/_waitroom/claim?room=demo"))
        .bearer_auth(token)
        .header("accept", "application/json");
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// A claim is answered only once a replica holds it: with both replicas
/// stopped the claimant is told to retry (503), its retry succeeds once
/// they answer, and after the primary is killed the place cannot be
/// claimed a second time, while the claimant's access goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_outlives_the_primary_and_is_never_granted_twice() {
    let mut rig =
        Rig::start("admit_rate_per_min = 6000\nclaim_grace_secs = 600\nabandon_after_secs = 600")
            .await;
    let procs = std::mem::take(&mut rig.procs);
    let (redis, first) = (&mut rig.redis, rig.first);
    let (token, _) = join_spread(&procs, 1, "a place").await.remove(0);
    eventually(10, "the fan's turn", || async {
        let s = status(&procs[1].public, &token).await?;
        (s["state"] == "admitted").then_some(())
    })
    .await;

    for n in redis.data.iter().filter(|n| n.port != first) {
        n.signal("-STOP");
    }
    let key = "claimant-key-0001";
    let (status_code, body) = claim(&procs[0].public, &token, Some(key)).await;
    assert_eq!(status_code, 503, "no replica holds the claim yet: {body}");
    for n in redis.data.iter().filter(|n| n.port != first) {
        n.signal("-CONT");
    }
    let access = eventually(10, "the claimant's retry is granted", || async {
        let (s, v) = claim(&procs[0].public, &token, Some(key)).await;
        (s == 200).then(|| v["access_token"].as_str().map(str::to_string))?
    })
    .await;

    redis.data_node(first).kill_9();
    eventually(30, "the sentinels promote a replica", || async {
        redis.primary_port().filter(|p| *p != first)
    })
    .await;
    // A copy of the queue token (no claimant key) is refused on the new
    // primary: the claim survived.
    let copied = eventually(20, "the new primary answers claims", || async {
        let (s, v) = claim(&procs[2].public, &token, None).await;
        (s != 503).then_some((s, v))
    })
    .await;
    assert_eq!(copied.0, 403, "{}", copied.1);
    let echo: Value = eventually(20, "the claimant's access goes on", || async {
        client()
            .get(format!("{}/checkout", procs[1].public))
            .header("x-waitroom-token", &access)
            .send()
            .await
            .ok()?
            .json::<Value>()
            .await
            .ok()
            .filter(|v| v["upstream"] == true)
    })
    .await;
    assert_eq!(echo["path"], "/checkout");
}
