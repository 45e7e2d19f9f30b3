//! The image cache under concurrency: two cordons that both find an empty
//! cache build (kernel download included) under one lock, both succeed and
//! leave one kernel and one image. Needs apt-get and the Debian mirror.

mod common;

use common::*;
use std::process::{Command, Stdio};

#[test]
fn test_image_two_concurrent_first_builds_both_succeed() {
    let cache = tempfile::tempdir().unwrap();
    let build = || {
        Command::new(cordon_bin())
            .env("CORDON_AGENT", static_agent_bin())
            .env("XDG_CACHE_HOME", cache.path())
            .args(["image", "build"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (build(), build());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    for out in [&a, &b] {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let id = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).split_whitespace().next().map(str::to_owned);
    assert_eq!(id(&a), id(&b), "both runs must use the same image");
    let entries = |d: &str| -> Vec<String> {
        std::fs::read_dir(cache.path().join("cordon").join(d))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(entries("images"), [id(&a).unwrap()], "one cache entry, no leftovers");
    assert_eq!(entries("kernels").len(), 1, "one kernel, no leftovers: {:?}", entries("kernels"));
    let both = format!("{}{}", String::from_utf8_lossy(&a.stderr), String::from_utf8_lossy(&b.stderr));
    assert_eq!(both.matches("building image").count(), 1, "only one of them builds: {both}");
}
