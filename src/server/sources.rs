//! Where settings come from: command-line flags over `CLARION_*` environment variables over
//! the TOML file over defaults.
//!
//! Each source becomes a [`Layer`]: a TOML table of the keys it sets, each typed by its
//! [`Kind`] (so `CLARION_THREADS=4` is the integer 4) and remembered with its origin for
//! messages. Layers merge key by key, nested tables included (`CLARION_CLUSTER__REDIS` replaces
//! only `redis` of the file's `[cluster]` table), and the result is read into the settings once.
//!
//! A secret key may instead name a file whose contents, less trailing newlines, are its value:
//! `<key>_file` in the file or the environment (`jwt_secret_file`, `CLARION_JWT_SECRET_FILE`),
//! so that secrets stay out of process listings and config files. Each layer reads its files
//! before the merge, so a file named by the environment wins over a value in the config file.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use toml::{Table, Value};

use super::keys::{FILE_SUFFIX, Key, Kind};

/// Prefix of the environment variables that set keys.
pub const ENV_PREFIX: &str = "CLARION_";
/// The environment variable that names the config file (`--config` wins over it).
pub const CONFIG_ENV: &str = "CLARION_CONFIG";
/// Read as `log_level` when `CLARION_LOG_LEVEL` is not set, as tracing programs do.
pub const RUST_LOG: &str = "RUST_LOG";

/// Flags whose key is not their name: `--redis` is `redis` of the `[cluster]` table,
/// `--tls-cert` and `--tls-key` are `cert` and `key` of `[tls]`.
const FLAG_KEYS: &[(&str, &str)] = &[
    ("redis", "cluster.redis"),
    ("tls_cert", "tls.cert"),
    ("tls_key", "tls.key"),
];
/// Flags that set no key: `--config` says where the keys are.
const NOT_KEYS: &[&str] = &["config"];

/// The keys one source sets.
#[derive(Clone, Debug, Default)]
pub struct Layer {
    table: Table,
    /// Where each key (by dotted path) was set: `--threads`, `CLARION_THREADS`, a file.
    origins: BTreeMap<String, String>,
}

/// What a dotted path names.
enum Named<'k> {
    /// A key of the settings.
    Key(&'k Key),
    /// The `_file` form of this secret key: a path.
    FileOf(&'k Key),
}

impl Named<'_> {
    /// The kind of value the path takes.
    fn kind(&self) -> Kind {
        match self {
            Named::Key(key) => key.kind.clone(),
            Named::FileOf(_) => Kind::Text,
        }
    }
}

fn lookup<'k>(keys: &'k [Key], path: &str) -> Option<Named<'k>> {
    if let Some(key) = keys.iter().find(|k| k.path == path) {
        return Some(Named::Key(key));
    }
    let base = path.strip_suffix(FILE_SUFFIX)?;
    keys.iter()
        .find(|k| k.path == base && k.secret)
        .map(Named::FileOf)
}

/// Whether `path` is a table that holds keys (`cluster`).
fn is_table(keys: &[Key], path: &str) -> bool {
    keys.iter().any(|k| {
        k.path
            .strip_prefix(path)
            .is_some_and(|rest| rest.starts_with('.'))
    })
}

/// `text` as a value of `kind`: how the environment and flags, which are text, are typed.
/// A list is comma-separated, or written as a TOML array (`["a,b", "c"]`).
pub fn parse_text(kind: &Kind, text: &str) -> Result<Value, String> {
    let trimmed = text.trim();
    match kind {
        Kind::Text => Ok(Value::String(text.to_owned())),
        Kind::Bool => match trimmed.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(Value::Boolean(true)),
            "false" | "0" | "no" | "off" => Ok(Value::Boolean(false)),
            _ => Err(format!("expected true or false, found {text:?}")),
        },
        Kind::Int => trimmed
            .parse()
            .map(Value::Integer)
            .map_err(|_| format!("expected an integer, found {text:?}")),
        Kind::Float => trimmed
            .parse()
            .map(Value::Float)
            .map_err(|_| format!("expected a number, found {text:?}")),
        Kind::List(element) if trimmed.starts_with('[') => {
            let mut parsed: Table = toml::from_str(&format!("v = {trimmed}"))
                .map_err(|e| format!("expected a TOML array: {}", e.message()))?;
            check_array(
                element,
                parsed.remove("v").unwrap_or(Value::Array(Vec::new())),
            )
        }
        Kind::List(element) => trimmed
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| parse_text(element, item))
            .collect::<Result<_, _>>()
            .map(Value::Array),
        Kind::Map => Err("a table: set its keys one by one".to_owned()),
    }
}

