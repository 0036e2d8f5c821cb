//! `[[rooms]]`: each room's route, upstream, pace, sessions, schedule and
//! page; no two rooms may share an id or protect the same route.

use std::collections::HashSet;
use std::path::Path;

use super::Problems;
use crate::binding::AccessBinding;
use crate::config::CapacityConfig;
use crate::config::raw::RawRoom;
use crate::config::{
    DEFAULT_ABANDON_AFTER_SECS, DEFAULT_CLAIM_GRACE_SECS, DEFAULT_REJOIN_SECS,
    DEFAULT_SESSION_SECS, QueueMode, RoomConfig,
};

/// What the rooms checked so far have taken: ids, and routes as
/// (host, lower-cased prefix).
#[derive(Default)]
struct Taken {
    ids: HashSet<String>,
    routes: HashSet<(Option<String>, String)>,
}

/// Every room that validates; at least one room is required.
pub(super) fn check(rooms: &[RawRoom], base: &Path, problems: &mut Problems) -> Vec<RoomConfig> {
    if rooms.is_empty() {
        problems.push("rooms", "at least one [[rooms]] entry is required".into());
    }
    let mut taken = Taken::default();
    let checked: Vec<RoomConfig> = rooms
        .iter()
        .enumerate()
        .filter_map(|(i, r)| room(i, r, base, &mut taken, problems))
        .collect();
    // One controller per group: its rooms must agree on how it works.
    for (i, r) in checked.iter().enumerate() {
        let Some(c) = &r.capacity else { continue };
        if let Some(first) = checked[..i]
            .iter()
            .filter_map(|o| o.capacity.as_ref().map(|oc| (o, oc)))
            .find(|(_, oc)| oc.group == c.group)
            && first.1.settings != c.settings
        {
            problems.push(
                &format!("rooms[{i}].capacity_group"),
                format!(
                    "{:?} is shared with room {:?}, whose upstream_target_p95_ms, upstream_rate_floor_per_min, control_interval_secs and control_min_samples differ: rooms of one group share one controller",
                    c.group, first.0.id
                ),
            );
        }
    }
    checked
}

