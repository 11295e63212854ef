//! Build-time configuration of the firmware.
//!
//! Reads the environment variables below and writes `config.rs` into `OUT_DIR`, which
//! `src/main.rs` includes. A missing or malformed setting fails the build with a message
//! saying what to set. Key material is never printed: errors name the field, not its value.
//!
//! | variable             | required | meaning                                                    |
//! |----------------------|----------|------------------------------------------------------------|
//! | `NOMQ_WIFI_SSID`     | yes      | Wi-Fi network name (1..=32 bytes)                          |
//! | `NOMQ_WIFI_PASSWORD` | yes      | WPA2 passphrase (8..=63 bytes, or 64 hex digits), or empty for an open network |
//! | `NOMQ_KEYS`          | yes      | keyring JSON from `nomq keys gen --out keys.json`          |
//! | `NOMQ_DEVICE_ID`     | no       | device id, `[a-z0-9-]{1,16}` (default `c3`)                |
//! | `NOMQ_PORT`          | no       | UDP port (default 8888)                                    |
//! | `NOMQ_PEERS`         | no       | `ip:port,ip:port` static peers; empty: broadcast fan-out   |
//!
//! A relative `NOMQ_KEYS` path is taken relative to this crate's directory.

use std::fmt::Write as _;
use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::{env, fs, process};

const VARS: &[&str] = &[
    "NOMQ_WIFI_SSID",
    "NOMQ_WIFI_PASSWORD",
    "NOMQ_KEYS",
    "NOMQ_DEVICE_ID",
    "NOMQ_PORT",
    "NOMQ_PEERS",
];

/// The NoMQ default port.
const DEFAULT_PORT: u16 = 8888;
/// Static peers the firmware has room for (the node's peer table holds 8).
const MAX_PEERS: usize = 8;

const HINT: &str = "\
set, for example:
    nomq keys gen --out keys.json
    NOMQ_WIFI_SSID='my network' NOMQ_WIFI_PASSWORD='my passphrase' NOMQ_KEYS=$PWD/keys.json ./build.sh
(./build.sh with neither NOMQ_WIFI_SSID nor NOMQ_KEYS set makes a CI build with placeholder Wi-Fi
and the public keys of ci-keys.json: never deploy that)";

fn fail(msg: &str) -> ! {
    eprintln!("\nnomq-esp32c3 configuration error: {msg}\n");
    process::exit(1);
}

fn var(name: &str) -> Option<String> {
    match env::var(name) {
        Ok(v) => Some(v),
        Err(env::VarError::NotPresent) => None,
        Err(env::VarError::NotUnicode(_)) => fail(&format!("{name} is not valid UTF-8")),
    }
}