/// A TOML array of `element`s: quoted items are read as text of their kind (`["1", 2]`).
fn check_array(element: &Kind, value: Value) -> Result<Value, String> {
    match value {
        Value::Array(items) => Ok(Value::Array(
            items
                .into_iter()
                .map(|item| match (element, item) {
                    (kind, Value::String(text)) if *kind != Kind::Text => parse_text(kind, &text),
                    (_, item) => Ok(item),
                })
                .collect::<Result<_, _>>()?,
        )),
        _ => Err("expected a TOML array".to_owned()),
    }
}

/// Sets `path` (dotted) in `table`, making the tables on the way.
fn insert(table: &mut Table, path: &str, value: Value) {
    match path.split_once('.') {
        None => {
            table.insert(path.to_owned(), value);
        }
        Some((head, rest)) => {
            let entry = table
                .entry(head.to_owned())
                .or_insert_with(|| Value::Table(Table::new()));
            if !entry.is_table() {
                *entry = Value::Table(Table::new());
            }
            if let Value::Table(inner) = entry {
                insert(inner, rest, value);
            }
        }
    }
}

fn remove(table: &mut Table, path: &str) -> Option<Value> {
    match path.split_once('.') {
        None => table.remove(path),
        Some((head, rest)) => match table.get_mut(head) {
            Some(Value::Table(inner)) => remove(inner, rest),
            _ => None,
        },
    }
}