/// Room `i`; `None` when its upstream is unusable (its other problems are
/// pushed all the same).
fn room(
    i: usize,
    r: &RawRoom,
    base: &Path,
    taken: &mut Taken,
    problems: &mut Problems,
) -> Option<RoomConfig> {
    let f = |name: &str| format!("rooms[{i}].{name}");
    let id_ok = !r.id.is_empty()
        && r.id.len() <= 48
        && r.id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !id_ok {
        problems.push(
            &f("id"),
            format!(
                "{:?} must be 1-48 characters of a-z, A-Z, 0-9, '-' or '_' (it is used in cookie names)",
                r.id
            ),
        );
    }
    if !taken.ids.insert(r.id.clone()) {
        problems.push(&f("id"), format!("duplicate room id {:?}", r.id));
    }
    let upstream = super::upstream(&r.upstream, &f("upstream"), problems);
    let path_prefix = r.path_prefix.clone().unwrap_or_else(|| "/".into());
    if !path_prefix.starts_with('/') || path_prefix.starts_with("/_waitroom") {
        problems.push(
            &f("path_prefix"),
            format!("{path_prefix:?} must start with '/' and not with /_waitroom"),
        );
    } else if let Err(e) = check_route_path(&path_prefix) {
        problems.push(&f("path_prefix"), e);
    }
    let host = r.host.as_ref().map(|h| match crate::host::split(h) {
        Ok((name, None)) => name.to_ascii_lowercase(),
        Ok((_, Some(_))) => {
            problems.push(
                &f("host"),
                format!("{h:?} must be a host name without a port (rooms match any port)"),
            );
            h.clone()
        }
        Err(_) => {
            problems.push(&f("host"), format!("{h:?} is not a valid host name"));
            h.clone()
        }
    });
    // Room prefixes match ignoring case, so two rooms differing only in
    // case would protect the same route.
    if !taken
        .routes
        .insert((host.clone(), path_prefix.to_ascii_lowercase()))
    {
        problems.push(
            &f("path_prefix"),
            format!("another room already protects {path_prefix:?} on this host"),
        );
    }
    for (j, e) in r.exempt_paths.iter().enumerate() {
        if !e.starts_with('/') {
            problems.push(
                &format!("rooms[{i}].exempt_paths[{j}]"),
                format!("{e:?} must start with '/'"),
            );
        } else if let Err(why) = check_route_path(e) {
            problems.push(&format!("rooms[{i}].exempt_paths[{j}]"), why);
        }
    }
    if !(1..=6_000_000).contains(&r.admit_rate_per_min) {
        problems.push(
            &f("admit_rate_per_min"),
            "must be between 1 and 6000000 (pause the room to stop admissions)".into(),
        );
    }
    let session_secs = r.session_secs.unwrap_or(DEFAULT_SESSION_SECS);
    if !(10..=86_400).contains(&session_secs) {
        problems.push(&f("session_secs"), "must be between 10 and 86400".into());
    }
    let session_max_secs = r.session_max_secs.unwrap_or(session_secs.saturating_mul(3));
    if session_max_secs < session_secs || session_max_secs > 7 * 86_400 {
        problems.push(
            &f("session_max_secs"),
            "must be at least session_secs and at most 604800".into(),
        );
    }
    if r.max_active == Some(0) {
        problems.push(
            &f("max_active"),
            "must be at least 1 (or left out for no cap)".into(),
        );
    }
    let queue = match r.queue.as_deref().unwrap_or("always") {
        "always" => QueueMode::Always,
        "over_capacity" => {
            if r.max_active.is_none() {
                problems.push(
                    &f("queue"),
                    "\"over_capacity\" needs max_active: without a cap there is no capacity to be over".into(),
                );
            }
            QueueMode::OverCapacity
        }
        other => {
            problems.push(
                &f("queue"),
                format!("unknown mode {other:?}; expected \"always\" or \"over_capacity\""),
            );
            QueueMode::Always
        }
    };
    let claim_grace_secs = r.claim_grace_secs.unwrap_or(DEFAULT_CLAIM_GRACE_SECS);
    if !(5..=3600).contains(&claim_grace_secs) {
        problems.push(&f("claim_grace_secs"), "must be between 5 and 3600".into());
    }
    let abandon_after_secs = r.abandon_after_secs.unwrap_or(DEFAULT_ABANDON_AFTER_SECS);
    if !(10..=86_400).contains(&abandon_after_secs) {
        problems.push(
            &f("abandon_after_secs"),
            "must be between 10 and 86400".into(),
        );
    }
    let rejoin_secs = r.rejoin_secs.unwrap_or(DEFAULT_REJOIN_SECS);
    if rejoin_secs > 86_400 {
        problems.push(&f("rejoin_secs"), "must be at most 86400".into());
    }
    let page_template = r
        .page_template
        .as_ref()
        .and_then(|path| read_page_template(path, base, &f("page_template"), problems));
    let opens_at = instant(r.opens_at.as_deref(), &f("opens_at"), problems);
    let closes_at = instant(r.closes_at.as_deref(), &f("closes_at"), problems);
    if let (Some(o), Some(c)) = (opens_at, closes_at)
        && c <= o
    {
        problems.push(&f("closes_at"), "must be after opens_at".into());
    }
    let closed_message = r
        .closed_message
        .clone()
        .unwrap_or_else(|| "This sale is closed.".into());
    if closed_message.len() > 500 {
        problems.push(&f("closed_message"), "must be at most 500 bytes".into());
    }
    let access_binding = match r.access_binding.as_deref() {
        None => AccessBinding::UserAgent,
        Some(b) => AccessBinding::parse(b).unwrap_or_else(|| {
            problems.push(
                &f("access_binding"),
                format!("{b:?} is not one of \"user_agent\", \"network\", \"user_agent+network\", \"none\""),
            );
            AccessBinding::None
        }),
    };
    let admission_audience = r.admission_audience.clone().unwrap_or_else(|| r.id.clone());
    if admission_audience.is_empty() || admission_audience.len() > 200 {
        problems.push(
            &f("admission_audience"),
            "must be 1 to 200 bytes (the admission tokens' aud)".into(),
        );
    }
    let pow_bits = r.pow_bits.unwrap_or(0);
    if pow_bits > crate::pow::MAX_BITS {
        problems.push(
            &f("pow_bits"),
            format!(
                "must be at most {} (0 turns proof of work off)",
                crate::pow::MAX_BITS
            ),
        );
    }
    let tickets_per_order = r.tickets_per_order.unwrap_or(2);
    if !(1..=100).contains(&tickets_per_order) {
        problems.push(
            &f("tickets_per_order"),
            "must be between 1 and 100 (tickets a buyer takes on average)".into(),
        );
    }
    let capacity = capacity(r, &f, problems);
    Some(RoomConfig {
        id: r.id.clone(),
        title: r.title.clone().unwrap_or_else(|| r.id.clone()),
        upstream: upstream?,
        host,
        path_prefix,
        admission_audience,
        exempt_paths: r.exempt_paths.clone(),
        admit_rate_per_min: r.admit_rate_per_min,
        session_secs,
        session_max_secs,
        max_active: r.max_active,
        queue,
        claim_grace_secs,
        abandon_after_secs,
        rejoin_secs,
        page_template,
        opens_at,
        closes_at,
        closed_message,
        access_binding,
        pow_bits,
        tickets_per_order,
        capacity,
    })
}

