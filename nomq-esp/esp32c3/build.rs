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
/// The largest keyring file read (the host tool's limit).
const MAX_KEYS_FILE: u64 = 1 << 20;

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

/// Reads the network keys of a keyring file (`keys/src/json.rs` is the full format).
fn read_keys(path: &std::path::Path, shown: &str) -> Keys {
    use serde_json::Value;
    let meta = fs::metadata(path).unwrap_or_else(|e| {
        fail(&format!("NOMQ_KEYS={shown}: cannot read {}: {e}; {HINT}", path.display()))
    });
    if meta.len() > MAX_KEYS_FILE {
        fail(&format!("NOMQ_KEYS={shown}: {} is too large to be a keyring", path.display()));
    }
    let bytes = fs::read(path).unwrap_or_else(|e| {
        fail(&format!("NOMQ_KEYS={shown}: cannot read {}: {e}", path.display()))
    });
    // serde_json's syntax errors give a line and column, never the text around them.
    let root: Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| fail(&format!("NOMQ_KEYS={shown}: not a keyring JSON file: {e}")));
    let Value::Object(obj) = &root else {
        fail(&format!("NOMQ_KEYS={shown}: the keyring must be a JSON object"));
    };
    if let Some(v) = obj.get("version").filter(|v| !v.is_null())
        && v.as_u64() != Some(1)
    {
        fail(&format!(
            "NOMQ_KEYS={shown}: unsupported keyring format version (this build reads version 1)"
        ));
    }
    if let Some(Value::Array(ch)) = obj.get("channels")
        && !ch.is_empty()
    {
        fail(&format!(
            "NOMQ_KEYS={shown}: the keyring has channel keys; this firmware carries network keys only \
             (nomq::Keyring<0>): use a keyring without \"channels\""
        ));
    }
    let current = pair(obj, "", shown);
    let previous = match obj.get("previous") {
        None | Some(Value::Null) => None,
        Some(Value::Object(p)) => Some(pair(p, "previous.", shown)),
        Some(_) => fail(&format!("NOMQ_KEYS={shown}: \"previous\" must be an object")),
    };
    Keys { current, previous }
}

fn pair(obj: &serde_json::Map<String, serde_json::Value>, prefix: &str, shown: &str) -> Pair {
    let enc = hex_key(obj, prefix, "encryption_key", shown);
    let mac = hex_key(obj, prefix, "hmac_key", shown);
    if enc == mac {
        fail(&format!(
            "NOMQ_KEYS={shown}: {prefix}encryption_key and {prefix}hmac_key must differ"
        ));
    }
    (enc, mac)
}

fn hex_key(
    obj: &serde_json::Map<String, serde_json::Value>,
    prefix: &str,
    name: &str,
    shown: &str,
) -> [u8; 32] {
    let Some(serde_json::Value::String(s)) = obj.get(name) else {
        fail(&format!("NOMQ_KEYS={shown}: field {prefix}{name} is missing or not a string"));
    };
    let s = s.as_bytes();
    let bad =
        || -> ! { fail(&format!("NOMQ_KEYS={shown}: field {prefix}{name} must be 64 hex digits")) };
    if s.len() != 64 {
        bad();
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        let hi = (s[2 * i] as char).to_digit(16).unwrap_or_else(|| bad());
        let lo = (s[2 * i + 1] as char).to_digit(16).unwrap_or_else(|| bad());
        *byte = (hi * 16 + lo) as u8;
    }
    key
}
