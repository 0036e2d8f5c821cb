//! `[admin]`: the admin API's bearer token (or `WAITROOM_ADMIN_TOKEN`).

use std::net::SocketAddr;

use super::Problems;
use crate::config::raw::RawAdmin;
use crate::config::{EnvOverrides, MIN_EXPOSED_ADMIN_TOKEN_BYTES};

/// The admin token (`WAITROOM_ADMIN_TOKEN` before the file's). `listen_admin`
/// (when it parsed) decides how long it must be: a token reachable from other
/// hosts must resist guessing.
pub(super) fn check(
    admin: &RawAdmin,
    env: &EnvOverrides,
    listen_admin: Option<SocketAddr>,
    problems: &mut Problems,
) -> String {
    let admin_token = env
        .admin_token
        .clone()
        .or_else(|| admin.token.clone())
        .unwrap_or_default();
    if admin_token.trim().is_empty() {
        problems.push(
            "admin.token",
            "is required (or set WAITROOM_ADMIN_TOKEN)".into(),
        );
    } else if let Some(a) = listen_admin
        && !a.ip().is_loopback()
        && admin_token.len() < MIN_EXPOSED_ADMIN_TOKEN_BYTES
    {
        problems.push(
            "admin.token",
            format!(
                "must be at least {MIN_EXPOSED_ADMIN_TOKEN_BYTES} bytes when listen.admin is not a loopback address"
            ),
        );
    }
    admin_token
}
