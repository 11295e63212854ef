//! The JSON file format: parsing with field-level errors, and writing.
//!
//! Parsing is serde's: the document deserializes into the `*Doc` structs below, whose
//! leaves ([`Key`], [`PatternText`], [`Version`]) and containers ([`Object`], [`List`])
//! check their value as it is read. `serde_path_to_error` names the field of a failure,
//! `serde_ignored` reports unknown fields (warnings, not errors). What a single value
//! cannot tell — a required field that is absent, equal keys, a repeated pattern — is
//! checked afterwards, in [`Checker`].
//!
//! [`parse`] reads the text three times (a keyring file is small): for the syntax only,
//! then for `version` only, then for everything. So a syntax error anywhere is reported
//! before any content error, and a wrong version before any other; content errors come
//! in document order.

use crate::error::{Error, Warning, join};
use crate::hex::{self, HexError, KEY_LEN};
use crate::model::{ChannelKeys, KeyringFile};
use crate::{FORMAT_VERSION, Loaded};
use nomq::{ChannelError, KeyPair, Pattern};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Number;
use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::path::Path;
use zeroize::{Zeroize, Zeroizing};

const ENC: &str = "encryption_key";
const MAC: &str = "hmac_key";
const PREVIOUS: &str = "previous";
const CHANNELS: &str = "channels";
const PATTERN: &str = "pattern";

/// What is wrong with one value, as its leaf found it.
#[derive(Debug)]
enum Problem {
    WrongType { expected: &'static str, found: &'static str },
    BadHex { position: usize, found: char },
    WrongLength { digits: usize },
    BadPattern { pattern: String, error: ChannelError },
    UnknownVersion { found: String },
}

impl fmt::Display for Problem {
    // Only the text inside serde's error; the user sees the `Error` built from the problem.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WrongType { expected, found } => write!(f, "must be {expected}, found {found}"),
            Self::BadHex { position, .. } => write!(f, "not a hex digit at position {position}"),
            Self::WrongLength { digits } => write!(f, "{digits} hex digits instead of 64"),
            Self::BadPattern { error, .. } => write!(f, "not a valid channel pattern: {error}"),
            Self::UnknownVersion { found } => write!(f, "unsupported version {found}"),
        }
    }
}

impl Problem {
    fn into_error(self, path: &Path, field: String) -> Error {
        let path = path.to_owned();
        match self {
            Self::WrongType { expected, found } => {
                Error::WrongType { path, field, expected, found }
            }
            Self::BadHex { position, found } => Error::BadHex { path, field, position, found },
            Self::WrongLength { digits } => Error::WrongLength { path, field, digits },
            Self::BadPattern { pattern, error } => {
                Error::BadPattern { path, field, pattern, error }
            }
            Self::UnknownVersion { found } => Error::UnknownVersion { path, found },
        }
    }
}

std::thread_local! {
    /// The problem behind the latest failure of a leaf on this thread. A serde error
    /// carries only text, so the leaf leaves the structured problem here and [`parse`],
    /// which runs the whole deserialization on this thread, takes it when the error
    /// arrives (and clears it before it starts).
    static PROBLEM: Cell<Option<Problem>> = const { Cell::new(None) };
}

/// The serde error for `problem`, whose structure waits in [`PROBLEM`].
fn fail<E: de::Error>(problem: Problem) -> E {
    let error = E::custom(&problem);
    PROBLEM.set(Some(problem));
    error
}

/// A value that checks itself as it is deserialized, refusing other JSON kinds with
/// [`Problem::WrongType`]. Read through [`Expect`], which hands it every kind of value.
trait Leaf<'de>: Sized {
    /// What the value must be: "must be EXPECTED, found …".
    const EXPECTED: &'static str;

    fn wrong(found: &'static str) -> Problem {
        Problem::WrongType { expected: Self::EXPECTED, found }
    }
    fn from_str(_: &str) -> Result<Self, Problem> {
        Err(Self::wrong("a string"))
    }
    fn from_number(_: Number) -> Result<Self, Problem> {
        Err(Self::wrong("a number"))
    }
    fn from_map<A: MapAccess<'de>>(_: A) -> Result<Self, A::Error> {
        Err(fail(Self::wrong("an object")))
    }
    fn from_seq<A: SeqAccess<'de>>(_: A) -> Result<Self, A::Error> {
        Err(fail(Self::wrong("an array")))
    }
}

/// The visitor of every [`Leaf`]: it asks for any value (so that a wrong kind still
/// reaches it and can be named) and passes it on.
struct Expect<L>(PhantomData<L>);

fn expect<'de, L: Leaf<'de>, D: Deserializer<'de>>(d: D) -> Result<L, D::Error> {
    d.deserialize_any(Expect(PhantomData))
}

