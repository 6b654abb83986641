//! The config keys, read off the settings type itself: every field serde reads (nested tables
//! as `table.key`), the kind of value it takes, and whether it is a secret.
//!
//! The environment (`CLARION_*`), the `*_file` secret keys, reload and the test that holds the
//! docs to the code all use this one list, so a key added to the struct needs no other code.
//! It is found by deserializing the type from a probe that answers one field at a time and
//! notes which `deserialize_*` method the field's type asked for.

use std::cell::Cell;
use std::fmt;

use serde::de::value::StrDeserializer;
use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};

/// The name a secret type gives [`de::Deserializer::deserialize_newtype_struct`]; a key whose
/// type asks for it may also be given as `<key>_file` (see [`super::sources`]).
pub const SECRET: &str = "Secret";

/// Suffix of the key that names a file holding a secret key's value.
pub const FILE_SUFFIX: &str = "_file";

/// What a key's value is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `true` or `false`.
    Bool,
    /// An integer.
    Int,
    /// A floating-point number.
    Float,
    /// A string (also addresses, durations and choices, which parse their text).
    Text,
    /// A list of values of one kind.
    List(Box<Kind>),
    /// A table of free-form keys.
    Map,
}

/// One config key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key {
    /// Its path: `listen`, or `cluster.redis` for a key of the `[cluster]` table.
    pub path: String,
    /// What its value is.
    pub kind: Kind,
    /// Whether it is a secret: never shown, and also readable from `<path>_file`.
    pub secret: bool,
}

/// Every key of `T`, in field order, tables' keys in place of the table.
pub fn keys_of<T: DeserializeOwned>() -> Vec<Key> {
    let mut keys = Vec::new();
    collect::<T>(&mut Vec::new(), &mut keys);
    keys
}

fn collect<T: DeserializeOwned>(path: &mut Vec<&'static str>, keys: &mut Vec<Key>) {
    match probe::<T>(path) {
        Found::Table(fields) => {
            for field in fields {
                path.push(field);
                collect::<T>(path, keys);
                path.pop();
            }
        }
        Found::Leaf { kind, secret } => keys.push(Key {
            path: path.join("."),
            kind,
            secret,
        }),
        Found::Nothing => {}
    }
}

/// What the type at the end of a path turned out to be.
#[derive(Clone, Debug, Default)]
enum Found {
    /// Nothing recognisable (a type that reads no value).
    #[default]
    Nothing,
    /// A struct with these fields.
    Table(&'static [&'static str]),
    /// A value.
    Leaf { kind: Kind, secret: bool },
}

/// Deserializes `T` from a probe that leads down `path` and notes what is found there.
fn probe<T: DeserializeOwned>(path: &[&'static str]) -> Found {
    let found = Cell::new(Found::Nothing);
    let probe = Probe {
        path,
        found: &found,
        secret: false,
    };
    // The probe always ends in an error: it stops once it has seen what it came for.
    let _ = T::deserialize(probe);
    found.take()
}

/// The probe's error: the probe has seen what it came for (or cannot go on).
#[derive(Debug)]
struct Stop;

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("probe stopped")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<M: fmt::Display>(_message: M) -> Stop {
        Stop
    }
}

struct Probe<'p> {
    /// Fields still to walk down.
    path: &'p [&'static str],
    found: &'p Cell<Found>,
    /// A secret newtype was passed on the way.
    secret: bool,
}

impl Probe<'_> {
    /// Notes a value of `kind` if this is the end of the path; always stops.
    fn leaf<T>(self, kind: Kind) -> Result<T, Stop> {
        if self.path.is_empty() {
            self.found.set(Found::Leaf {
                kind,
                secret: self.secret,
            });
        }
        Err(Stop)
    }

    /// A list: its element's kind is probed the same way.
    fn list<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        if !self.path.is_empty() {
            return Err(Stop);
        }
        let element = Cell::new(Found::Nothing);
        let _ = visitor.visit_seq(OneElement(Some(Probe {
            path: &[],
            found: &element,
            secret: false,
        })));
        let kind = match element.take() {
            Found::Leaf { kind, .. } => kind,
            _ => Kind::Map,
        };
        self.leaf(Kind::List(Box::new(kind)))
    }
}

macro_rules! leaf {
    ($($method:ident => $kind:expr),* $(,)?) => {
        $(fn $method<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Stop> {
            self.leaf($kind)
        })*
    };
}

