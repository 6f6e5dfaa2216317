//! Shared by the deployment tests (tests/deploy*.rs): the tools `deploy/local/deploy-tools`
//! installs, and small readers of what they print.

#![allow(dead_code)] // each test binary uses its own part

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use onceflow::config::Settings;
use serde_json::Value;

/// The stages a StatefulSet or a compose service runs.
pub const STAGES: [&str; 2] = ["process", "deliver"];

/// The repository.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The folder of the installed tools (installed once per test binary).
pub fn tools() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = Command::new(root().join("deploy/local/deploy-tools"))
            .stderr(Stdio::inherit())
            .output()
            .expect("deploy/local/deploy-tools runs");
        assert!(out.status.success(), "deploy/local/deploy-tools failed");
        let stdout = String::from_utf8(out.stdout).unwrap();
        PathBuf::from(stdout.lines().last().expect("a bin folder").trim())
    })
}

/// Runs tool `name` of [`tools`] in `dir`; its stdout, or a panic with everything it said.
pub fn run(name: &str, args: &[&str], dir: &Path) -> String {
    let out = Command::new(tools().join(name))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{name} runs: {e}"));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "{name} {args:?} failed:\n{stdout}\n{stderr}"
    );
    stdout
}

/// The settings file at `path` (from the repository), loaded by the real code.
pub fn load(path: &str) -> Settings {
    Settings::load(Some(&root().join(path))).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The port of a `metrics_listen`.
pub fn port(addr: Option<SocketAddr>) -> u16 {
    addr.expect("a metrics_listen").port()
}

/// `host:port` of an `http://host:port/...` URL.
pub fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap()
}

/// A JSON array of strings.
pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// The value of flag `flag` in `args`, as clap reads `--flag value` or `--flag=value`.
pub fn flag<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter().enumerate().find_map(|(i, a)| {
        if a == flag {
            args.get(i + 1).map(String::as_str)
        } else {
            a.strip_prefix(flag).and_then(|r| r.strip_prefix('='))
        }
    })
}
