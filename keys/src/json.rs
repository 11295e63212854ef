//! The JSON file format: parsing with field-level errors, and writing.

use crate::error::{Error, Warning, join};
use crate::hex::{self, HexError};
use crate::model::{ChannelKeys, KeyringFile};
use crate::{FORMAT_VERSION, Loaded};
use nomq::{KeyPair, Pattern};
use serde_json::{Map, Value};
use std::path::Path;
use zeroize::{Zeroize, Zeroizing};

const ENC: &str = "encryption_key";
const MAC: &str = "hmac_key";
const PREVIOUS: &str = "previous";
const CHANNELS: &str = "channels";
const PATTERN: &str = "pattern";
const VERSION: &str = "version";

const TOP_FIELDS: &[&str] = &[VERSION, ENC, MAC, PREVIOUS, CHANNELS];
const PAIR_FIELDS: &[&str] = &[ENC, MAC];
const CHANNEL_FIELDS: &[&str] = &[PATTERN, ENC, MAC, PREVIOUS];

const HEX_KEY: &str = "a string of 64 hex digits";

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Overwrites every string in a parsed document: some of them are secret keys.
fn scrub(v: &mut Value) {
    match v {
        Value::String(s) => s.zeroize(),
        Value::Array(a) => a.iter_mut().for_each(scrub),
        Value::Object(o) => o.values_mut().for_each(scrub),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

struct Parser<'a> {
    path: &'a Path,
    warnings: Vec<Warning>,
}

impl Parser<'_> {
    fn wrong_type(&self, field: String, expected: &'static str, found: &Value) -> Error {
        Error::WrongType { path: self.path.to_owned(), field, expected, found: kind(found) }
    }

    fn object<'v>(&self, v: &'v Value, field: &str) -> Result<&'v Map<String, Value>, Error> {
        v.as_object().ok_or_else(|| self.wrong_type(field.to_owned(), "an object", v))
    }

    /// An optional field: absent and `null` both mean "not given".
    fn optional<'v>(obj: &'v Map<String, Value>, name: &str) -> Option<&'v Value> {
        obj.get(name).filter(|v| !v.is_null())
    }

    fn required<'v>(
        &self,
        obj: &'v Map<String, Value>,
        prefix: &str,
        name: &str,
    ) -> Result<&'v Value, Error> {
        Self::optional(obj, name).ok_or_else(|| Error::MissingField {
            path: self.path.to_owned(),
            field: join(prefix, name),
        })
    }

    fn unknown_fields(&mut self, obj: &Map<String, Value>, prefix: &str, known: &[&str]) {
        for name in obj.keys().filter(|k| !known.contains(&k.as_str())) {
            let field = join(prefix, name);
            self.warnings.push(Warning::UnknownField { path: self.path.to_owned(), field });
        }
    }

    fn key(&self, obj: &Map<String, Value>, prefix: &str, name: &str) -> Result<[u8; 32], Error> {
        let v = self.required(obj, prefix, name)?;
        let field = join(prefix, name);
        let s = v.as_str().ok_or_else(|| self.wrong_type(field.clone(), HEX_KEY, v))?;
        hex::decode_key(s).map_err(|e| match e {
            HexError::BadDigit { position, found } => {
                Error::BadHex { path: self.path.to_owned(), field, position, found }
            }
            HexError::WrongLength { digits } => {
                Error::WrongLength { path: self.path.to_owned(), field, digits }
            }
        })
    }

    /// The key pair held directly in `obj` (whose JSON path is `prefix`).
    fn pair(&self, obj: &Map<String, Value>, prefix: &str) -> Result<KeyPair, Error> {
        let mut enc = self.key(obj, prefix, ENC)?;
        let mac = self.key(obj, prefix, MAC);
        let pair = mac.map(|mut mac| {
            let pair = KeyPair::new(enc, mac);
            mac.zeroize();
            pair
        });
        enc.zeroize();
        let pair = pair?;
        if pair.encryption == pair.mac {
            return Err(Error::SameKeys { path: self.path.to_owned(), field: prefix.to_owned() });
        }
        Ok(pair)
    }

    /// The optional `previous` pair inside `obj`.
    fn previous(
        &mut self,
        obj: &Map<String, Value>,
        prefix: &str,
    ) -> Result<Option<KeyPair>, Error> {
        let Some(v) = Self::optional(obj, PREVIOUS) else { return Ok(None) };
        let field = join(prefix, PREVIOUS);
        let inner = self.object(v, &field)?;
        self.unknown_fields(inner, &field, PAIR_FIELDS);
        self.pair(inner, &field).map(Some)
    }

    fn version(&self, root: &Map<String, Value>) -> Result<(), Error> {
        // Files without a version (like the reference implementation's) are version 1.
        let Some(v) = Self::optional(root, VERSION) else { return Ok(()) };
        match v {
            Value::Number(n) if n.as_u64() == Some(u64::from(FORMAT_VERSION)) => Ok(()),
            Value::Number(n) => {
                Err(Error::UnknownVersion { path: self.path.to_owned(), found: n.to_string() })
            }
            other => Err(self.wrong_type(VERSION.to_owned(), "an integer", other)),
        }
    }

    fn channel(&mut self, v: &Value, i: usize) -> Result<ChannelKeys, Error> {
        let prefix = format!("{CHANNELS}[{i}]");
        let obj = self.object(v, &prefix)?;
        self.unknown_fields(obj, &prefix, CHANNEL_FIELDS);
        let field = join(&prefix, PATTERN);
        let p = self.required(obj, &prefix, PATTERN)?;
        let pattern = p.as_str().ok_or_else(|| self.wrong_type(field.clone(), "a string", p))?;
        if let Err(error) = Pattern::new(pattern) {
            let pattern = pattern.to_owned();
            return Err(Error::BadPattern { path: self.path.to_owned(), field, pattern, error });
        }
        let current = self.pair(obj, &prefix)?;
        let previous = self.previous(obj, &prefix)?;
        Ok(ChannelKeys { pattern: pattern.to_owned(), current, previous })
    }

    fn keyring(&mut self, doc: &Value) -> Result<KeyringFile, Error> {
        let root = self.object(doc, "")?;
        self.version(root)?;
        self.unknown_fields(root, "", TOP_FIELDS);
        let network = self.pair(root, "")?;
        let previous = self.previous(root, "")?;
        let mut channels: Vec<ChannelKeys> = Vec::new();
        if let Some(v) = Self::optional(root, CHANNELS) {
            let list =
                v.as_array().ok_or_else(|| self.wrong_type(CHANNELS.into(), "an array", v))?;
            for (i, item) in list.iter().enumerate() {
                let entry = self.channel(item, i)?;
                if let Some(first) = channels.iter().position(|c| c.pattern == entry.pattern) {
                    return Err(Error::DuplicatePattern {
                        path: self.path.to_owned(),
                        field: format!("{CHANNELS}[{i}].{PATTERN}"),
                        pattern: entry.pattern.clone(),
                        first,
                    });
                }
                channels.push(entry);
            }
        }
        Ok(KeyringFile { network, previous, channels, source: None })
    }
}