impl<'de> de::Deserializer<'de> for Probe<'_> {
    type Error = Stop;

    leaf! {
        deserialize_any => Kind::Text,
        deserialize_bool => Kind::Bool,
        deserialize_i8 => Kind::Int,
        deserialize_i16 => Kind::Int,
        deserialize_i32 => Kind::Int,
        deserialize_i64 => Kind::Int,
        deserialize_i128 => Kind::Int,
        deserialize_u8 => Kind::Int,
        deserialize_u16 => Kind::Int,
        deserialize_u32 => Kind::Int,
        deserialize_u64 => Kind::Int,
        deserialize_u128 => Kind::Int,
        deserialize_f32 => Kind::Float,
        deserialize_f64 => Kind::Float,
        deserialize_char => Kind::Text,
        deserialize_str => Kind::Text,
        deserialize_string => Kind::Text,
        deserialize_bytes => Kind::Text,
        deserialize_byte_buf => Kind::Text,
        deserialize_unit => Kind::Text,
        deserialize_identifier => Kind::Text,
        deserialize_map => Kind::Map,
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _visitor: V,
    ) -> Result<V::Value, Stop> {
        self.leaf(Kind::Text)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Stop> {
        // Choices are written as their name.
        self.leaf(Kind::Text)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        mut self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Stop> {
        self.secret |= name == SECRET;
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        self.list(visitor)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Stop> {
        self.list(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Stop> {
        self.list(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Stop> {
        match self.path.split_first() {
            None => {
                self.found.set(Found::Table(fields));
                Err(Stop)
            }
            Some((field, rest)) => visitor.visit_map(OneField {
                field: Some(field),
                value: Some(Probe {
                    path: rest,
                    found: self.found,
                    secret: false,
                }),
            }),
        }
    }
}

/// A map of one field, whose value is the probe one level down.
struct OneField<'p> {
    field: Option<&'static str>,
    value: Option<Probe<'p>>,
}

impl<'de> de::MapAccess<'de> for OneField<'_> {
    type Error = Stop;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Stop> {
        let Some(field) = self.field.take() else {
            return Ok(None);
        };
        let key: StrDeserializer<'_, Stop> = field.into_deserializer();
        seed.deserialize(key).map(Some)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, Stop> {
        seed.deserialize(self.value.take().ok_or(Stop)?)
    }
}

/// A list of one element: the probe, to learn the element's kind.
struct OneElement<'p>(Option<Probe<'p>>);

impl<'de> de::SeqAccess<'de> for OneElement<'_> {
    type Error = Stop;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, Stop> {
        match self.0.take() {
            Some(probe) => seed.deserialize(probe).map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::time::Duration;

    #[derive(Debug)]
    struct Hidden(#[allow(dead_code)] String);

    impl<'de> Deserialize<'de> for Hidden {
        fn deserialize<D: de::Deserializer<'de>>(de: D) -> Result<Hidden, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Hidden;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a string")
                }
                fn visit_newtype_struct<D: de::Deserializer<'de>>(
                    self,
                    de: D,
                ) -> Result<Hidden, D::Error> {
                    String::deserialize(de).map(Hidden)
                }
            }
            de.deserialize_newtype_struct(SECRET, V)
        }
    }

    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    enum Choice {
        A,
    }

    fn duration<'de, D: de::Deserializer<'de>>(de: D) -> Result<Option<Duration>, D::Error> {
        String::deserialize(de).map(|_| None)
    }

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        url: Option<Hidden>,
        ports: Option<Vec<u16>>,
    }

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        threads: Option<usize>,
        on: Option<bool>,
        #[serde(default, deserialize_with = "duration")]
        timeout: Option<Duration>,
        names: Option<Vec<String>>,
        choice: Option<Choice>,
        #[serde(skip)]
        skipped: Option<u8>,
        table: Option<Inner>,
        key: Option<Hidden>,
        ratio: f64,
    }

    #[test]
    fn every_field_is_found_with_its_kind() {
        let keys = keys_of::<Outer>();
        let shown: Vec<_> = keys
            .iter()
            .map(|k| {
                format!(
                    "{} {:?}{}",
                    k.path,
                    k.kind,
                    if k.secret { " secret" } else { "" }
                )
            })
            .collect();
        assert_eq!(
            shown,
            [
                "threads Int",
                "on Bool",
                "timeout Text",
                "names List(Text)",
                "choice Text",
                "table.url Text secret",
                "table.ports List(Int)",
                "key Text secret",
                "ratio Float",
            ]
        );
    }
}