fn required(name: &str, what: &str) -> String {
    var(name).unwrap_or_else(|| fail(&format!("{name} is not set ({what}); {HINT}")))
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    for v in VARS {
        println!("cargo:rerun-if-env-changed={v}");
    }

    let ssid = required("NOMQ_WIFI_SSID", "the Wi-Fi network name");
    if ssid.is_empty() || ssid.len() > 32 {
        fail("NOMQ_WIFI_SSID must be 1 to 32 bytes long");
    }
    let password = required("NOMQ_WIFI_PASSWORD", "the WPA2 passphrase; empty for an open network");
    // 8..=63 characters, or a raw PSK as 64 hex digits.
    let raw_psk = password.len() == 64 && password.bytes().all(|b| b.is_ascii_hexdigit());
    if password.len() > 63 && !raw_psk {
        fail("NOMQ_WIFI_PASSWORD must be at most 63 bytes (a WPA2 passphrase) or 64 hex digits");
    }
    // A short one still builds (CI has no network to join), but no access point will take it.
    if !password.is_empty() && password.len() < 8 {
        println!(
            "cargo:warning=NOMQ_WIFI_PASSWORD is shorter than 8 bytes: WPA2 refuses it, so this \
             firmware will not join a network"
        );
    }

    let device_id = var("NOMQ_DEVICE_ID").filter(|s| !s.is_empty()).unwrap_or_else(|| "c3".into());
    if device_id.len() > 16
        || !device_id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        fail("NOMQ_DEVICE_ID must be 1 to 16 characters from [a-z0-9-]");
    }

    let port = match var("NOMQ_PORT").filter(|s| !s.trim().is_empty()) {
        None => DEFAULT_PORT,
        Some(s) => match s.trim().parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => fail(&format!("NOMQ_PORT must be a UDP port 1..=65535, not {s:?}")),
        },
    };

    let mut peers = Vec::new();
    for item in var("NOMQ_PEERS").unwrap_or_default().split(',') {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        match item.parse::<SocketAddrV4>() {
            Ok(a) if a.port() != 0 => peers.push(a),
            _ => fail(&format!(
                "NOMQ_PEERS entry {item:?} is not an IPv4 address with a port, such as 192.168.1.20:8888"
            )),
        }
    }
    if peers.len() > MAX_PEERS {
        fail(&format!(
            "NOMQ_PEERS lists {} peers; the firmware has room for {MAX_PEERS}",
            peers.len()
        ));
    }

    let keys_var = required("NOMQ_KEYS", "the path of a keyring JSON file");
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let keys_path = manifest_dir.join(&keys_var);
    println!("cargo:rerun-if-changed={}", keys_path.display());
    let keys = read_keys(&keys_path, &keys_var);

    let mut out = String::new();
    out.push_str(
        "// Generated by build.rs from NOMQ_* environment variables. Contains secret keys.\n",
    );
    writeln!(out, "/// Wi-Fi network name.\npub const WIFI_SSID: &str = {ssid:?};").unwrap();
    writeln!(out, "/// Wi-Fi passphrase; empty for an open network.\npub const WIFI_PASSWORD: &str = {password:?};").unwrap();
    writeln!(out, "/// Device id (`[a-z0-9-]`, at most 16 characters).\npub const DEVICE_ID: &str = {device_id:?};").unwrap();
    writeln!(out, "/// UDP port the node binds and sends to.\npub const PORT: u16 = {port};")
        .unwrap();
    out.push_str("/// Static peers; empty: broadcast fan-out to 255.255.255.255:PORT.\npub const PEERS: &[([u8; 4], u16)] = &[");
    for p in &peers {
        let [a, b, c, d] = p.ip().octets();
        write!(out, "([{a}, {b}, {c}, {d}], {}), ", p.port()).unwrap();
    }
    out.push_str("];\n");
    writeln!(
        out,
        "/// Network encryption key (AES-256).\npub const ENCRYPTION_KEY: [u8; 32] = {:?};",
        keys.current.0
    )
    .unwrap();
    writeln!(
        out,
        "/// Network MAC key (HMAC-SHA256).\npub const HMAC_KEY: [u8; 32] = {:?};",
        keys.current.1
    )
    .unwrap();
    match keys.previous {
        Some((e, m)) => writeln!(
            out,
            "/// The previous network keys, still accepted during a rotation.\npub const PREVIOUS: Option<([u8; 32], [u8; 32])> = Some(({e:?}, {m:?}));"
        )
        .unwrap(),
        None => out.push_str(
            "/// The previous network keys, still accepted during a rotation.\npub const PREVIOUS: Option<([u8; 32], [u8; 32])> = None;\n",
        ),
    }

    let dest = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("config.rs");
    fs::write(&dest, out)
        .unwrap_or_else(|e| fail(&format!("cannot write {}: {e}", dest.display())));
}

type Pair = ([u8; 32], [u8; 32]);

struct Keys {
    current: Pair,
    previous: Option<Pair>,
}

/// Reads the network keys of a keyring file with `nomq-keys`, the crate `nomq keys gen`
/// writes them with: the same checks and the same error messages (file, field, problem).
fn read_keys(path: &std::path::Path, shown: &str) -> Keys {
    let loaded = nomq_keys::KeyringFile::load(path)
        .unwrap_or_else(|e| fail(&format!("NOMQ_KEYS={shown}: {e}; {HINT}")));
    let ring = loaded.keyring;
    if !ring.channels().is_empty() {
        fail(&format!(
            "NOMQ_KEYS={shown}: the keyring has channel keys; this firmware carries network keys only \
             (nomq::Keyring<0>): use a keyring without \"channels\""
        ));
    }
    let pair = |p: &nomq_keys::KeyPair| (*p.encryption.expose(), *p.mac.expose());
    Keys { current: pair(ring.network()), previous: ring.previous().map(pair) }
}