/// Parses a keyring document; `path` only names the file in errors and warnings.
pub(crate) fn parse(json: &[u8], path: &Path) -> Result<Loaded, Error> {
    let mut doc: Value = serde_json::from_slice(json).map_err(|e| {
        let message = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        let message = message.strip_suffix(&suffix).unwrap_or(&message).to_owned();
        Error::Syntax { path: path.to_owned(), line: e.line(), column: e.column(), message }
    })?;
    let mut parser = Parser { path, warnings: Vec::new() };
    let parsed = parser.keyring(&doc);
    scrub(&mut doc);
    Ok(Loaded { keyring: parsed?, warnings: parser.warnings })
}

fn push_json_string(s: &str, out: &mut String) {
    // Serializing a `&str` cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

fn push_pair(pair: &KeyPair, indent: &str, out: &mut String) {
    out.push_str(indent);
    out.push_str("\"encryption_key\": \"");
    hex::encode_into(pair.encryption.expose(), out);
    out.push_str("\",\n");
    out.push_str(indent);
    out.push_str("\"hmac_key\": \"");
    hex::encode_into(pair.mac.expose(), out);
    out.push('"');
}

fn push_previous(previous: Option<&KeyPair>, indent: &str, out: &mut String) {
    if let Some(p) = previous {
        out.push_str(",\n");
        out.push_str(indent);
        out.push_str("\"previous\": {\n");
        push_pair(p, &format!("{indent}  "), out);
        out.push('\n');
        out.push_str(indent);
        out.push('}');
    }
}

/// Bytes [`emit`] reserves: enough for every document, so the buffer never grows.
fn capacity_for(ring: &KeyringFile) -> usize {
    // A pair is two lines of at most 8 spaces, a 16-character name and 64 digits; a
    // `previous` object adds its braces. JSON escapes a character in at most 6.
    let pair = 2 * (8 + 20 + 64 + 4) + 40;
    let channel = 2 * pair + 60;
    let patterns: usize = ring.channels.iter().map(|c| 6 * c.pattern.len()).sum();
    100 + 2 * pair + ring.channels.len() * channel + patterns
}

/// The document for a keyring, pretty-printed, in a buffer that is zeroized on drop.
pub(crate) fn emit(ring: &KeyringFile) -> Zeroizing<String> {
    // Reserved up front so that no reallocation leaves a copy of a key behind.
    let mut out = Zeroizing::new(String::with_capacity(capacity_for(ring)));
    out.push_str("{\n  \"version\": ");
    out.push_str(&FORMAT_VERSION.to_string());
    out.push_str(",\n");
    push_pair(&ring.network, "  ", &mut out);
    push_previous(ring.previous.as_ref(), "  ", &mut out);
    if !ring.channels.is_empty() {
        out.push_str(",\n  \"channels\": [");
        for (i, c) in ring.channels.iter().enumerate() {
            out.push_str(if i == 0 { "\n" } else { ",\n" });
            out.push_str("    {\n      \"pattern\": ");
            push_json_string(&c.pattern, &mut out);
            out.push_str(",\n");
            push_pair(&c.current, "      ", &mut out);
            push_previous(c.previous.as_ref(), "      ", &mut out);
            out.push_str("\n    }");
        }
        out.push_str("\n  ]");
    }
    out.push_str("\n}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emit_never_grows_its_buffer() {
        let pair = |e: u8| KeyPair::new([e; 32], [e ^ 0xff; 32]);
        let mut ring = KeyringFile::new(pair(1)).unwrap();
        let small = capacity_for(&ring);
        assert_eq!(emit(&ring).capacity(), small);
        ring.rotate_to(pair(2)).unwrap();
        // The longest pattern, every character escaped.
        let worst = "\u{1}".repeat(nomq::channel::MAX_NAME_LEN);
        let names = ["a/#".to_owned(), worst, "+/b".to_owned()];
        for (i, name) in names.iter().enumerate() {
            ring.set_channel(name, pair(10 + i as u8), Some(pair(20 + i as u8))).unwrap();
        }
        let out = emit(&ring);
        assert_eq!(out.capacity(), capacity_for(&ring), "buffer grew: {} bytes", out.len());
        let back = parse(out.as_bytes(), Path::new("mem")).unwrap();
        assert_eq!(back.warnings, []);
        assert_eq!(*emit(&back.keyring), *out);
    }
}
