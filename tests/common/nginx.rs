//! A real nginx as an upstream: a server that normalises paths as most
//! upstreams do (decodes escapes, resolves `..`, merges `//`) before it
//! picks a location, so the gateway's path rules are tried against what a
//! real upstream would serve, not only against the echo upstream.
//!
//! nginx runs as a child process in the foreground (`daemon off`,
//! `master_process off`: one process, so killing it leaves nothing behind),
//! with its config, pid, logs and temp paths in its own temp directory, on
//! a free loopback port. It is killed on drop. Without nginx the test
//! fails, naming the package: `bash scripts/test.sh` installs it.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Nginx {
    pub addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

/// The nginx binary: `WAITROOM_TEST_NGINX`, else `nginx` on `PATH`, else
/// Debian's `/usr/sbin/nginx` (root's `PATH` has it; others' may not).
fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("WAITROOM_TEST_NGINX") {
        return p.into();
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file());
    let found = on_path.or_else(|| {
        let p = PathBuf::from("/usr/sbin/nginx");
        p.is_file().then_some(p)
    });
    found.unwrap_or_else(|| {
        panic!(
            "these tests need nginx as a real path-normalising upstream and none was found: \
             install Debian's nginx-light (as root: apt-get install nginx-light), run \
             `bash scripts/test.sh` (which installs it), or point WAITROOM_TEST_NGINX at a binary"
        )
    })
}

impl Nginx {
    /// Starts nginx serving one `server` block whose body is `locations`.
    pub async fn start(locations: &str) -> Nginx {
        let nginx = binary();
        // nginx cannot listen on port 0 and report the port: take a free
        // one and retry if another process grabs it first.
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free loopback port")
                .port();
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let dir = tempfile::tempdir().expect("nginx temp dir");
            let d = dir.path().display();
            let conf = format!(
                r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    default_type text/plain;
    server {{
        listen 127.0.0.1:{port};
{locations}
    }}
}}
"#
            );
            let conf_path = dir.path().join("nginx.conf");
            std::fs::write(&conf_path, conf).expect("write nginx.conf");
            let mut child = Command::new(&nginx)
                .arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(&conf_path)
                .arg("-e")
                .arg(dir.path().join("error.log"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", nginx.display()));
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    last_error = format!(
                        "nginx exited ({status}): {}",
                        std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
                    );
                    break;
                }
                if tokio::net::TcpStream::connect(addr).await.is_ok() {
                    return Nginx { addr, child, dir };
                }
                if tokio::time::Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("nginx did not listen on {addr} within 10 s");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        panic!("nginx did not start: {last_error}");
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // A failed assertion must not leave nginx running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