impl<'de, L: Leaf<'de>> Visitor<'de> for Expect<L> {
    type Value = L;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(L::EXPECTED)
    }
    fn visit_unit<E: de::Error>(self) -> Result<L, E> {
        Err(fail(L::wrong("null")))
    }
    fn visit_none<E: de::Error>(self) -> Result<L, E> {
        Err(fail(L::wrong("null")))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<L, E> {
        Err(fail(L::wrong("a boolean")))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<L, E> {
        L::from_number(v.into()).map_err(fail)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<L, E> {
        L::from_number(v.into()).map_err(fail)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<L, E> {
        // JSON has no NaN or infinity, so `from_f64` always succeeds here.
        Number::from_f64(v).map_or(Err(L::wrong("a number")), L::from_number).map_err(fail)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<L, E> {
        L::from_str(v).map_err(fail)
    }
    fn visit_string<E: de::Error>(self, mut v: String) -> Result<L, E> {
        // An owned string may be a key: wiped once read.
        let value = L::from_str(&v).map_err(fail);
        v.zeroize();
        value
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<L, A::Error> {
        L::from_map(map)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<L, A::Error> {
        L::from_seq(seq)
    }
}

/// Implements `Deserialize` through [`Expect`] (a blanket impl over `Leaf` is not allowed).
macro_rules! deserialize_leaf {
    ($($ty:ident $(<$t:ident>)?),*) => {$(
        impl<'de $(, $t: Deserialize<'de>)?> Deserialize<'de> for $ty $(<$t>)? {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                expect(d)
            }
        }
    )*};
}
deserialize_leaf!(Key, PatternText, Version, Object<T>, List<T>);

/// A key: a string of 64 hex digits, decoded as it is read. The bytes live in one heap
/// allocation, wiped on drop, so that moving a `Key` never copies them.
struct Key(Box<Zeroizing<[u8; KEY_LEN]>>);

impl Leaf<'_> for Key {
    const EXPECTED: &'static str = "a string of 64 hex digits";

    fn from_str(s: &str) -> Result<Self, Problem> {
        let mut key = Box::new(Zeroizing::new([0u8; KEY_LEN]));
        hex::decode_key(s, &mut key).map_err(|e| match e {
            HexError::BadDigit { position, found } => Problem::BadHex { position, found },
            HexError::WrongLength { digits } => Problem::WrongLength { digits },
        })?;
        Ok(Self(key))
    }
}

/// A channel pattern, checked by the core's rules.
struct PatternText(String);

impl Leaf<'_> for PatternText {
    const EXPECTED: &'static str = "a string";

    fn from_str(s: &str) -> Result<Self, Problem> {
        match Pattern::new(s) {
            Ok(_) => Ok(Self(s.to_owned())),
            Err(error) => Err(Problem::BadPattern { pattern: s.to_owned(), error }),
        }
    }
}

/// The `version` field: only [`FORMAT_VERSION`] is accepted.
struct Version;

impl Leaf<'_> for Version {
    const EXPECTED: &'static str = "an integer";

    fn from_number(n: Number) -> Result<Self, Problem> {
        if n.as_u64() == Some(u64::from(FORMAT_VERSION)) {
            Ok(Self)
        } else {
            Err(Problem::UnknownVersion { found: n.to_string() })
        }
    }
}

/// A JSON object holding a `T`. Derived structs would also accept an array of their
/// fields in order; a keyring file has objects only.
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Leaf<'de> for Object<T> {
    const EXPECTED: &'static str = "an object";

    fn from_map<A: MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
        T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Self)
    }
}

/// A JSON array of `T`.
struct List<T>(Vec<T>);

impl<'de, T: Deserialize<'de>> Leaf<'de> for List<T> {
    const EXPECTED: &'static str = "an array";

    fn from_seq<A: SeqAccess<'de>>(mut seq: A) -> Result<Self, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Self(items))
    }
}

/// A key pair written inline: the network keys, a channel's current keys, a `previous`.
/// Absent and `null` both mean "not given" for every field; [`Checker`] requires keys.
#[derive(Deserialize)]
struct PairDoc {
    encryption_key: Option<Key>,
    hmac_key: Option<Key>,
}

/// One entry of `channels`.
#[derive(Deserialize)]
struct ChannelDoc {
    pattern: Option<PatternText>,
    encryption_key: Option<Key>,
    hmac_key: Option<Key>,
    previous: Option<Object<PairDoc>>,
}

/// The whole document. (Not `#[serde(flatten)]` for the network pair: flattening
/// buffers values, keys among them, in copies nobody wipes.)
#[derive(Deserialize)]
struct Document {
    #[allow(dead_code, reason = "checked by `Header` first; kept so it is no unknown field")]
    version: Option<Version>,
    encryption_key: Option<Key>,
    hmac_key: Option<Key>,
    previous: Option<Object<PairDoc>>,
    channels: Option<List<Object<ChannelDoc>>>,
}

/// The second pass (after one that only checks the syntax) reads only `version` (files
/// without one, like the reference implementation's, are version 1), so that a file of
/// another version is reported as such rather than by whatever field it has that this
/// version does not know.
#[derive(Deserialize)]
struct Header {
    #[allow(dead_code, reason = "a `Version` checks itself as it is read")]
    version: Option<Version>,
}

