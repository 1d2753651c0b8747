//! Shape errors (unknown key, wrong type) reported all at once. serde stops at the first one, so
//! [`parse_all`] blanks out the entry it is about (its bytes become spaces, newlines stay, so
//! every later span and line number still points into the file as written), parses again, and
//! repeats, up to [`MAX_SHAPE_PROBLEMS`] times. When only key-value entries had to go, the caller
//! validates what is left as usual, so one run of `check-config` lists an unknown key, a bad
//! capture word and an out-of-range port together.
//!
//! Recovery never invents a problem: it stops (and the caller skips validation) when the next
//! error could be its own doing (a missing key after something was blanked, a blanked entry that
//! leaves the syntax broken) or when no entry can be found around an error.

use std::ops::Range;

use serde::de::DeserializeOwned;
use toml_edit::{Document, Item, Table};

use super::{Kind, Problem, toml_problem};

/// Most shape problems collected from one file.
pub const MAX_SHAPE_PROBLEMS: usize = 16;

/// What [`parse_all`] made of a file.
#[derive(Debug)]
pub struct Parsed<T> {
    /// The file as deserialized once every reported entry was left out; `None` when recovery
    /// had to stop, or when a whole table was left out (then validating the rest would report
    /// what is merely missing).
    pub value: Option<T>,
    /// Shape problems, by line.
    pub problems: Vec<Problem>,
}

/// Deserializes `text`, collecting every shape problem rather than the first one.
#[must_use]
pub fn parse_all<T: DeserializeOwned>(kind: &Kind, text: &str) -> Parsed<T> {
    let mut current = text.to_owned();
    let mut problems = Vec::new();
    let mut blanked_any = false;
    let mut blanked_table = false;
    let parsed = loop {
        let err = match toml::from_str::<T>(&current) {
            Ok(value) => {
                break Parsed {
                    value: (!blanked_table).then_some(value),
                    problems,
                };
            }
            Err(err) => err,
        };
        let missing = err.message().starts_with("missing field");
        if missing && blanked_any {
            // Perhaps the entry just blanked: say nothing rather than something untrue.
            break Parsed {
                value: None,
                problems,
            };
        }
        problems.push(toml_problem(kind, text, &err));
        let entry = err
            .span()
            .and_then(|span| entry_around(&current, span.start));
        let Some(entry) = entry.filter(|_| !missing && problems.len() < MAX_SHAPE_PROBLEMS) else {
            break Parsed {
                value: None,
                problems,
            };
        };
        let Some(next) = blank(&current, &entry.range) else {
            break Parsed {
                value: None,
                problems,
            };
        };
        current = next;
        blanked_any = true;
        blanked_table |= entry.is_table;
    };
    let mut parsed = parsed;
    parsed
        .problems
        .sort_by_key(|p| p.line.unwrap_or(usize::MAX));
    parsed
}

/// An entry of the document: a `key = value` line (or several, for a multi-line value), or a
/// whole `[table]` with its keys.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    range: Range<usize>,
    is_table: bool,
}

/// The innermost entry of `text` that contains byte `at`.
fn entry_around(text: &str, at: usize) -> Option<Entry> {
    let doc = Document::parse(text).ok()?;
    let mut best = None;
    visit_table(doc.as_table(), at, &mut best);
    best
}

fn visit_table(table: &Table, at: usize, best: &mut Option<Entry>) {
    for (name, item) in table {
        let key_start = table
            .key(name)
            .and_then(toml_edit::Key::span)
            .map(|s| s.start);
        match item {
            Item::Table(sub) => {
                if let Some(header) = sub.span().filter(|h| h.start < h.end) {
                    let end = extent_end(sub).max(header.end);
                    consider(header.start..end, true, at, best);
                }
                visit_table(sub, at, best);
            }
            Item::ArrayOfTables(array) => {
                for sub in array {
                    if let Some(header) = sub.span().filter(|h| h.start < h.end) {
                        let end = extent_end(sub).max(header.end);
                        consider(header.start..end, true, at, best);
                    }
                    visit_table(sub, at, best);
                }
            }
            Item::Value(value) => {
                if let (Some(start), Some(span)) = (key_start, value.span()) {
                    consider(start..span.end, false, at, best);
                }
            }
            Item::None => {}
        }
    }
}