/// Every value of `table` by dotted path, descending into the tables that hold keys.
pub fn leaves(keys: &[Key], table: &Table) -> BTreeMap<String, Value> {
    fn walk(keys: &[Key], prefix: &str, table: &Table, out: &mut BTreeMap<String, Value>) {
        for (name, value) in table {
            let path = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}.{name}")
            };
            match value {
                Value::Table(inner) if is_table(keys, &path) => walk(keys, &path, inner, out),
                _ => {
                    out.insert(path, value.clone());
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(keys, "", table, &mut out);
    out
}

/// The keys whose values differ between two merged tables (set, changed or unset).
pub fn changed(keys: &[Key], old: &Table, new: &Table) -> Vec<String> {
    let (old, new) = (leaves(keys, old), leaves(keys, new));
    let mut changed: Vec<String> = old
        .iter()
        .filter(|(path, value)| new.get(*path) != Some(value))
        .map(|(path, _)| path.clone())
        .collect();
    changed.extend(new.keys().filter(|path| !old.contains_key(*path)).cloned());
    changed.sort();
    changed
}

impl Layer {
    /// The merged table.
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// Where the key at `path` was set, if it was.
    pub fn origin(&self, path: &str) -> Option<&str> {
        self.origins.get(path).map(String::as_str)
    }

    fn set(&mut self, path: &str, value: Value, origin: String) {
        insert(&mut self.table, path, value);
        self.origins.insert(path.to_owned(), origin);
    }

    /// The flags given on the command line (`matches` of `clarion serve`). Clap has checked
    /// their values already; here they are typed like the other sources.
    pub fn from_flags(keys: &[Key], matches: &clap::ArgMatches) -> Result<Layer, String> {
        let mut layer = Layer::default();
        for id in matches.ids() {
            let id = id.as_str();
            if NOT_KEYS.contains(&id) || matches.value_source(id) != Some(ValueSource::CommandLine)
            {
                continue;
            }
            let path = FLAG_KEYS
                .iter()
                .find(|(flag, _)| *flag == id)
                .map_or(id, |(_, key)| key);
            let flag = format!("--{}", id.replace('_', "-"));
            let Some(kind) = lookup(keys, path).map(|named| named.kind()) else {
                return Err(format!("{flag} sets no config key (a bug)"));
            };
            let raw: Vec<String> = matches
                .get_raw(id)
                .into_iter()
                .flatten()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            let value = match (&kind, raw.as_slice()) {
                // Clap split the list already (`value_delimiter`).
                (Kind::List(element), items) => items
                    .iter()
                    .map(|item| parse_text(element, item))
                    .collect::<Result<_, _>>()
                    .map(Value::Array),
                (kind, [.., last]) => parse_text(kind, last),
                (_, []) => continue,
            }
            .map_err(|e| format!("{flag}: {e}"))?;
            layer.set(path, value, flag);
        }
        Ok(layer)
    }

    /// The `CLARION_*` variables of `vars` (and `RUST_LOG` as `log_level` when
    /// `CLARION_LOG_LEVEL` is not set): `CLARION_MAX_CONNECTIONS` sets `max_connections`,
    /// `CLARION_CLUSTER__REDIS` sets `redis` of `[cluster]`. A variable that names no key is
    /// ignored with a warning (returned): other programs' variables may share the prefix.
    pub fn from_env(
        keys: &[Key],
        vars: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Result<(Layer, Vec<String>), String> {
        let mut layer = Layer::default();
        let mut warnings = Vec::new();
        let mut rust_log = None;
        for (name, value) in vars {
            let Some(name) = name.to_str() else { continue };
            if name == RUST_LOG {
                rust_log = Some(value);
                continue;
            }
            let Some(key) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if name == CONFIG_ENV {
                continue;
            }
            let path = key.to_ascii_lowercase().replace("__", ".");
            let Some(kind) = lookup(keys, &path).map(|named| named.kind()) else {
                warnings.push(format!("ignoring {name}: there is no setting {path}"));
                continue;
            };
            let text = value
                .into_string()
                .map_err(|_| format!("{name} is not valid UTF-8"))?;
            let value = parse_text(&kind, &text).map_err(|e| format!("{name}: {e}"))?;
            layer.set(&path, value, name.to_owned());
        }
        if let Some(value) = rust_log.and_then(|v| v.into_string().ok())
            && layer.origin("log_level").is_none()
            && lookup(keys, "log_level").is_some()
        {
            layer.set("log_level", Value::String(value), RUST_LOG.to_owned());
        }
        Ok((layer, warnings))
    }

    /// The config file at `path`. A key it does not know is an error (a typo must not pass
    /// silently); so is a malformed file, with its line.
    pub fn from_file(keys: &[Key], path: &Path) -> Result<Layer, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let table: Table =
            toml::from_str(&text).map_err(|e| format!("invalid config {}: {e}", path.display()))?;
        let mut layer = Layer::default();
        for (key, value) in leaves(keys, &table) {
            if lookup(keys, &key).is_none() {
                return Err(format!(
                    "invalid config {}: unknown key {key}",
                    path.display()
                ));
            }
            layer.set(&key, value, path.display().to_string());
        }
        Ok(layer)
    }

    /// Replaces each `<key>_file` by `<key>` with the named file's contents, trailing newlines
    /// trimmed. Both in one source is an error, and so is a file that cannot be read.
    pub fn read_secret_files(&mut self, keys: &[Key]) -> Result<(), String> {
        let named: Vec<(String, String)> = self
            .origins
            .keys()
            .filter_map(|path| match lookup(keys, path)? {
                Named::FileOf(secret) => Some((path.clone(), secret.path.clone())),
                Named::Key(_) => None,
            })
            .collect();
        for (file_key, key) in named {
            let origin = self.origins.remove(&file_key).unwrap_or_default();
            let value = remove(&mut self.table, &file_key);
            if self.origins.contains_key(&key) {
                return Err(format!("{origin}: set {key} or {file_key}, not both"));
            }
            let Some(Value::String(file)) = value else {
                return Err(format!("{origin}: {file_key} must be a file path"));
            };
            let text = std::fs::read_to_string(&file)
                .map_err(|e| format!("{origin}: cannot read {file_key} {file}: {e}"))?;
            let secret = text.trim_end_matches(['\n', '\r']).to_owned();
            self.set(&key, Value::String(secret), format!("{origin} ({file})"));
        }
        Ok(())
    }

    /// `over`'s keys over this layer's.
    pub fn merge(&mut self, over: Layer) {
        for (path, origin) in over.origins {
            if let Some(value) = leaf(&over.table, &path) {
                self.set(&path, value.clone(), origin);
            }
        }
    }

    /// Reads the layer into `T` (whose keys are `keys`). A value `T` refuses is named with its
    /// key and where it was set.
    pub fn deserialize<T: serde::de::DeserializeOwned>(&self, keys: &[Key]) -> Result<T, String> {
        T::deserialize(Value::Table(self.table.clone())).map_err(|whole| {
            // Find the culprit: each value alone.
            for (path, value) in leaves(keys, &self.table) {
                let mut single = Table::new();
                insert(&mut single, &path, value);
                if let Err(e) = T::deserialize(Value::Table(single)) {
                    let origin = self.origin(&path).unwrap_or("default");
                    return format!("{origin}: invalid {path}: {}", e.message());
                }
            }
            whole.to_string()
        })
    }
}

/// The value at a dotted path.
fn leaf<'t>(table: &'t Table, path: &str) -> Option<&'t Value> {
    match path.split_once('.') {
        None => table.get(path),
        Some((head, rest)) => match table.get(head)? {
            Value::Table(inner) => leaf(inner, rest),
            _ => None,
        },
    }
}

