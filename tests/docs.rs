//! The docs agree with the code: every config key, read off the settings type, is in
//! `config/clarion.toml` and in the reference of `docs/configuration.md`; neither lists a key
//! that does not exist; and the reference's reload column says "live" exactly for the keys a
//! reload applies. A key added to the settings fails here until it is documented.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use clarion::server::config::keys;
use clarion::server::keys::FILE_SUFFIX;
use clarion::server::reload::is_live;

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

/// Every key a user can set, as `table.key`: the settings' keys and the secrets' `_file` forms.
fn code_keys() -> BTreeSet<String> {
    keys()
        .iter()
        .flat_map(|key| {
            let file = key.secret.then(|| format!("{}{FILE_SUFFIX}", key.path));
            std::iter::once(key.path.clone()).chain(file)
        })
        .collect()
}

/// The keys of an example file, set or commented out (`# key = …`), by table.
fn example_keys(text: &str) -> BTreeSet<String> {
    let mut table = String::new();
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim_start_matches(['#', ' ']);
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            table = format!("{name}.");
            continue;
        }
        let Some((key, _)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        let is_key = key.starts_with(|c: char| c.is_ascii_lowercase())
            && key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if is_key {
            found.insert(format!("{table}{key}"));
        }
    }
    found
}

/// The reference's rows: key and reload column.
fn reference_rows(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let mut cells = line.strip_prefix("| `")?.split(" | ");
            let key = cells.next()?.strip_suffix('`')?;
            let reload = cells.nth(1)?;
            Some((key.to_owned(), reload.to_owned()))
        })
        .collect()
}

fn assert_same(what: &str, documented: &BTreeSet<String>) {
    let code = code_keys();
    let missing: Vec<_> = code.difference(documented).collect();
    let unknown: Vec<_> = documented.difference(&code).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "{what}: keys of the code missing: {missing:?}; listed but no key: {unknown:?}"
    );
}

#[test]
fn the_example_file_lists_every_key() {
    assert_same(
        "config/clarion.toml",
        &example_keys(&read("config/clarion.toml")),
    );
}

#[test]
fn the_reference_lists_every_key_and_what_a_reload_does() {
    let rows = reference_rows(&read("docs/configuration.md"));
    assert_same("docs/configuration.md", &rows.keys().cloned().collect());
    for (key, reload) in &rows {
        let base = key
            .strip_suffix(FILE_SUFFIX)
            .filter(|base| keys().iter().any(|k| k.secret && k.path == *base));
        let live = is_live(base.unwrap_or(key));
        let expected = if live { "live" } else { "restart" };
        assert_eq!(reload, expected, "docs/configuration.md: reload of {key}");
    }
}

#[test]
fn the_parsers_of_this_test_see_what_they_should() {
    let example = "a = 1\n# b_c = \"x\"\n# prose, with = signs\n[t]\nd = 2\n# [u]\n# e = 3\n";
    let found: Vec<_> = example_keys(example).into_iter().collect();
    assert_eq!(found, ["a", "b_c", "t.d", "u.e"]);
    let rows = reference_rows("| key | default | reload | what |\n| `x.y` | `1` | live | z |\n");
    assert_eq!(rows.get("x.y").map(String::as_str), Some("live"));
    assert_eq!(rows.len(), 1);
}