/// `upstream_target_p95_ms` and the controller's other knobs; the rest
/// without a target is a mistake worth naming.
fn capacity(
    r: &RawRoom,
    f: &dyn Fn(&str) -> String,
    problems: &mut Problems,
) -> Option<CapacityConfig> {
    let Some(target_ms) = r.upstream_target_p95_ms else {
        for (set, name) in [
            (
                r.upstream_rate_floor_per_min.is_some(),
                "upstream_rate_floor_per_min",
            ),
            (r.control_interval_secs.is_some(), "control_interval_secs"),
            (r.control_min_samples.is_some(), "control_min_samples"),
            (r.capacity_group.is_some(), "capacity_group"),
        ] {
            if set {
                problems.push(&f(name), "needs upstream_target_p95_ms".into());
            }
        }
        return None;
    };
    let mut ok = true;
    let mut bounded = |name: &str, v: u64, min: u64, max: u64, what: &str| {
        if !(min..=max).contains(&v) {
            problems.push(
                &f(name),
                format!("must be between {min} and {max} ({what})"),
            );
            ok = false;
        }
        v
    };
    let target_ms = bounded("upstream_target_p95_ms", target_ms, 10, 600_000, "ms");
    let floor = bounded(
        "upstream_rate_floor_per_min",
        r.upstream_rate_floor_per_min.unwrap_or(1),
        1,
        6_000_000,
        "fans per minute the controller never goes below",
    );
    let interval = bounded(
        "control_interval_secs",
        r.control_interval_secs
            .unwrap_or(crate::capacity::controller::DEFAULT_CONTROL_INTERVAL_SECS),
        1,
        3600,
        "seconds between decisions; admitted fans load the checkout for minutes, so 30 or more",
    );
    let min_samples = bounded(
        "control_min_samples",
        r.control_min_samples
            .unwrap_or(crate::capacity::controller::DEFAULT_MIN_SAMPLES),
        1,
        10_000_000,
        "requests a window needs before the controller acts on it",
    );
    let group = r.capacity_group.clone().unwrap_or_else(|| r.id.clone());
    if group.is_empty() || group.len() > 48 {
        problems.push(&f("capacity_group"), "must be 1 to 48 bytes".into());
        ok = false;
    }
    ok.then(|| {
        let mut settings = crate::capacity::CapacitySettings::new(
            std::time::Duration::from_millis(target_ms),
            floor,
        );
        settings.control_interval = std::time::Duration::from_secs(interval);
        settings.min_samples = min_samples;
        CapacityConfig { group, settings }
    })
}

