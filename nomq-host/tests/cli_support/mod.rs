//! Helpers of the tests that run the `nomq` binary: scratch directories, bounded waits,
//! free loopback ports. Every node binds 127.0.0.1; nothing relies on broadcast.

#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const NOMQ: &str = env!("CARGO_BIN_EXE_nomq");

/// A scratch directory, removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("nomq-cliv-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    pub fn dir(&self) -> &Path {
        &self.0
    }
    pub fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
    /// A fresh keyring file; returns its path as a string.
    pub fn keys(&self, file: &str) -> String {
        let p = self.path(file);
        let out = run(self, &["keys", "gen", "--out", p.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        p.to_str().unwrap().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `nomq` with a clean environment (no `NOMQ_*` variables) in the scratch directory.
pub fn nomq(dir: &Scratch, args: &[&str]) -> Command {
    let mut c = Command::new(NOMQ);
    c.args(args).current_dir(&dir.0).stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("NOMQ_") || k == "RUST_LOG" {
            c.env_remove(k);
        }
    }
    c
}

pub fn run(dir: &Scratch, args: &[&str]) -> Output {
    run_cmd(nomq(dir, args))
}

pub fn run_cmd(mut c: Command) -> Output {
    let child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    finish(child, Duration::from_secs(20))
}

pub fn spawn(dir: &Scratch, args: &[&str]) -> Child {
    nomq(dir, args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

/// Waits for the process, killing it past `limit`.
pub fn finish(mut child: Child, limit: Duration) -> Output {
    let end = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= end {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("nomq still running after {limit:?}; stderr: {}", text(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Exit code, stdout and stderr; and never a panic (exit 101).
pub fn outcome(out: &Output) -> (Option<i32>, String, String) {
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(out.status.code(), Some(101), "a panic: {stderr}");
    (out.status.code(), stdout, stderr)
}

/// Free loopback ports (bound, then released).
pub fn ports<const N: usize>() -> [SocketAddr; N] {
    let socks: Vec<UdpSocket> = (0..N).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    std::array::from_fn(|i| socks[i].local_addr().unwrap())
}

/// Waits until a process has bound `addr`.
pub fn until_bound(addr: SocketAddr) {
    let end = Instant::now() + Duration::from_secs(10);
    while UdpSocket::bind(addr).is_ok() {
        assert!(Instant::now() < end, "nothing bound {addr}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn s(a: &SocketAddr) -> String {
    a.to_string()
}

/// Makes a FIFO; `None` where `mkfifo` is unavailable.
pub fn fifo(dir: &Scratch, name: &str) -> Option<PathBuf> {
    let p = dir.path(name);
    let ok = Command::new("mkfifo").arg(&p).status().is_ok_and(|s| s.success());
    ok.then_some(p)
}