/// The checks that need more than one value, with field paths built from the structure.
struct Checker<'a> {
    path: &'a Path,
}

impl Checker<'_> {
    fn required<T>(&self, value: Option<T>, prefix: &str, name: &str) -> Result<T, Error> {
        value.ok_or_else(|| Error::MissingField {
            path: self.path.to_owned(),
            field: join(prefix, name),
        })
    }

    /// The pair of the object at JSON path `prefix`.
    fn pair(&self, enc: Option<Key>, mac: Option<Key>, prefix: &str) -> Result<KeyPair, Error> {
        let enc = self.required(enc, prefix, ENC)?;
        let mac = self.required(mac, prefix, MAC)?;
        let pair = KeyPair::new(**enc.0, **mac.0);
        if pair.encryption == pair.mac {
            return Err(Error::SameKeys { path: self.path.to_owned(), field: prefix.to_owned() });
        }
        Ok(pair)
    }

    fn previous(
        &self,
        doc: Option<Object<PairDoc>>,
        prefix: &str,
    ) -> Result<Option<KeyPair>, Error> {
        doc.map(|Object(p)| self.pair(p.encryption_key, p.hmac_key, &join(prefix, PREVIOUS)))
            .transpose()
    }

    fn channel(&self, doc: ChannelDoc, i: usize) -> Result<ChannelKeys, Error> {
        let prefix = format!("{CHANNELS}[{i}]");
        let PatternText(pattern) = self.required(doc.pattern, &prefix, PATTERN)?;
        let current = self.pair(doc.encryption_key, doc.hmac_key, &prefix)?;
        let previous = self.previous(doc.previous, &prefix)?;
        Ok(ChannelKeys { pattern, current, previous })
    }

    fn keyring(&self, doc: Document) -> Result<KeyringFile, Error> {
        let network = self.pair(doc.encryption_key, doc.hmac_key, "")?;
        let previous = self.previous(doc.previous, "")?;
        let docs = doc.channels.map_or_else(Vec::new, |List(l)| l);
        // Reserved up front: growing would leave copies of keys in the old buffer.
        let mut channels: Vec<ChannelKeys> = Vec::with_capacity(docs.len());
        for (i, Object(c)) in docs.into_iter().enumerate() {
            let entry = self.channel(c, i)?;
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
        Ok(KeyringFile { network, previous, channels, source: None })
    }
}

/// `channels[1].hmac_key`; empty for the document itself.
fn error_field(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut field = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => field.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => field = join(&field, key),
            Segment::Unknown => field = join(&field, "?"),
        }
    }
    field
}

/// The same notation for a field `serde_ignored` reports.
fn ignored_field(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path as P;
    match path {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", ignored_field(parent)),
        P::Map { parent, key } => join(&ignored_field(parent), key),
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            ignored_field(parent)
        }
    }
}

/// The error for JSON that does not parse, or for content serde refused itself (a field
/// given twice) at `field`.
fn json_error(e: &serde_json::Error, path: &Path, field: &str) -> Error {
    let (line, column) = (e.line(), e.column());
    let message = e.to_string();
    let suffix = format!(" at line {line} column {column}");
    let message = message.strip_suffix(&suffix).unwrap_or(&message).to_owned();
    let path = path.to_owned();
    if e.is_data() {
        Error::Content { path, field: field.to_owned(), message }
    } else {
        Error::Syntax { path, line, column, message }
    }
}

/// The error for a failed pass over `path`'s document.
fn load_error(e: &serde_path_to_error::Error<serde_json::Error>, path: &Path) -> Error {
    let problem = PROBLEM.take();
    let field = error_field(e.path());
    match problem {
        Some(problem) if e.inner().is_data() => problem.into_error(path, field),
        _ => json_error(e.inner(), path, &field),
    }
}

/// Parses a keyring document; `path` only names the file in errors and warnings.
pub(crate) fn parse(json: &[u8], path: &Path) -> Result<Loaded, Error> {
    // Syntax first, wherever it is: the later passes stop at their first error.
    serde_json::from_slice::<de::IgnoredAny>(json).map_err(|e| json_error(&e, path, ""))?;
    PROBLEM.set(None);
    let mut de = serde_json::Deserializer::from_slice(json);
    let header: Result<Object<Header>, _> = serde_path_to_error::deserialize(&mut de);
    header.map_err(|e| load_error(&e, path))?;

    let mut warnings = Vec::new();
    let mut unknown = |p: serde_ignored::Path<'_>| {
        warnings.push(Warning::UnknownField { path: path.to_owned(), field: ignored_field(&p) });
    };
    PROBLEM.set(None);
    let mut de = serde_json::Deserializer::from_slice(json);
    let doc: Result<Object<Document>, _> =
        serde_path_to_error::deserialize(serde_ignored::Deserializer::new(&mut de, &mut unknown));
    let Object(doc) = doc.map_err(|e| load_error(&e, path))?;
    let keyring = Checker { path }.keyring(doc)?;
    Ok(Loaded { keyring, warnings })
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
