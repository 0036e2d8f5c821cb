//! `[listen]`: the public and the admin address.

use std::net::SocketAddr;

use super::Problems;
use crate::config::raw::RawListen;

/// The public and the admin address; `None` for one that does not parse.
pub(super) fn check(
    listen: &RawListen,
    problems: &mut Problems,
) -> (Option<SocketAddr>, Option<SocketAddr>) {
    let public = address(&listen.public, "listen.public", problems);
    let admin = address(&listen.admin, "listen.admin", problems);
    if let (Some(p), Some(a)) = (public, admin)
        && p == a
        && p.port() != 0
    {
        problems.push(
            "listen.admin",
            "must differ from listen.public: the admin API never shares the public listener".into(),
        );
    }
    (public, admin)
}

fn address(s: &str, field: &str, problems: &mut Problems) -> Option<SocketAddr> {
    match s.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            problems.push(
                field,
                format!("{s:?} is not an IP:port address (e.g. \"127.0.0.1:8080\")"),
            );
            None
        }
    }
}
