//! Keyring files on disk: round trips, permissions, and one test per error.

use nomq::{ChannelName, KeyLookup, KeyPair};
use nomq_keys::{Error, Fingerprint, KeyringFile, MAX_FILE_LEN, Warning};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("nomq-keys-test-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    /// Writes `content` to `name` with mode 0600 and returns its path.
    fn file(&self, name: &str, content: &str) -> PathBuf {
        let p = self.path(name);
        fs::write(&p, content).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        p
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A 64-digit hex key of one repeated byte.
fn k(b: u8) -> String {
    format!("{b:02x}").repeat(32)
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Loads a file that must fail, checks the message names the file and `needles`, returns it.
fn load_err(path: &Path, needles: &[&str]) -> Error {
    let err = KeyringFile::load(path).expect_err("load must fail");
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "message does not name the file: {msg}");
    for n in needles {
        assert!(msg.contains(n), "message lacks {n:?}: {msg}");
    }
    assert_eq!(err.path(), Some(path));
    err
}

/// A valid document with the network keys and then `rest` (which starts with a comma).
fn doc(rest: &str) -> String {
    format!(r#"{{"version": 1, "encryption_key": "{}", "hmac_key": "{}"{rest}}}"#, k(1), k(2))
}

fn channel(pattern: &str, enc: u8, mac: u8) -> String {
    format!(
        r#"{{"pattern": "{pattern}", "encryption_key": "{}", "hmac_key": "{}"}}"#,
        k(enc),
        k(mac)
    )
}

#[test]
fn round_trip_gen_save_load_to_core() {
    let dir = TempDir::new();
    let path = dir.path("ring.json");
    let mut ring = KeyringFile::generate().unwrap();
    ring.rotate().unwrap();
    ring.add_channel("secret/#").unwrap();
    ring.add_channel("ops/+").unwrap();
    ring.rotate_channel("ops/+").unwrap();
    ring.save(&path, false).unwrap();

    let loaded = KeyringFile::load(&path).unwrap();
    assert_eq!(loaded.warnings, []);
    let back = loaded.keyring;
    assert_eq!(back.fingerprints(), ring.fingerprints());
    assert_eq!(back.source(), Some(path.as_path()));
    // Same keys, not only same fingerprints: the documents are identical.
    assert_eq!(*back.to_json(), *ring.to_json());
    assert_eq!(back.network(), ring.network());

    let fps = ring.fingerprints();
    let core: nomq::Keyring<4> = back.to_core().unwrap();
    let net = core.network();
    assert_eq!(Fingerprint(net.current.fingerprint()), fps.network);
    assert_eq!(net.previous.map(|p| Fingerprint(p.fingerprint())), fps.previous);
    assert!(fps.previous.is_some());
    assert_eq!(core.scope_count(), 3);
    for (i, c) in fps.channels.iter().enumerate() {
        let scope = core.scope(nomq::keys::ScopeIndex(i as u8 + 1)).unwrap();
        assert_eq!(scope.pattern.unwrap().to_string(), c.pattern);
        assert_eq!(Fingerprint(scope.current.fingerprint()), c.current);
        assert_eq!(scope.previous.map(|p| Fingerprint(p.fingerprint())), c.previous);
    }
    assert!(fps.channels[0].previous.is_none());
    assert!(fps.channels[1].previous.is_some());
    let scope_of = |n| core.scope_for(ChannelName::new(n).unwrap()).0;
    assert_eq!(scope_of("secret/x"), 1);
    assert_eq!(scope_of("ops/x"), 2);
    assert_eq!(scope_of("public"), 0);
}

#[test]
fn saved_file_has_mode_0600_and_no_leftovers() {
    let dir = TempDir::new();
    let path = dir.path("ring.json");
    KeyringFile::generate().unwrap().save(&path, false).unwrap();
    assert_eq!(mode(&path), 0o600);
    // Replacing a loose file yields a strict one.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    KeyringFile::generate().unwrap().save(&path, true).unwrap();
    assert_eq!(mode(&path), 0o600);
    let names: Vec<_> = fs::read_dir(&dir.0).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["ring.json"], "temporary files left behind");
}

#[test]
fn refuses_to_overwrite_without_flag() {
    let dir = TempDir::new();
    let path = dir.path("ring.json");
    let first = KeyringFile::generate().unwrap();
    first.save(&path, false).unwrap();
    let second = KeyringFile::generate().unwrap();
    let err = second.save(&path, false).unwrap_err();
    assert!(matches!(err, Error::Exists { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()) && msg.contains("overwrite"), "{msg}");
    let kept = KeyringFile::load(&path).unwrap().keyring;
    assert_eq!(kept.fingerprints(), first.fingerprints(), "the file was changed");
    second.save(&path, true).unwrap();
    let replaced = KeyringFile::load(&path).unwrap().keyring;
    assert_eq!(replaced.fingerprints(), second.fingerprints());
    let names: Vec<_> = fs::read_dir(&dir.0).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["ring.json"], "temporary files left behind");
}

#[test]
fn loose_permissions_warn_but_load() {
    let dir = TempDir::new();
    let path = dir.file("ring.json", &doc(""));
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let loaded = KeyringFile::load(&path).unwrap();
    assert_eq!(loaded.warnings, [Warning::Permissions { path: path.clone(), mode: 0o644 }]);
    let msg = loaded.warnings[0].to_string();
    assert!(msg.contains(&path.display().to_string()) && msg.contains("0644"), "{msg}");
    // Group-writable only counts too; owner-only does not.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o620)).unwrap();
    assert_eq!(KeyringFile::load(&path).unwrap().warnings.len(), 1);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
    assert_eq!(KeyringFile::load(&path).unwrap().warnings, []);
}

#[test]
fn unknown_fields_warn_but_load() {
    let dir = TempDir::new();
    let body = format!(
        r#", "prevous": {{}}, "channels": [{{"pattern": "a", "encryption_key": "{}", "hmac_key": "{}", "colour": 1}}]"#,
        k(3),
        k(4)
    );
    let path = dir.file("ring.json", &doc(&body));
    let loaded = KeyringFile::load(&path).unwrap();
    let fields: Vec<_> = loaded
        .warnings
        .iter()
        .map(|w| match w {
            Warning::UnknownField { path: p, field } => {
                assert_eq!(p, &path);
                field.as_str()
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(fields, ["prevous", "channels[0].colour"]);
    assert!(loaded.warnings[0].to_string().contains(&path.display().to_string()));
    assert!(loaded.keyring.previous().is_none());
}

#[test]
fn rotation_keeps_previous() {
    let dir = TempDir::new();
    let path = dir.path("ring.json");
    let mut ring = KeyringFile::generate().unwrap();
    ring.add_channel("c/#").unwrap();
    let first = ring.fingerprints();
    ring.rotate().unwrap();
    ring.rotate_channel("c/#").unwrap();
    ring.save(&path, false).unwrap();

    let mut ring = KeyringFile::load(&path).unwrap().keyring;
    let second = ring.fingerprints();
    assert_ne!(second.network, first.network);
    assert_eq!(second.previous, Some(first.network));
    assert_eq!(second.channels[0].previous, Some(first.channels[0].current));
    assert_ne!(second.channels[0].current, first.channels[0].current);

    // A second rotation forgets the oldest keys.
    ring.rotate().unwrap();
    assert_eq!(ring.fingerprints().previous, Some(second.network));
    let core: nomq::Keyring<1> = ring.to_core().unwrap();
    assert_eq!(core.network().previous.map(|p| Fingerprint(p.fingerprint())), Some(second.network));

    ring.drop_previous();
    let ended = ring.fingerprints();
    assert!(ended.previous.is_none() && ended.channels[0].previous.is_none());
}

#[test]
fn reference_style_file_without_version_loads() {
    let dir = TempDir::new();
    let text = format!(
        r#"{{"encryption_key": "{}", "hmac_key": "{}", "previous": null, "channels": null}}"#,
        k(0xab).to_uppercase(),
        k(0xcd)
    );
    let path = dir.file("ref.json", &text);
    let ring = KeyringFile::load(&path).unwrap().keyring;
    assert_eq!(ring.network(), &KeyPair::new([0xab; 32], [0xcd; 32]));
    assert!(ring.previous().is_none() && ring.channels().is_empty());
}

#[test]
fn secrets_never_printed() {
    let dir = TempDir::new();
    let rest = format!(
        r#", "previous": {{"encryption_key": "{}", "hmac_key": "{}"}}, "channels": [{}]"#,
        k(0x5a),
        k(0x5b),
        channel("s/#", 0x6a, 0x6b)
    );
    let path = dir.file("ring.json", &doc(&rest));
    let loaded = KeyringFile::load(&path).unwrap();
    let shown = format!(
        "{:?} {:?} {} {:?}",
        loaded,
        loaded.keyring.channels()[0],
        loaded.keyring.fingerprints(),
        loaded.keyring.fingerprints()
    );
    for b in [1u8, 2, 0x5a, 0x5b, 0x6a, 0x6b] {
        let pattern = format!("{b:02x}{b:02x}{b:02x}{b:02x}");
        assert!(!shown.contains(&pattern), "key {b:#x} printed: {shown}");
        assert!(!shown.contains(&format!("{b}, {b}, {b}")), "key {b:#x} printed: {shown}");
    }
    assert!(shown.contains(&loaded.keyring.fingerprints().network.to_string()));
}

// ---- One test per error --------------------------------------------------------------

#[test]
fn error_io_unreadable_and_unwritable() {
    let dir = TempDir::new();
    let missing = dir.path("absent.json");
    let err = load_err(&missing, &["read"]);
    let Error::Io { error, .. } = &err else { panic!("{err:?}") };
    assert_eq!(error.kind(), std::io::ErrorKind::NotFound);

    let nowhere = dir.path("no-such-dir").join("ring.json");
    let err = KeyringFile::generate().unwrap().save(&nowhere, false).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(err.to_string().contains(&nowhere.display().to_string()), "{err}");
}

#[test]
fn error_too_large() {
    let dir = TempDir::new();
    let path = dir.file("big.json", &" ".repeat(MAX_FILE_LEN + 1));
    let err = load_err(&path, &["larger than"]);
    assert!(matches!(err, Error::TooLarge { .. }), "{err:?}");
}

#[test]
fn error_syntax_with_line_and_column() {
    let dir = TempDir::new();
    let path = dir.file("bad.json", "{\n  \"encryption_key\": \"aa\",\n  \"hmac_key\" }\n");
    let err = load_err(&path, &["not valid JSON", "line 3, column 14"]);
    let Error::Syntax { line, column, message, .. } = &err else { panic!("{err:?}") };
    assert_eq!((*line, *column), (3, 14));
    assert!(message.contains("expected `:`"), "{message}");
    assert!(!err.to_string().contains("line 3 column 14"), "position said twice: {err}");

    let empty = dir.file("empty.json", "");
    assert!(matches!(load_err(&empty, &["not valid JSON"]), Error::Syntax { .. }));
    let binary = dir.file("bin.json", "\u{feff}{}");
    assert!(matches!(load_err(&binary, &["not valid JSON"]), Error::Syntax { .. }));
}

#[test]
fn error_missing_field() {
    let dir = TempDir::new();
    let path = dir.file("a.json", &format!(r#"{{"encryption_key": "{}"}}"#, k(1)));
    let err = load_err(&path, &["missing field `hmac_key`"]);
    assert!(matches!(&err, Error::MissingField { field, .. } if field == "hmac_key"), "{err:?}");

    let rest = format!(
        r#", "channels": [{}, {{"pattern": "x", "encryption_key": "{}"}}]"#,
        channel("a", 3, 4),
        k(5)
    );
    let path = dir.file("b.json", &doc(&rest));
    load_err(&path, &["missing field `channels[1].hmac_key`"]);

    let rest =
        format!(r#", "channels": [{{"encryption_key": "{}", "hmac_key": "{}"}}]"#, k(5), k(6));
    let path = dir.file("c.json", &doc(&rest));
    load_err(&path, &["missing field `channels[0].pattern`"]);

    let path = dir.file("d.json", &doc(r#", "previous": {"hmac_key": null}"#));
    load_err(&path, &["missing field `previous.encryption_key`"]);
}

#[test]
fn error_wrong_type() {
    let dir = TempDir::new();
    let cases: &[(&str, String, &[&str])] = &[
        ("root.json", "[1, 2]".into(), &["the document must be an object, found an array"]),
        (
            "num.json",
            r#"{"encryption_key": 5}"#.into(),
            &["`encryption_key` must be a string of 64 hex digits, found a number"],
        ),
        (
            "chan.json",
            doc(r#", "channels": {}"#),
            &["`channels` must be an array, found an object"],
        ),
        (
            "item.json",
            doc(r#", "channels": ["a/#"]"#),
            &["`channels[0]` must be an object, found a string"],
        ),
        (
            "pat.json",
            doc(r#", "channels": [{"pattern": 7}]"#),
            &["`channels[0].pattern` must be a string, found a number"],
        ),
        (
            "prev.json",
            doc(r#", "previous": true"#),
            &["`previous` must be an object, found a boolean"],
        ),
        (
            "ver.json",
            r#"{"version": "1"}"#.into(),
            &["`version` must be an integer, found a string"],
        ),
    ];
    for (name, text, needles) in cases {
        let path = dir.file(name, text);
        let err = load_err(&path, needles);
        assert!(matches!(err, Error::WrongType { .. }), "{err:?}");
    }
}

#[test]
fn error_bad_hex_names_position() {
    let dir = TempDir::new();
    let mut bad = k(7);
    bad.replace_range(17..18, "g");
    let rest = format!(
        r#", "channels": [{{"pattern": "a", "encryption_key": "{}", "hmac_key": "{}", "previous": {{"encryption_key": "{bad}", "hmac_key": "{}"}}}}]"#,
        k(3),
        k(4),
        k(8)
    );
    let path = dir.file("ring.json", &doc(&rest));
    let err = load_err(&path, &["`channels[0].previous.encryption_key`", "'g'", "position 17"]);
    assert!(
        matches!(&err, Error::BadHex { position: 17, found: 'g', field, .. } if field == "channels[0].previous.encryption_key"),
        "{err:?}"
    );
    // The message does not echo the rest of the key.
    assert!(!err.to_string().contains("0707"), "{err}");

    // Base64 pasted where hex belongs.
    let text = format!(
        r#"{{"encryption_key": "{}", "hmac_key": "q83vASNFZ4mrze8BI0VniavN7wEjRWeJq83vASNFZ4k="}}"#,
        k(1)
    );
    let path = dir.file("b64.json", &text);
    load_err(&path, &["`hmac_key`", "'q'", "position 0"]);
}

#[test]
fn error_wrong_length() {
    let dir = TempDir::new();
    let text = format!(r#"{{"encryption_key": "{}", "hmac_key": "{}"}}"#, k(1), "ab".repeat(31));
    let path = dir.file("short.json", &text);
    let err = load_err(&path, &["`hmac_key`", "got 31 bytes", "need 32 bytes"]);
    assert!(matches!(err, Error::WrongLength { digits: 62, .. }), "{err:?}");

    let text = format!(r#"{{"encryption_key": "{}", "hmac_key": "{}"}}"#, "a".repeat(65), k(2));
    let path = dir.file("odd.json", &text);
    load_err(&path, &["`encryption_key`", "65 hex digits", "need 32 bytes"]);

    let rest = format!(
        r#", "channels": [{{"pattern": "a", "encryption_key": "", "hmac_key": "{}"}}]"#,
        k(2)
    );
    let path = dir.file("empty.json", &doc(&rest));
    load_err(&path, &["`channels[0].encryption_key`", "got 0 bytes"]);
}

#[test]
fn error_same_keys() {
    let dir = TempDir::new();
    let text = format!(r#"{{"encryption_key": "{}", "hmac_key": "{}"}}"#, k(9), k(9));
    let path = dir.file("net.json", &text);
    let err = load_err(&path, &["`encryption_key` equals `hmac_key`"]);
    assert!(matches!(&err, Error::SameKeys { field, .. } if field.is_empty()), "{err:?}");

    let rest = format!(r#", "previous": {{"encryption_key": "{}", "hmac_key": "{}"}}"#, k(9), k(9));
    let path = dir.file("prev.json", &doc(&rest));
    load_err(&path, &["`previous.encryption_key` equals `previous.hmac_key`"]);

    let rest = format!(r#", "channels": [{}, {}]"#, channel("a", 3, 4), channel("b", 5, 5));
    let path = dir.file("chan.json", &doc(&rest));
    load_err(&path, &["`channels[1].encryption_key` equals `channels[1].hmac_key`"]);
}

#[test]
fn error_bad_pattern_shows_core_reason() {
    let dir = TempDir::new();
    let rest = format!(r#", "channels": [{}, {}]"#, channel("a/+", 3, 4), channel("a/#/b", 5, 6));
    let path = dir.file("ring.json", &doc(&rest));
    let reason = nomq::Pattern::new("a/#/b").unwrap_err().to_string();
    let err = load_err(&path, &["`channels[1].pattern`", "\"a/#/b\"", &reason]);
    assert!(matches!(err, Error::BadPattern { .. }), "{err:?}");

    let rest = format!(r#", "channels": [{}]"#, channel("", 3, 4));
    let path = dir.file("empty.json", &doc(&rest));
    load_err(&path, &["`channels[0].pattern`", "empty"]);
}

#[test]
fn error_duplicate_pattern() {
    let dir = TempDir::new();
    let rest = format!(
        r#", "channels": [{}, {}, {}]"#,
        channel("a/#", 3, 4),
        channel("b", 5, 6),
        channel("a/#", 7, 8)
    );
    let path = dir.file("ring.json", &doc(&rest));
    let err = load_err(&path, &["`channels[2].pattern`", "\"a/#\"", "`channels[0]`"]);
    assert!(matches!(err, Error::DuplicatePattern { first: 0, .. }), "{err:?}");
}

#[test]
fn error_unknown_version() {
    let dir = TempDir::new();
    let text = format!(r#"{{"version": 2, "encryption_key": "{}", "hmac_key": "{}"}}"#, k(1), k(2));
    let path = dir.file("v2.json", &text);
    let err = load_err(&path, &["`version` 2", "version 1"]);
    assert!(matches!(&err, Error::UnknownVersion { found, .. } if found == "2"), "{err:?}");
    // The version is checked before anything else in the document.
    let path = dir.file("v0.json", r#"{"version": 0}"#);
    load_err(&path, &["`version` 0"]);
}

#[test]
fn error_too_many_channels_for_core() {
    let dir = TempDir::new();
    let rest = format!(
        r#", "channels": [{}, {}, {}]"#,
        channel("a", 3, 4),
        channel("b", 5, 6),
        channel("c", 7, 8)
    );
    let path = dir.file("ring.json", &doc(&rest));
    let ring = KeyringFile::load(&path).unwrap().keyring;
    assert!(ring.to_core::<3>().is_ok());
    let err = ring.to_core::<2>().unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("3 channel entries") && msg.contains("at most 2"), "{msg}");
    assert!(matches!(err, Error::TooManyChannels { channels: 3, capacity: 2, .. }), "{err:?}");

    // Built in memory, the message says so instead of naming a file.
    let mut mem = KeyringFile::generate().unwrap();
    mem.add_channel("x").unwrap();
    let err = mem.to_core::<0>().unwrap_err();
    assert_eq!(err.path(), None);
    assert!(err.to_string().starts_with("keyring: 1 channel entry, "), "{err}");
}

/// Two different pairs whose key ids collide (found by search: encryption keys the
/// big-endian counters 2440 and 2729 then zeros, MAC key `0x55` throughout) load, but the
/// core keyring refuses them, and `to_core` says why instead of panicking.
#[test]
fn error_key_id_collision_for_core() {
    let enc = |i: u32| {
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&i.to_be_bytes());
        k
    };
    let (a, b) = (KeyPair::new(enc(2440), [0x55; 32]), KeyPair::new(enc(2729), [0x55; 32]));
    assert_eq!(nomq::KeySet::new(&a).key_id(), nomq::KeySet::new(&b).key_id());
    let mut ring = KeyringFile::new(a).unwrap();
    ring.set_previous(Some(b)).unwrap();
    let err = ring.to_core::<0>().unwrap_err();
    assert!(matches!(err, Error::KeyIdCollision { path: None }), "{err:?}");
    assert!(
        err.to_string().starts_with("keyring: two different key pairs have the same key id"),
        "{err}"
    );
}

/// A directory or a FIFO given as keyring fails at once, naming what it is (a FIFO opened
/// for reading would block until a writer came).
#[test]
fn special_files_are_refused_without_blocking() {
    let dir = TempDir::new();
    let e = load_err(&dir.0, &["a directory", "not a regular file"]);
    assert!(matches!(e, Error::NotAFile { .. }), "{e:?}");
    let fifo = dir.path("fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("SKIP the FIFO half: mkfifo unavailable");
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let path = fifo.clone();
    std::thread::spawn(move || {
        let _ = tx.send(KeyringFile::load(&path).map(|_| ()));
    });
    let r = rx.recv_timeout(std::time::Duration::from_secs(10)).expect("load blocked on a FIFO");
    let e = r.expect_err("a FIFO is no keyring");
    assert!(e.to_string().contains("FIFO"), "{e}");
}

// ---- Cases the serde-based parser must get right ---------------------------------------

#[test]
fn unknown_fields_in_nested_objects_warn_in_file_order() {
    let dir = TempDir::new();
    let rest = format!(
        r#", "previous": {{"encryption_key": "{}", "hmac_key": "{}", "note": "x"}}, "channels": [{}, {{"pattern": "b", "encryption_key": "{}", "hmac_key": "{}", "previous": {{"encryption_key": "{}", "hmac_key": "{}", "extra": [1, {{"deep": 2}}]}}}}], "zzz": null"#,
        k(5),
        k(6),
        channel("a", 3, 4),
        k(7),
        k(8),
        k(9),
        k(10)
    );
    let path = dir.file("ring.json", &doc(&rest));
    let loaded = KeyringFile::load(&path).unwrap();
    let want: Vec<Warning> = ["previous.note", "channels[1].previous.extra", "zzz"]
        .iter()
        .map(|f| Warning::UnknownField { path: path.clone(), field: (*f).to_owned() })
        .collect();
    assert_eq!(loaded.warnings, want);
    assert_eq!(
        loaded.warnings[1].to_string(),
        format!(
            "keyring file {}: unknown field `channels[1].previous.extra` ignored",
            path.display()
        )
    );
    // The known fields around the unknown ones were read.
    let ring = loaded.keyring;
    assert_eq!(ring.previous(), Some(&KeyPair::new([5; 32], [6; 32])));
    assert_eq!(ring.channels()[1].previous(), Some(&KeyPair::new([9; 32], [10; 32])));
}

#[test]
fn error_wrong_type_in_nested_fields() {
    let dir = TempDir::new();
    let rest = format!(
        r#", "channels": [{}, {{"pattern": "b", "encryption_key": "{}", "hmac_key": "{}", "previous": {{"encryption_key": "{}", "hmac_key": 12}}}}]"#,
        channel("a", 3, 4),
        k(5),
        k(6),
        k(7)
    );
    let path = dir.file("nested.json", &doc(&rest));
    let err = load_err(
        &path,
        &["`channels[1].previous.hmac_key` must be a string of 64 hex digits, found a number"],
    );
    assert!(
        matches!(&err, Error::WrongType { field, expected: "a string of 64 hex digits", found: "a number", .. }
            if field == "channels[1].previous.hmac_key"),
        "{err:?}"
    );

    // Objects where a string belongs, arrays where an object belongs, null in a list.
    let cases = [
        (
            r#", "channels": [{"pattern": {"a": 1}}]"#,
            "`channels[0].pattern` must be a string, found an object",
        ),
        (r#", "channels": [null]"#, "`channels[0]` must be an object, found null"),
        (
            r#", "channels": [{"pattern": "a", "previous": [1, 2]}]"#,
            "`channels[0].previous` must be an object, found an array",
        ),
        (r#", "previous": 1.5"#, "`previous` must be an object, found a number"),
        (r#", "channels": "a/#""#, "`channels` must be an array, found a string"),
    ];
    for (i, (rest, needle)) in cases.iter().enumerate() {
        let path = dir.file(&format!("case{i}.json"), &doc(rest));
        let err = load_err(&path, &[needle]);
        assert!(matches!(err, Error::WrongType { .. }), "{err:?}");
    }
    // A derived struct would take an array of its fields in order; a keyring file has none.
    let text = format!(r#"["{}", "{}"]"#, k(1), k(2));
    let path = dir.file("array.json", &text);
    load_err(&path, &["the document must be an object, found an array"]);
}

#[test]
fn a_key_in_the_wrong_place_is_not_echoed() {
    let dir = TempDir::new();
    // A key pasted where the `previous` object belongs, and one with a typo.
    let rest = format!(r#", "previous": "{}""#, k(0x5c));
    let path = dir.file("prev.json", &doc(&rest));
    let err = load_err(&path, &["`previous` must be an object, found a string"]);
    assert!(!err.to_string().contains("5c5c"), "{err}");
    let mut bad = k(0x5d);
    bad.replace_range(40..41, "x");
    let text = format!(r#"{{"encryption_key": "{bad}", "hmac_key": "{}"}}"#, k(2));
    let path = dir.file("hex.json", &text);
    let err = load_err(&path, &["`encryption_key` is not hex", "'x'", "position 40"]);
    assert!(!err.to_string().contains("5d5d") && !format!("{err:?}").contains("5d5d"), "{err}");
}

#[test]
fn error_bad_hex_in_a_channel_key() {
    let dir = TempDir::new();
    let rest = format!(
        r#", "channels": [{}, {{"pattern": "b", "encryption_key": "{}", "hmac_key": "{}"}}]"#,
        channel("a", 3, 4),
        "zz".repeat(32),
        k(6)
    );
    let path = dir.file("ring.json", &doc(&rest));
    let err = load_err(&path, &["`channels[1].encryption_key` is not hex", "'z'", "position 0"]);
    assert!(matches!(err, Error::BadHex { position: 0, found: 'z', .. }), "{err:?}");
}

#[test]
fn error_missing_field_null_counts_as_absent() {
    let dir = TempDir::new();
    let text = format!(r#"{{"encryption_key": "{}", "hmac_key": null}}"#, k(1));
    let path = dir.file("null.json", &text);
    let err = load_err(&path, &["missing field `hmac_key`"]);
    assert!(matches!(&err, Error::MissingField { field, .. } if field == "hmac_key"), "{err:?}");
    let rest = r#", "channels": [{"pattern": null, "encryption_key": null}]"#;
    let path = dir.file("chan.json", &doc(rest));
    load_err(&path, &["missing field `channels[0].pattern`"]);
    let path = dir.file("empty.json", "{}");
    load_err(&path, &["missing field `encryption_key`"]);
}

#[test]
fn error_field_given_twice() {
    let dir = TempDir::new();
    let rest = format!(r#", "previous": {{"hmac_key": "{}", "hmac_key": "{}"}}"#, k(3), k(4));
    let path = dir.file("ring.json", &doc(&rest));
    let err = load_err(&path, &["duplicate field `hmac_key` in `previous`"]);
    assert!(matches!(&err, Error::Content { field, .. } if field == "previous"), "{err:?}");
    assert!(!err.to_string().contains("0303"), "{err}");
    let text = format!(r#"{{"encryption_key": "{}", "encryption_key": "{}"}}"#, k(1), k(2));
    let path = dir.file("root.json", &text);
    load_err(&path, &["duplicate field `encryption_key` in the document"]);
}

#[test]
fn version_and_syntax_are_checked_before_the_rest() {
    let dir = TempDir::new();
    // The bad key comes first in the file, but the version decides how to read it.
    let path = dir.file("v2.json", r#"{"encryption_key": "zz", "channels": 5, "version": 2}"#);
    let err = load_err(&path, &["unsupported `version` 2"]);
    assert!(matches!(err, Error::UnknownVersion { .. }), "{err:?}");
    let path = dir.file("float.json", r#"{"version": 1.0}"#);
    let err = load_err(&path, &["unsupported `version` 1.0"]);
    assert!(matches!(&err, Error::UnknownVersion { found, .. } if found == "1.0"), "{err:?}");
    let path = dir.file("neg.json", r#"{"version": -1}"#);
    load_err(&path, &["unsupported `version` -1"]);
    // A syntax error late in the file wins over a content error early in it.
    let path = dir.file("late.json", "{\"encryption_key\": 5,\n \"hmac_key\": tru}");
    let err = load_err(&path, &["not valid JSON", "line 2"]);
    assert!(matches!(err, Error::Syntax { line: 2, .. }), "{err:?}");
    // Even when the version before it is wrong.
    let path = dir.file("cut.json", r#"{"version": 2, "encryption_key": "ab"#);
    let err = load_err(&path, &["not valid JSON"]);
    assert!(matches!(err, Error::Syntax { .. }), "{err:?}");
    let text = format!("{} x", doc(""));
    let path = dir.file("trailing.json", &text);
    let err = load_err(&path, &["not valid JSON", "trailing characters"]);
    assert!(matches!(err, Error::Syntax { .. }), "{err:?}");
}

/// The exact texts of the messages whose wording is assembled from parts.
#[test]
fn message_texts() {
    let dir = TempDir::new();
    let text = format!(r#"{{"encryption_key": "{}", "hmac_key": "{}"}}"#, k(1), "ab".repeat(31));
    let path = dir.file("short.json", &text);
    assert_eq!(
        load_err(&path, &[]).to_string(),
        format!(
            "keyring file {}: `hmac_key` has the wrong length: got 31 bytes (62 hex digits), \
             need 32 bytes (64 hex digits)",
            path.display()
        )
    );
    let text = format!(r#"{{"encryption_key": "{}", "hmac_key": "{}"}}"#, k(1), "a".repeat(63));
    let path = dir.file("odd.json", &text);
    assert_eq!(
        load_err(&path, &[]).to_string(),
        format!(
            "keyring file {}: `hmac_key` has the wrong length: got 63 hex digits (an odd \
             number), need 32 bytes (64 hex digits)",
            path.display()
        )
    );
    let path = dir.file("loose.json", &doc(""));
    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
    let p = path.display();
    assert_eq!(
        KeyringFile::load(&path).unwrap().warnings[0].to_string(),
        format!(
            "keyring file {p} is accessible by group or others (mode 0640); restrict it with \
             `chmod 600 {p}`"
        )
    );
    let path = dir.file("root.json", "7");
    assert_eq!(
        load_err(&path, &[]).to_string(),
        format!("keyring file {}: the document must be an object, found a number", path.display())
    );
}
