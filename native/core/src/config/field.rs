//! Reading values with their paths: `Field` (one value and the dotted path
//! it was found at, with typed getters whose errors name that path and the
//! value given), `Section` (the options of one table, unknown keys refused),
//! and the conversion of TOML text to the JSON value tree every reader walks.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use serde_json::{Map, Value};

use crate::config::host::check_host;
use crate::config::{quote, ConfigError, Result, DOCUMENT, MAX_SECONDS, MAX_WIRE_STRING_LEN};

/// One value and the dotted path it was found at.
#[derive(Clone)]
pub(super) struct Field<'a> {
    pub(super) path: String,
    pub(super) value: &'a Value,
}

impl<'a> Field<'a> {
    pub(super) fn new(path: impl Into<String>, value: &'a Value) -> Self {
        Self {
            path: path.into(),
            value,
        }
    }
    pub(super) fn child<'b>(&self, key: &str, value: &'b Value) -> Field<'b> {
        Field::new(join(&self.path, key), value)
    }
    pub(super) fn index<'b>(&self, i: usize, value: &'b Value) -> Field<'b> {
        Field::new(format!("{}[{i}]", self.path), value)
    }
    pub(super) fn err(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::new(self.path.clone(), message)
    }
    pub(super) fn expected(&self, what: &str) -> ConfigError {
        self.err(format!("expected {what}, got {}", describe(self.value)))
    }

    /// A map, or a list of `[key, value]` pairs (an Erlang proplist).
    pub(super) fn map(&self) -> Result<Map<String, Value>> {
        match self.value {
            Value::Object(map) => Ok(map.clone()),
            Value::Array(items) => {
                let mut map = Map::new();
                for (i, item) in items.iter().enumerate() {
                    let pair = match item.as_array().map(Vec::as_slice) {
                        Some([Value::String(key), value]) => (key, value),
                        _ => return Err(self.expected("a map of options")),
                    };
                    if map.insert(pair.0.clone(), pair.1.clone()).is_some() {
                        return Err(self
                            .index(i, item)
                            .err(format!("option {} given twice", quote(pair.0))));
                    }
                }
                Ok(map)
            }
            _ => Err(self.expected("a map of options")),
        }
    }
    pub(super) fn list(&self, what: &str) -> Result<&'a Vec<Value>> {
        self.value.as_array().ok_or_else(|| self.expected(what))
    }
    /// A string; an empty list counts as `""` because the Erlang binding
    /// cannot tell the empty charlist `""` (MongooseIM's `string` options,
    /// e.g. a blank password) from `[]`.
    pub(super) fn string(&self) -> Result<&'a str> {
        match self.value {
            Value::Array(items) if items.is_empty() => Ok(""),
            value => value.as_str().ok_or_else(|| self.expected("a string")),
        }
    }
    pub(super) fn boolean(&self) -> Result<bool> {
        self.value
            .as_bool()
            .ok_or_else(|| self.expected("true or false"))
    }

    /// An integer within `min..=max`, converted to the field's type.
    pub(super) fn int<T: TryFrom<u64>>(&self, min: u64, max: u64) -> Result<T> {
        self.int_hint(min, max, "")
    }
    pub(super) fn int_hint<T: TryFrom<u64>>(&self, min: u64, max: u64, hint: &str) -> Result<T> {
        let n = self
            .value
            .as_u64()
            .ok_or_else(|| self.expected("a non-negative integer"))?;
        let hint = if hint.is_empty() {
            String::new()
        } else {
            format!(" ({hint})")
        };
        if n < min {
            return Err(self.err(format!("must be at least {min}{hint}, got {n}")));
        }
        if n > max {
            return Err(self.err(format!("must be at most {max}{hint}, got {n}")));
        }
        T::try_from(n).map_err(|_| self.err(format!("{n} does not fit on this platform")))
    }

    pub(super) fn host(&self) -> Result<String> {
        let host = self.string()?;
        match check_host(host) {
            Some(bad) => Err(self.err(bad)),
            None => Ok(host.to_owned()),
        }
    }
    /// A host name, or an IP address as the Erlang binding converts an
    /// `inet:ip_address()` tuple: a list of 4 bytes or 8 16-bit groups.
    pub(super) fn endpoint_host(&self) -> Result<String> {
        let Value::Array(parts) = self.value else {
            return self.host();
        };
        let numbers: Option<Vec<u64>> = parts.iter().map(Value::as_u64).collect();
        let ip = match numbers.as_deref() {
            Some(&[a, b, c, d]) if [a, b, c, d].iter().all(|&n| n <= 0xff) => {
                Some(Ipv4Addr::new(a as u8, b as u8, c as u8, d as u8).to_string())
            }
            Some(groups) if groups.len() == 8 && groups.iter().all(|&n| n <= 0xffff) => {
                let mut segments = [0u16; 8];
                for (segment, &n) in segments.iter_mut().zip(groups) {
                    *segment = n as u16;
                }
                Some(Ipv6Addr::from(segments).to_string())
            }
            _ => None,
        };
        ip.ok_or_else(|| self.expected("a host name or an IP address"))
    }
    pub(super) fn node_name(&self) -> Result<String> {
        let name = self.string()?;
        if name.is_empty() {
            return Err(self.err("must not be empty"));
        }
        // It travels in every handshake: a longer name could never connect.
        if name.len() > MAX_WIRE_STRING_LEN {
            return Err(self.err(format!(
                "is {} bytes long, at most {MAX_WIRE_STRING_LEN} allowed (a string on the wire, docs/PROTOCOL.md)",
                name.len()
            )));
        }
        if let Some(c) = name.chars().find(|c| matches!(c, '{' | '}' | '#')) {
            return Err(self.err(format!(
                "must not contain '{c}' (reserved by the store's key layout), got {}",
                quote(name)
            )));
        }
        Ok(name.to_owned())
    }
    /// A path to a file that exists and can be read now, so a typo fails at
    /// start rather than at the first TLS handshake.
    pub(super) fn readable_file(&self) -> Result<PathBuf> {
        let path = PathBuf::from(self.string()?);
        let shown = quote(&path.display().to_string());
        let metadata =
            std::fs::metadata(&path).map_err(|e| self.err(format!("cannot read {shown}: {e}")))?;
        if !metadata.is_file() {
            return Err(self.err(format!("cannot read {shown}: not a regular file")));
        }
        std::fs::File::open(&path).map_err(|e| self.err(format!("cannot read {shown}: {e}")))?;
        Ok(path)
    }
}