/// Where the last key-value written under this table header ends.
fn extent_end(table: &Table) -> usize {
    table
        .iter()
        .filter_map(|(_, item)| match item {
            Item::Value(v) => v.span().map(|s| s.end),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

/// Keeps `range` if it contains `at` and is narrower than the best so far.
fn consider(range: Range<usize>, is_table: bool, at: usize, best: &mut Option<Entry>) {
    if !range.contains(&at) {
        return;
    }
    if best.as_ref().is_none_or(|b| range.len() < b.range.len()) {
        *best = Some(Entry { range, is_table });
    }
}

/// `text` with `range` made spaces (newlines kept), if that leaves valid TOML and changed
/// something.
fn blank(text: &str, range: &Range<usize>) -> Option<String> {
    let mut bytes = text.as_bytes().to_vec();
    let mut changed = false;
    for b in bytes.get_mut(range.clone())? {
        if !b.is_ascii_whitespace() {
            *b = b' ';
            changed = true;
        }
    }
    // Every byte of the range became ASCII, and the range's ends are char boundaries (they are
    // toml_edit spans), so this only fails on a bad span.
    let out = String::from_utf8(bytes).ok()?;
    (changed && Document::parse(out.as_str()).is_ok()).then_some(out)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    const KIND: Kind = Kind {
        what: "config",
        docs: "docs/CONFIG.md",
        max_bytes: 1 << 20,
    };

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Root {
        server: Server,
        #[serde(rename = "user")]
        users: Vec<User>,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Server {
        port: u16,
        name: String,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct User {
        name: String,
        #[serde(default)]
        ports: Vec<u16>,
    }

    fn lines(p: &Parsed<Root>) -> Vec<Option<usize>> {
        p.problems.iter().map(|p| p.line).collect()
    }

    #[test]
    fn a_clean_file_parses_with_no_problem() {
        let p = parse_all::<Root>(&KIND, "[server]\nport = 1\n");
        assert!(p.problems.is_empty());
        assert_eq!(p.value.map(|r| r.server.port), Some(1));
    }

    #[test]
    fn every_bad_key_value_is_reported_and_the_rest_kept() {
        let text = "bogus = 1\n[server]\nport = 70000\nnmae = \"x\"\nname = \"kept\"\n\
                    [[user]]\nname = \"a\"\nports = [\n  1,\n  \"two\",\n]\nextra = true\n";
        let p = parse_all::<Root>(&KIND, text);
        assert_eq!(
            lines(&p),
            vec![Some(1), Some(3), Some(4), Some(10), Some(12)],
            "{:?}",
            p.problems
        );
        assert!(p.problems[0].message.starts_with("unknown field `bogus`"));
        let kept = p.value.expect("only key-values were left out");
        assert_eq!(kept.server.name, "kept");
        assert_eq!(kept.users.len(), 1);
    }

    #[test]
    fn an_unknown_table_is_reported_and_validation_is_skipped() {
        let text = "[sever]\nport = 1\n[server]\nport = 80000\n";
        let p = parse_all::<Root>(&KIND, text);
        assert_eq!(lines(&p), vec![Some(1), Some(4)], "{:?}", p.problems);
        assert!(p.value.is_none());
    }

    #[test]
    fn a_missing_key_caused_by_blanking_is_not_reported() {
        // `name` has the wrong type; once blanked, `name` is missing: that is not news.
        let p = parse_all::<Root>(&KIND, "[[user]]\nname = 5\n");
        assert_eq!(lines(&p), vec![Some(2)], "{:?}", p.problems);
        assert!(p.value.is_none());
    }

    #[test]
    fn a_genuinely_missing_key_is_reported() {
        let p = parse_all::<Root>(&KIND, "[[user]]\nports = [1]\n");
        assert_eq!(p.problems.len(), 1);
        assert!(p.problems[0].message.starts_with("missing field `name`"));
    }

    #[test]
    fn a_syntax_error_is_one_problem() {
        let p = parse_all::<Root>(&KIND, "[server]\nport = = 1\n");
        assert_eq!(lines(&p), vec![Some(2)]);
        assert!(p.value.is_none());
    }

    #[test]
    fn a_bad_entry_inside_an_inline_table_stops_rather_than_breaking_syntax() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Outer {
            #[expect(dead_code, reason = "only the shape matters")]
            t: Inner,
        }
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Inner {
            #[expect(dead_code, reason = "only the shape matters")]
            a: u8,
        }
        let p = parse_all::<Outer>(&KIND, "t = { a = 1, b = 2 }\nu = 3\n");
        // `b` is inside `t`'s inline table: all of `t = {...}` is the innermost entry; then `u`
        // is reported, and `t`'s absence is not.
        assert_eq!(p.problems.len(), 2, "{:?}", p.problems);
        assert!(p.problems[1].message.starts_with("unknown field `u`"));
        assert!(p.value.is_none());
    }

    #[test]
    fn at_most_the_cap_is_collected() {
        let text = (0..40).fold(String::new(), |mut t, i| {
            t.push_str("bogus");
            t.push_str(&i.to_string());
            t.push_str(" = 1\n");
            t
        });
        let p = parse_all::<Root>(&KIND, &text);
        assert_eq!(p.problems.len(), MAX_SHAPE_PROBLEMS);
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_always_explains_a_failure(text in "\\PC{0,300}") {
            let p = parse_all::<Root>(&KIND, &text);
            proptest::prop_assert!(p.value.is_some() || !p.problems.is_empty());
            proptest::prop_assert!(p.problems.len() <= MAX_SHAPE_PROBLEMS);
        }
    }
}