/// A platform's waiting page, read from `path` (relative to `base`); it must
/// hold `{{script}}`, or the page could not update or forward the fan.
fn read_page_template(
    path: &str,
    base: &Path,
    field: &str,
    problems: &mut Problems,
) -> Option<String> {
    match std::fs::read_to_string(base.join(path)) {
        Ok(text) if text.contains("{{script}}") => Some(text),
        Ok(_) => {
            problems.push(
                field,
                format!(
                    "{path:?} has no {{{{script}}}} placeholder: the page could not update or forward the fan"
                ),
            );
            None
        }
        Err(e) => {
            problems.push(field, format!("cannot read {path:?}: {e}"));
            None
        }
    }
}

/// An RFC 3339 time (`opens_at`, `closes_at`) as Unix seconds.
fn instant(value: Option<&str>, field: &str, problems: &mut Problems) -> Option<u64> {
    match crate::rfc3339::parse(value?) {
        Ok(secs) => Some(secs),
        Err(e) => {
            problems.push(field, e);
            None
        }
    }
}

/// A room's `path_prefix` or exempt path must be written in the normal form
/// requests are decided on (see `path`), without `;` parameters (routing
/// ignores them): in any other spelling it would never match, or match
/// something other than what it says. It is refused, not rewritten, so the
/// file says what the gateway does.
fn check_route_path(value: &str) -> Result<(), String> {
    if value.contains(';') {
        return Err(format!(
            "{value:?} must not contain ';' (routing ignores ';' parameters)"
        ));
    }
    match crate::path::normalize(value) {
        Err(e) => Err(format!("{value:?}: {e}")),
        Ok(normal) if normal != value => {
            Err(format!("{value:?} is not in normal form: write {normal:?}"))
        }
        Ok(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{GOOD, problems};

    #[test]
    fn the_checkout_health_knobs_are_checked_and_a_group_agrees_on_them() {
        let text = GOOD.replace(
            "admit_rate_per_min = 600",
            "admit_rate_per_min = 600\ncontrol_interval_secs = 30\ncapacity_group = \"g\"",
        );
        let fields: Vec<String> = problems(&text).into_iter().map(|p| p.field).collect();
        assert_eq!(
            fields,
            ["rooms[0].control_interval_secs", "rooms[0].capacity_group"],
            "knobs without a target"
        );
        let text = GOOD.replace(
            "admit_rate_per_min = 600",
            "admit_rate_per_min = 600\nupstream_target_p95_ms = 5\nupstream_rate_floor_per_min = 0\ncontrol_interval_secs = 0\ncontrol_min_samples = 0",
        );
        let fields: Vec<String> = problems(&text).into_iter().map(|p| p.field).collect();
        for f in [
            "upstream_target_p95_ms",
            "upstream_rate_floor_per_min",
            "control_interval_secs",
            "control_min_samples",
        ] {
            assert!(fields.contains(&format!("rooms[0].{f}")), "{f}: {fields:?}");
        }
        let two = |second_target: u64| {
            format!(
                "{}\nupstream_target_p95_ms = 800\ncapacity_group = \"hall\"\n[[rooms]]\nid = \"b\"\nupstream = \"http://127.0.0.1:9091\"\npath_prefix = \"/b\"\nadmit_rate_per_min = 300\nupstream_target_p95_ms = {second_target}\ncapacity_group = \"hall\"\n",
                GOOD.trim_end()
            )
        };
        let p = problems(&two(900));
        assert_eq!(p[0].field, "rooms[1].capacity_group", "{p:?}");
        let c = crate::config::Config::from_toml_str(
            &two(800),
            &crate::config::EnvOverrides::default(),
        )
        .unwrap();
        let groups: Vec<_> = c
            .rooms
            .iter()
            .map(|r| r.capacity.as_ref().unwrap().group.as_str())
            .collect();
        assert_eq!(groups, ["hall", "hall"]);
    }
    use crate::config::{
        Config, DEFAULT_CLAIM_GRACE_SECS, DEFAULT_SESSION_SECS, EnvOverrides, QueueMode,
    };

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = Config::from_toml_str(GOOD, &EnvOverrides::default()).unwrap();
        let r = &c.rooms[0];
        assert_eq!(r.path_prefix, "/");
        assert_eq!(r.session_secs, DEFAULT_SESSION_SECS);
        assert_eq!(r.session_max_secs, DEFAULT_SESSION_SECS * 3);
        assert_eq!(r.queue, QueueMode::Always);
        assert_eq!(r.claim_grace_secs, DEFAULT_CLAIM_GRACE_SECS);
    }

    #[test]
    fn bad_room_id_and_duplicate_routes_are_refused() {
        let text = format!(
            "{GOOD}\n[[rooms]]\nid = \"bad id;\"\nupstream = \"http://127.0.0.1:1\"\nadmit_rate_per_min = 1\n"
        );
        let p = problems(&text);
        assert!(p.iter().any(|p| p.field == "rooms[1].id"), "{p:?}");
        assert!(p.iter().any(|p| p.field == "rooms[1].path_prefix"), "{p:?}");
    }

    #[test]
    fn route_paths_must_be_normal_and_hosts_are_names_without_ports() {
        let room = |extra: &str| {
            format!(
                "{GOOD}\n[[rooms]]\nid = \"r\"\nupstream = \"http://127.0.0.1:1\"\nadmit_rate_per_min = 1\n{extra}\n"
            )
        };
        for (extra, field) in [
            ("path_prefix = \"/shop/../admin\"", "rooms[1].path_prefix"),
            ("path_prefix = \"//shop\"", "rooms[1].path_prefix"),
            ("path_prefix = \"/%73hop\"", "rooms[1].path_prefix"),
            ("path_prefix = \"/shop;x\"", "rooms[1].path_prefix"),
            ("path_prefix = \"/a%2fb\"", "rooms[1].path_prefix"),
            (
                "exempt_paths = [\"/static/./\"]",
                "rooms[1].exempt_paths[0]",
            ),
            (
                "exempt_paths = [\"/st%61tic/\"]",
                "rooms[1].exempt_paths[0]",
            ),
            (
                "exempt_paths = [\"/static;v/\"]",
                "rooms[1].exempt_paths[0]",
            ),
            ("host = \"tickets.example:443\"", "rooms[1].host"),
            ("host = \"tickets..example\"", "rooms[1].host"),
            ("host = \"\"", "rooms[1].host"),
        ] {
            let p = problems(&room(extra));
            assert!(p.iter().any(|p| p.field == field), "{extra}: {p:?}");
        }
        let p = problems(&room("path_prefix = \"/%73hop\""));
        assert!(p[0].reason.contains("write \"/shop\""), "{p:?}");
        let text = room("host = \"Tickets.Example.\"\npath_prefix = \"/shop/\"");
        let c = Config::from_toml_str(&text, &EnvOverrides::default()).unwrap();
        assert_eq!(c.rooms[1].host.as_deref(), Some("tickets.example"));
        // Prefixes match ignoring case: two rooms differing only in case collide.
        let p = problems(&format!(
            "{}[[rooms]]\nid = \"s\"\nupstream = \"http://127.0.0.1:1\"\nadmit_rate_per_min = 1\npath_prefix = \"/SHOP/\"\n",
            room("path_prefix = \"/shop/\"")
        ));
        assert!(p.iter().any(|p| p.field == "rooms[2].path_prefix"), "{p:?}");
    }

    /// Regression (found by the property tests): a huge `session_secs`
    /// overflowed while deriving the default `session_max_secs`.
    #[test]
    fn huge_numbers_are_range_errors_not_overflows() {
        let text = GOOD.replace(
            "admit_rate_per_min = 600",
            "admit_rate_per_min = 600\nsession_secs = 18446744073709551615",
        );
        let fields: Vec<String> = problems(&text).into_iter().map(|p| p.field).collect();
        assert!(
            fields.contains(&"rooms[0].session_secs".to_string()),
            "{fields:?}"
        );
    }
}