/// The options of one section: unknown keys are rejected up front, and the
/// seed's alias names are read under their canonical name.
pub(super) struct Section {
    pub(super) path: String,
    map: Map<String, Value>,
    aliases: &'static [(&'static str, &'static str)],
}

impl Section {
    pub(super) fn new(
        field: &Field,
        keys: &[&str],
        aliases: &'static [(&'static str, &'static str)],
    ) -> Result<Self> {
        let map = field.map()?;
        let known = |k: &str| keys.contains(&k) || aliases.iter().any(|(alias, _)| *alias == k);
        if let Some(unknown) = map.keys().find(|k| !known(k)) {
            let message = format!("unknown option (expected one of: {})", keys.join(", "));
            return Err(ConfigError::new(join(&field.path, unknown), message));
        }
        Ok(Self {
            path: field.path.clone(),
            map,
            aliases,
        })
    }
    /// A section that was not given: every option takes its default.
    pub(super) fn empty(path: &str) -> Self {
        Self {
            path: path.to_owned(),
            map: Map::new(),
            aliases: &[],
        }
    }
    pub(super) fn has(&self, key: &str) -> bool {
        self.map.get(key).is_some_and(|v| !v.is_null())
    }
    /// The option under its name or an alias; `null` counts as absent (it is
    /// how `to_json` writes an unset optional value).
    pub(super) fn get(&self, key: &str) -> Result<Option<Field<'_>>> {
        let names = std::iter::once(key).chain(
            self.aliases
                .iter()
                .filter(|(_, canonical)| *canonical == key)
                .map(|(alias, _)| *alias),
        );
        let mut found: Option<Field> = None;
        for name in names {
            let Some(value) = self.map.get(name).filter(|v| !v.is_null()) else {
                continue;
            };
            let field = Field::new(join(&self.path, name), value);
            if let Some(first) = &found {
                let message = format!("same option as {}; give only one of them", first.path);
                return Err(field.err(message));
            }
            found = Some(field);
        }
        Ok(found)
    }
    pub(super) fn required(&self, key: &str) -> Result<Field<'_>> {
        self.get(key)?
            .ok_or_else(|| ConfigError::new(join(&self.path, key), "required option missing"))
    }
    pub(super) fn opt<'s, T>(
        &'s self,
        key: &str,
        read: impl FnOnce(&Field<'s>) -> Result<T>,
        default: impl FnOnce() -> T,
    ) -> Result<T> {
        match self.get(key)? {
            Some(field) => read(&field),
            None => Ok(default()),
        }
    }
}

pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

pub(super) fn seconds(f: &Field) -> Result<u64> {
    f.int(1, MAX_SECONDS)
}

pub(super) fn seconds_or_zero(f: &Field) -> Result<u64> {
    f.int(0, MAX_SECONDS)
}

/// A value as shown after "got" in an error.
fn describe(value: &Value) -> String {
    match value {
        Value::Array(_) => "a list".to_owned(),
        Value::Object(_) => "a map".to_owned(),
        Value::String(s) if s.len() > 80 => {
            let cut = (0..=77).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
            format!(
                "{}... ({} bytes)",
                quote(&s[..cut]).trim_end_matches('"'),
                s.len()
            )
        }
        other => other.to_string(),
    }
}

pub(super) fn toml_to_json(value: toml::Value) -> Value {
    match value {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f)
            .map_or_else(|| Value::String(f.to_string()), Value::Number),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(items) => Value::Array(items.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(table) => Value::Object(
            table
                .into_iter()
                .map(|(k, v)| (k, toml_to_json(v)))
                .collect(),
        ),
    }
}

pub(super) fn toml_syntax_error(text: &str, error: &toml::de::Error) -> ConfigError {
    // toml's messages span lines; keep the error on one line for logs.
    let lines: Vec<&str> = error
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let message = lines.join("; ");
    let Some(span) = error.span() else {
        return ConfigError::new(DOCUMENT, format!("invalid TOML: {message}"));
    };
    let before = text.get(..span.start).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    ConfigError::new(
        DOCUMENT,
        format!("invalid TOML at line {line}, column {column}: {message}"),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use crate::config::test_support::error;

    use serde_json::json;

    use super::*;

    #[test]
    fn paths_join_keys_with_dots_and_indexes_with_brackets() {
        assert_eq!(join("", "global_host"), "global_host");
        assert_eq!(
            join("connections.tls", "certfile"),
            "connections.tls.certfile"
        );
        let (root, item) = (json!({}), json!(1));
        let top = Field::new("", &root);
        let endpoints = top.child("connections", &root).child("endpoints", &root);
        assert_eq!(endpoints.path, "connections.endpoints");
        assert_eq!(endpoints.index(2, &item).path, "connections.endpoints[2]");
    }

    #[test]
    fn a_wrong_type_names_the_option_path_and_the_value_given() {
        let value = json!("five");
        let f = Field::new("connections.max_frame_size", &value);
        assert_eq!(
            error(f.int::<u64>(0, 10)),
            r#"connections.max_frame_size: expected a non-negative integer, got "five""#
        );
        let value = json!(-1);
        let f = Field::new("message_ttl", &value);
        assert_eq!(
            error(f.int::<u32>(0, 255)),
            "message_ttl: expected a non-negative integer, got -1"
        );
        let value = json!(1);
        let f = Field::new("bounce.enabled", &value);
        assert_eq!(
            error(f.boolean()),
            "bounce.enabled: expected true or false, got 1"
        );
        assert_eq!(
            error(f.string()),
            "bounce.enabled: expected a string, got 1"
        );
        assert_eq!(
            error(f.list("a list of endpoints")),
            "bounce.enabled: expected a list of endpoints, got 1"
        );
        let value = json!({"a": 1});
        let f = Field::new("redis.password", &value);
        assert_eq!(
            error(f.string()),
            "redis.password: expected a string, got a map"
        );
    }

    #[test]
    fn integers_are_checked_against_both_bounds_with_the_hint() {
        let value = json!(256);
        let f = Field::new("message_ttl", &value);
        assert_eq!(
            error(f.int_hint::<u32>(0, 255, "it travels as one byte")),
            "message_ttl: must be at most 255 (it travels as one byte), got 256"
        );
        let value = json!(0);
        let f = Field::new("redis.pool_size", &value);
        assert_eq!(
            error(f.int::<u32>(1, 10)),
            "redis.pool_size: must be at least 1, got 0"
        );
        let value = json!(255);
        assert_eq!(Field::new("x", &value).int::<u8>(0, 255).unwrap(), 255u8);
        // The bounds are checked first; a type too small is reported last.
        let value = json!(256);
        assert_eq!(
            error(Field::new("x", &value).int::<u8>(0, 1000)),
            "x: 256 does not fit on this platform"
        );
    }

    #[test]
    fn seconds_are_one_to_ten_years_and_seconds_or_zero_allows_zero() {
        let (zero, max, over) = (json!(0), json!(MAX_SECONDS), json!(MAX_SECONDS + 1));
        assert_eq!(
            error(seconds(&Field::new("redis.expire_after", &zero))),
            "redis.expire_after: must be at least 1, got 0"
        );
        assert_eq!(seconds_or_zero(&Field::new("x", &zero)).unwrap(), 0);
        assert_eq!(seconds(&Field::new("x", &max)).unwrap(), MAX_SECONDS);
        assert_eq!(
            error(seconds_or_zero(&Field::new("x", &over))),
            format!("x: must be at most {MAX_SECONDS}, got {}", MAX_SECONDS + 1)
        );
    }

    #[test]
    fn a_proplist_reads_as_a_map_and_a_repeated_key_names_its_index() {
        let value = json!([["a", 1], ["b", [2]]]);
        let map = Field::new("cache", &value).map().unwrap();
        assert_eq!(Value::Object(map), json!({"a": 1, "b": [2]}));
        let value = json!([["a", 1], ["a", 2]]);
        assert_eq!(
            error(Field::new("cache", &value).map()),
            r#"cache[1]: option "a" given twice"#
        );
        let value = json!([["a", 1, 2]]);
        assert_eq!(
            error(Field::new("cache", &value).map()),
            "cache: expected a map of options, got a list"
        );
    }

    #[test]
    fn an_empty_list_reads_as_the_empty_string() {
        let value = json!([]);
        assert_eq!(Field::new("redis.password", &value).string().unwrap(), "");
    }

    #[test]
    fn endpoint_hosts_take_names_and_erlang_ip_tuples() {
        let read = |v: Value| Field::new("e", &v).endpoint_host();
        assert_eq!(read(json!("dc1.example.com")).unwrap(), "dc1.example.com");
        assert_eq!(read(json!([10, 0, 0, 1])).unwrap(), "10.0.0.1");
        assert_eq!(read(json!([0, 0, 0, 0, 0, 0, 0, 1])).unwrap(), "::1");
        assert_eq!(
            error(read(json!([256, 0, 0, 1]))),
            "e: expected a host name or an IP address, got a list"
        );
        assert_eq!(
            error(read(json!([1, 2, 3]))),
            "e: expected a host name or an IP address, got a list"
        );
        assert_eq!(
            error(read(json!("a@b"))),
            r#"e: must not contain '@' (a JID separator), got "a@b""#
        );
    }

    #[test]
    fn node_names_must_fit_the_wire_and_the_key_layout() {
        let read = |v: Value| Field::new("node_name", &v).node_name();
        assert_eq!(read(json!("mongoose@dc1")).unwrap(), "mongoose@dc1");
        assert_eq!(error(read(json!(""))), "node_name: must not be empty");
        assert_eq!(
            error(read(json!("n{1}"))),
            r#"node_name: must not contain '{' (reserved by the store's key layout), got "n{1}""#
        );
        assert!(read(json!("n".repeat(MAX_WIRE_STRING_LEN))).is_ok());
        assert_eq!(
            error(read(json!("n".repeat(MAX_WIRE_STRING_LEN + 1)))),
            "node_name: is 3072 bytes long, at most 3071 allowed \
             (a string on the wire, docs/PROTOCOL.md)"
        );
    }

    #[test]
    fn readable_file_refuses_a_directory_and_a_missing_file() {
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let value = json!(manifest);
        let f = Field::new("connections.tls.certfile", &value);
        assert_eq!(f.readable_file().unwrap(), PathBuf::from(manifest));
        let value = json!(env!("CARGO_MANIFEST_DIR"));
        let f = Field::new("connections.tls.certfile", &value);
        assert_eq!(
            error(f.readable_file()),
            format!(
                "connections.tls.certfile: cannot read \"{}\": not a regular file",
                env!("CARGO_MANIFEST_DIR")
            )
        );
        let value = json!("/nonexistent/gd-config-test.pem");
        let message = error(Field::new("connections.tls.keyfile", &value).readable_file());
        assert!(
            message.starts_with(
                r#"connections.tls.keyfile: cannot read "/nonexistent/gd-config-test.pem": "#
            ),
            "{message}"
        );
    }

    #[test]
    fn a_section_refuses_unknown_keys_and_lists_the_known_ones() {
        let value = json!({"enabled": true, "bogus": 1});
        let result = Section::new(
            &Field::new("bounce", &value),
            &["enabled", "max_retries"],
            &[],
        );
        assert_eq!(
            error(result.map(drop)),
            "bounce.bogus: unknown option (expected one of: enabled, max_retries)"
        );
    }

    #[test]
    fn a_section_reads_aliases_and_refuses_both_names_together() {
        const ALIASES: &[(&str, &str)] = &[("tls_opts", "tls")];
        let value = json!({"tls_opts": false});
        let s = Section::new(&Field::new("connections", &value), &["tls"], ALIASES).unwrap();
        let tls = s.get("tls").unwrap().unwrap();
        assert_eq!(tls.path, "connections.tls_opts");
        assert_eq!(tls.value, &json!(false));
        let value = json!({"tls": false, "tls_opts": false});
        let s = Section::new(&Field::new("connections", &value), &["tls"], ALIASES).unwrap();
        assert_eq!(
            error(s.get("tls")),
            "connections.tls_opts: same option as connections.tls; give only one of them"
        );
    }

    #[test]
    fn a_null_option_counts_as_absent() {
        let value = json!({"password": null, "port": 6379});
        let s = Section::new(&Field::new("redis", &value), &["password", "port"], &[]).unwrap();
        assert!(!s.has("password"));
        assert!(s.has("port"));
        assert!(s.get("password").unwrap().is_none());
        assert_eq!(
            s.opt("password", |f| f.string().map(str::to_owned), || "d".into())
                .unwrap(),
            "d"
        );
        assert_eq!(
            error(s.required("password")),
            "redis.password: required option missing"
        );
        let empty = Section::empty("cache");
        assert_eq!(
            error(empty.required("max_jids")),
            "cache.max_jids: required option missing"
        );
    }

    #[test]
    fn long_strings_are_cut_in_errors() {
        let long = "é".repeat(50);
        let value = json!(long);
        let shown = describe(&value);
        // 77 bytes cut back to a character boundary: 38 two-byte characters.
        assert_eq!(shown, format!("\"{}... (100 bytes)", "é".repeat(38)));
        assert_eq!(describe(&json!("short")), r#""short""#);
        assert_eq!(describe(&json!([1])), "a list");
        assert_eq!(describe(&json!(null)), "null");
    }

    #[test]
    fn toml_values_become_json_values() {
        let table: toml::Table = r#"
            s = "text"
            i = 7
            f = 1.5
            b = true
            d = 1979-05-27
            a = [1, "two"]
            [t]
            k = "v"
        "#
        .parse()
        .unwrap();
        assert_eq!(
            toml_to_json(toml::Value::Table(table)),
            json!({
                "s": "text", "i": 7, "f": 1.5, "b": true, "d": "1979-05-27",
                "a": [1, "two"], "t": {"k": "v"},
            })
        );
        // JSON has no NaN: the float is kept as text.
        assert_eq!(toml_to_json(toml::Value::Float(f64::NAN)), json!("NaN"));
    }

    #[test]
    fn toml_syntax_errors_give_line_and_column_on_one_line() {
        let text = "global_host = \"a\"\nlocal_host = \n";
        let e = text.parse::<toml::Table>().unwrap_err();
        let e = toml_syntax_error(text, &e);
        assert_eq!(e.path(), "document");
        assert!(
            e.message()
                .starts_with("invalid TOML at line 2, column 14: "),
            "{e}"
        );
        assert!(!e.message().contains('\n'), "{e}");
    }
}
