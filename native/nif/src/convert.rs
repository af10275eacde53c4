//! Erlang terms to JSON values, mechanically, so that the core's config
//! reader sees the seed's proplists/maps the way it sees JSON documents.
//!
//! maps → objects (keys as strings); lists → arrays, except non-empty lists
//! of Unicode code points (charlists) → strings; tuples → arrays;
//! binaries → strings; `true`/`false` → booleans; `undefined`/`null` → null;
//! other atoms → strings; numbers → numbers. Pids, refs, funs and ports are
//! refused with the path where they were found, and so are improper lists
//! and terms nested deeper than [`MAX_DEPTH`]: the conversion recurses, and
//! the stack of a dirty scheduler thread is small (a few hundred KB), so an
//! unbounded depth would crash the VM instead of returning an error.

use rustler::types::tuple::get_tuple;
use rustler::{Binary, MapIterator, Term, TermType};
use serde_json::{Map, Number, Value};

/// Deepest nesting of maps, lists and tuples accepted. MongooseIM's
/// processed document is about 7 levels deep; 32 leaves room for any real
/// configuration and keeps the recursion far from the end of the stack.
pub const MAX_DEPTH: usize = 32;

/// Converts `term`; `Err` holds `path: message` like the core's errors.
pub fn to_json(term: Term<'_>) -> Result<Value, String> {
    convert(term, "", 0)
}

/// The elements of a proper list, or `None` for an improper one (rustler's
/// `ListIterator` panics on an improper tail).
pub fn proper_list(term: Term<'_>) -> Option<Vec<Term<'_>>> {
    let n = term.list_length().ok()?;
    let mut items = Vec::with_capacity(n);
    let mut rest = term;
    while let Ok((head, tail)) = rest.list_get_cell() {
        items.push(head);
        rest = tail;
    }
    Some(items)
}

fn at(path: &str) -> &str {
    if path.is_empty() {
        "(root)"
    } else {
        path
    }
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn convert(term: Term<'_>, path: &str, depth: usize) -> Result<Value, String> {
    let nested = matches!(
        term.get_type(),
        TermType::Tuple | TermType::List | TermType::Map
    );
    if nested && depth >= MAX_DEPTH {
        return Err(format!("{}: nested deeper than {MAX_DEPTH}", at(path)));
    }
    let depth = depth + 1;
    match term.get_type() {
        TermType::Atom => {
            let name = term
                .atom_to_string()
                .map_err(|_| format!("{}: unreadable atom", at(path)))?;
            Ok(match name.as_str() {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                "undefined" | "null" | "nil" => Value::Null,
                _ => Value::String(name),
            })
        }
        TermType::Binary => {
            let b: Binary = term
                .decode()
                .map_err(|_| format!("{}: unreadable binary", at(path)))?;
            Ok(Value::String(
                String::from_utf8_lossy(b.as_slice()).into_owned(),
            ))
        }
        TermType::Integer => {
            if let Ok(i) = term.decode::<i64>() {
                Ok(Value::Number(Number::from(i)))
            } else if let Ok(u) = term.decode::<u64>() {
                Ok(Value::Number(Number::from(u)))
            } else {
                Err(format!("{}: integer out of range", at(path)))
            }
        }
        TermType::Float => {
            let f: f64 = term
                .decode()
                .map_err(|_| format!("{}: unreadable float", at(path)))?;
            Number::from_f64(f)
                .map(Value::Number)
                .ok_or_else(|| format!("{}: not a finite number", at(path)))
        }
        TermType::Tuple => {
            let items = get_tuple(term).map_err(|_| format!("{}: unreadable tuple", at(path)))?;
            items
                .into_iter()
                .enumerate()
                .map(|(i, t)| convert(t, &format!("{path}[{i}]"), depth))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array)
        }
        TermType::List => {
            let items = proper_list(term)
                .ok_or_else(|| format!("{}: improper list (its tail is not [])", at(path)))?;
            if let Some(s) = charlist(&items) {
                return Ok(Value::String(s));
            }
            items
                .into_iter()
                .enumerate()
                .map(|(i, t)| match pair_key(t) {
                    // A proplist entry: errors name the option, not the index.
                    Some((key, value)) => Ok(Value::Array(vec![
                        Value::String(key.clone()),
                        convert(value, &child(path, &key), depth)?,
                    ])),
                    None => convert(t, &format!("{path}[{i}]"), depth),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array)
        }
        TermType::Map => {
            let mut out = Map::new();
            let iter: MapIterator = term
                .decode()
                .map_err(|_| format!("{}: unreadable map", at(path)))?;
            for (k, v) in iter {
                let key = match convert(k, path, depth)? {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                let value = convert(v, &child(path, &key), depth)?;
                out.insert(key, value);
            }
            Ok(Value::Object(out))
        }
        other => Err(format!(
            "{}: cannot be given in a configuration ({other:?})",
            at(path)
        )),
    }
}

/// `{Key, Value}` with an atom or binary key (a proplist entry).
fn pair_key(t: Term<'_>) -> Option<(String, Term<'_>)> {
    if t.get_type() != TermType::Tuple {
        return None;
    }
    let items = get_tuple(t).ok()?;
    let [k, v] = items.as_slice() else {
        return None;
    };
    let key = match k.get_type() {
        TermType::Atom => k.atom_to_string().ok()?,
        TermType::Binary => {
            let b: Binary = k.decode().ok()?;
            String::from_utf8(b.as_slice().to_vec()).ok()?
        }
        _ => return None,
    };
    Some((key, *v))
}

/// A non-empty list of integers that are all Unicode scalar values, read as
/// a string (`"localhost"` written in Erlang source).
fn charlist(items: &[Term<'_>]) -> Option<String> {
    if items.is_empty() {
        return None;
    }
    let mut s = String::with_capacity(items.len());
    for t in items {
        if t.get_type() != TermType::Integer {
            return None;
        }
        let c = t.decode::<u32>().ok().and_then(char::from_u32)?;
        s.push(c);
    }
    Some(s)
}