/// What the process was started with: the flags (kept for reloads) and the config file.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    /// The command line's keys.
    pub flags: Layer,
    /// The config file: `--config`, else `CLARION_CONFIG`.
    pub config: Option<PathBuf>,
}

impl Sources {
    /// The sources of a `clarion serve` with these `matches` in an environment of `vars`.
    pub fn new(
        keys: &[Key],
        matches: &clap::ArgMatches,
        vars: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Result<Sources, String> {
        let flags = Layer::from_flags(keys, matches)?;
        let config = matches.get_one::<PathBuf>("config").cloned().or_else(|| {
            vars.into_iter()
                .find(|(name, _)| name == CONFIG_ENV)
                .map(|(_, value)| PathBuf::from(value))
        });
        Ok(Sources { flags, config })
    }

    /// The merged keys of the sources now: defaults, under the file, under the environment
    /// `vars`, under the flags; secret files read. Returns the layer and the warnings.
    pub fn read(
        &self,
        keys: &[Key],
        vars: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Result<(Layer, Vec<String>), String> {
        let mut merged = match &self.config {
            Some(path) => Layer::from_file(keys, path)?,
            None => Layer::default(),
        };
        merged.read_secret_files(keys)?;
        let (mut env, warnings) = Layer::from_env(keys, vars)?;
        env.read_secret_files(keys)?;
        let mut flags = self.flags.clone();
        flags.read_secret_files(keys)?;
        merged.merge(env);
        merged.merge(flags);
        Ok((merged, warnings))
    }
}

/// A fresh directory for a test's files, under the system's temporary directory.
#[cfg(test)]
pub(crate) fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("clarion-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Vec<Key> {
        let key = |path: &str, kind, secret| Key {
            path: path.to_owned(),
            kind,
            secret,
        };
        vec![
            key("threads", Kind::Int, false),
            key("no_pin", Kind::Bool, false),
            key("origins", Kind::List(Box::new(Kind::Text)), false),
            key("ports", Kind::List(Box::new(Kind::Int)), false),
            key("token", Kind::Text, true),
            key("cluster.redis", Kind::Text, true),
            key("cluster.buffer", Kind::Int, false),
        ]
    }

    fn vars(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    #[test]
    fn text_is_typed_by_the_key() {
        assert_eq!(parse_text(&Kind::Int, " 42 "), Ok(Value::Integer(42)));
        assert!(
            parse_text(&Kind::Int, "4x")
                .unwrap_err()
                .contains("integer")
        );
        assert_eq!(parse_text(&Kind::Bool, "Yes"), Ok(Value::Boolean(true)));
        assert_eq!(parse_text(&Kind::Bool, "0"), Ok(Value::Boolean(false)));
        assert!(parse_text(&Kind::Bool, "maybe").is_err());
        // Text is kept as given: a secret may end in spaces.
        assert_eq!(
            parse_text(&Kind::Text, " a "),
            Ok(Value::String(" a ".into()))
        );
        let list = Kind::List(Box::new(Kind::Text));
        assert_eq!(
            parse_text(&list, "a, b,,c"),
            Ok(Value::Array(vec!["a".into(), "b".into(), "c".into()]))
        );
        assert_eq!(parse_text(&list, ""), Ok(Value::Array(vec![])));
        assert_eq!(
            parse_text(&list, r#"["x,y", "z"]"#),
            Ok(Value::Array(vec!["x,y".into(), "z".into()]))
        );
        let ints = Kind::List(Box::new(Kind::Int));
        assert_eq!(
            parse_text(&ints, "1,2"),
            Ok(Value::Array(vec![1.into(), 2.into()]))
        );
        assert_eq!(
            parse_text(&ints, r#"[1, "2"]"#),
            Ok(Value::Array(vec![1.into(), 2.into()]))
        );
        assert!(parse_text(&Kind::Map, "x").is_err());
    }

    #[test]
    fn the_environment_sets_keys_nested_with_double_underscores() {
        let keys = keys();
        let (layer, warnings) = Layer::from_env(
            &keys,
            vars(&[
                ("CLARION_THREADS", "3"),
                ("CLARION_CLUSTER__BUFFER", "10"),
                ("CLARION_TEST_IO", "epoll"),
                ("CLARION_CONFIG", "/x.toml"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(layer.table()["threads"], Value::Integer(3));
        assert_eq!(layer.table()["cluster"]["buffer"], Value::Integer(10));
        assert_eq!(
            layer.origin("cluster.buffer"),
            Some("CLARION_CLUSTER__BUFFER")
        );
        assert_eq!(layer.table().len(), 2);
        assert_eq!(
            warnings,
            ["ignoring CLARION_TEST_IO: there is no setting test_io"]
        );
        let bad = Layer::from_env(&keys, vars(&[("CLARION_THREADS", "many")]));
        assert_eq!(
            bad.unwrap_err(),
            "CLARION_THREADS: expected an integer, found \"many\""
        );
    }

    #[test]
    fn layers_merge_key_by_key() {
        let keys = keys();
        let file = scratch_dir("merge").join("clarion.toml");
        std::fs::write(
            &file,
            "threads = 1\nno_pin = true\n[cluster]\nredis = \"redis://f\"\nbuffer = 5\n",
        )
        .unwrap();
        let mut merged = Layer::from_file(&keys, &file).unwrap();
        let (env, _) = Layer::from_env(
            &keys,
            vars(&[
                ("CLARION_THREADS", "2"),
                ("CLARION_CLUSTER__REDIS", "redis://e"),
            ]),
        )
        .unwrap();
        merged.merge(env);
        let t = merged.table();
        assert_eq!(t["threads"], Value::Integer(2));
        assert_eq!(t["no_pin"], Value::Boolean(true));
        assert_eq!(t["cluster"]["redis"], Value::String("redis://e".into()));
        assert_eq!(t["cluster"]["buffer"], Value::Integer(5));
        assert_eq!(merged.origin("threads"), Some("CLARION_THREADS"));
        assert_eq!(merged.origin("no_pin"), Some(file.to_str().unwrap()));
    }

    #[test]
    fn unknown_file_keys_are_errors() {
        let keys = keys();
        let file = scratch_dir("unknown").join("bad.toml");
        std::fs::write(&file, "[cluster]\nredos = 1\n").unwrap();
        let error = Layer::from_file(&keys, &file).unwrap_err();
        assert!(error.ends_with("unknown key cluster.redos"), "{error}");
        std::fs::write(&file, "threads = \n").unwrap();
        assert!(
            Layer::from_file(&keys, &file)
                .unwrap_err()
                .contains("line 1")
        );
        std::fs::write(&file, "token_file = \"/x\"\nthreads_file = \"/y\"").unwrap();
        let error = Layer::from_file(&keys, &file).unwrap_err();
        assert!(error.ends_with("unknown key threads_file"), "{error}");
    }

    #[test]
    fn secrets_come_from_files_trimmed() {
        let keys = keys();
        let dir = scratch_dir("secrets");
        let secret = dir.join("token");
        std::fs::write(&secret, "s3cret\n\n").unwrap();
        let path = secret.to_str().unwrap();
        let (mut env, _) = Layer::from_env(
            &keys,
            vars(&[
                ("CLARION_TOKEN_FILE", path),
                ("CLARION_CLUSTER__REDIS_FILE", path),
            ]),
        )
        .unwrap();
        env.read_secret_files(&keys).unwrap();
        assert_eq!(env.table()["token"], Value::String("s3cret".into()));
        assert_eq!(
            env.table()["cluster"]["redis"],
            Value::String("s3cret".into())
        );
        assert!(!env.table().contains_key("token_file"));
        assert!(
            env.origin("token")
                .unwrap()
                .starts_with("CLARION_TOKEN_FILE")
        );

        let (mut both, _) = Layer::from_env(
            &keys,
            vars(&[("CLARION_TOKEN_FILE", path), ("CLARION_TOKEN", "x")]),
        )
        .unwrap();
        assert!(
            both.read_secret_files(&keys)
                .unwrap_err()
                .contains("not both")
        );

        let missing = dir.join("missing");
        let (mut gone, _) = Layer::from_env(
            &keys,
            vars(&[("CLARION_TOKEN_FILE", missing.to_str().unwrap())]),
        )
        .unwrap();
        let error = gone.read_secret_files(&keys).unwrap_err();
        assert!(
            error.starts_with("CLARION_TOKEN_FILE: cannot read token_file"),
            "{error}"
        );
    }

    #[test]
    fn changes_are_named_by_key() {
        let keys = keys();
        let old: Table = toml::from_str("threads = 1\n[cluster]\nbuffer = 2").unwrap();
        let new: Table = toml::from_str("no_pin = true\n[cluster]\nbuffer = 3").unwrap();
        assert_eq!(
            changed(&keys, &old, &new),
            ["cluster.buffer", "no_pin", "threads"]
        );
        assert!(changed(&keys, &old, &old).is_empty());
    }
}
