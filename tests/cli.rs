//! The command line as an operator meets it.

use std::process::Command;

fn waitroom(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_waitroom"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_shipped_example_config_checks_clean() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/waitroom.toml");
    let (code, out, _) = waitroom(&["check-config", path]);
    assert_eq!(code, 0);
    assert!(out.contains("ok"), "{out}");
}

#[test]
fn check_config_lists_every_problem_with_its_field_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[listen]\npublic = \"nope\"\nadmin = \"127.0.0.1:1\"\n[[rooms]]\nid = \"a b\"\nupstream = \"http://127.0.0.1:1\"\nadmit_rate_per_min = 0\n",
    )
    .unwrap();
    let (code, _, err) = waitroom(&["check-config", path.to_str().unwrap()]);
    assert_eq!(code, 64);
    for field in [
        "listen.public",
        "admin.token",
        "signing.keys",
        "rooms[0].id",
        "rooms[0].admit_rate_per_min",
    ] {
        assert!(err.contains(field), "{field} missing from:\n{err}");
    }
    let (code, _, err) = waitroom(&["check-config", "/nonexistent/waitroom.toml"]);
    assert_eq!(code, 66);
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn verify_shuffle_checks_the_commitment_and_recomputes_the_order() {
    let seed = "00".repeat(32);
    let commitment = "66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925";
    let (code, out, _) = waitroom(&[
        "verify-shuffle",
        "--seed",
        &seed,
        "--entries",
        "5",
        "--commitment",
        commitment,
    ]);
    assert_eq!(code, 0);
    assert!(out.starts_with("commitment ok"), "{out}");
    let places: Vec<&str> = out.lines().skip(2).collect();
    assert_eq!(places.len(), 5);
    let (code, out, _) = waitroom(&[
        "verify-shuffle",
        "--seed",
        &seed,
        "--entries",
        "5",
        "--seq",
        "3",
    ]);
    assert_eq!(code, 0);
    assert!(out.contains("sequence number 3 is at place"), "{out}");
    let (code, out, _) = waitroom(&[
        "verify-shuffle",
        "--seed",
        &seed,
        "--entries",
        "5",
        "--commitment",
        "beef",
    ]);
    assert_eq!(code, 1);
    assert!(out.contains("MISMATCH"), "{out}");
    let (code, _, err) = waitroom(&["verify-shuffle", "--seed", "xyz", "--entries", "5"]);
    assert_eq!(code, 64);
    assert!(err.contains("--seed"), "{err}");
}
