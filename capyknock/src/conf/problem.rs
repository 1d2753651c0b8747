//! Problems found in a config file: each with its line, all collected in one pass so one run
//! shows everything to fix, rendered as `FILE:LINE: message`.

use std::{fmt, ops::Range, path::Path};

use super::Kind;

/// One thing wrong in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// What is wrong and what to do.
    pub message: String,
}

/// 1-based line of the start of `span` in `text` (toml's spans are byte offsets).
#[expect(
    clippy::naive_bytecount,
    reason = "config files are small and read once"
)]
#[must_use]
pub fn line_of(text: &str, span: &Range<usize>) -> usize {
    let end = span.start.min(text.len());
    text.as_bytes()
        .get(..end)
        .map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
        + 1
}

/// Collects problems while validating: each with the line of the value it is about.
#[derive(Debug)]
pub struct Checker<'a> {
    text: &'a str,
    context: String,
    problems: Vec<Problem>,
}

impl<'a> Checker<'a> {
    /// A checker for `text`, the whole file.
    #[must_use]
    pub fn new(text: &'a str) -> Self {
        Self::with_context(text, String::new())
    }

    /// A checker whose messages start with `context` and a space (e.g. `[profile.work]`).
    #[must_use]
    pub fn with_context(text: &'a str, context: String) -> Self {
        Self {
            text,
            context,
            problems: Vec::new(),
        }
    }

    /// A problem with the value at `span`.
    pub fn at(&mut self, span: &Range<usize>, message: impl fmt::Display) {
        let line = self.line(span);
        self.at_line(Some(line), message);
    }

    /// A problem at `line`, or about the file as a whole (`None`).
    pub fn at_line(&mut self, line: Option<usize>, message: impl fmt::Display) {
        let message = if self.context.is_empty() {
            message.to_string()
        } else {
            format!("{} {message}", self.context)
        };
        self.problems.push(Problem { line, message });
    }

    /// The line of `span`.
    #[must_use]
    pub fn line(&self, span: &Range<usize>) -> usize {
        line_of(self.text, span)
    }

    /// How many problems so far (compare before and after checking one part).
    #[must_use]
    pub fn count(&self) -> usize {
        self.problems.len()
    }

    /// Whether no problem was found.
    #[must_use]
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    /// The problems, in the order found.
    #[must_use]
    pub fn into_problems(self) -> Vec<Problem> {
        self.problems
    }
}

/// A TOML syntax or shape error (unknown key, missing key, wrong type) as a problem, with a
/// hint pointing at the documentation.
#[must_use]
pub fn toml_problem(kind: &Kind, text: &str, err: &toml::de::Error) -> Problem {
    let message = err.message().trim_end();
    let docs = kind.docs;
    let hint = if message.starts_with("unknown field") {
        format!("remove it or fix its spelling ({docs} lists every key)")
    } else if message.starts_with("missing field") {
        format!("add it ({docs} describes it)")
    } else {
        format!("fix it (see {docs})")
    };
    Problem {
        line: err.span().map(|s| line_of(text, &s)),
        message: format!("{message}: {hint}"),
    }
}

/// `WHAT PATH has N problems:` and one `PATH:LINE: message` line per problem.
#[must_use]
pub fn render_problems(kind: &Kind, path: &Path, problems: &[Problem]) -> String {
    use fmt::Write as _;
    let mut out = format!(
        "{} {} has {} problem{}:",
        kind.what,
        path.display(),
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems {
        match p.line {
            Some(line) => {
                let _ = write!(out, "\n  {}:{line}: {}", path.display(), p.message);
            }
            None => {
                let _ = write!(out, "\n  {}: {}", path.display(), p.message);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIND: Kind = Kind {
        what: "config",
        docs: "docs/X.md",
        max_bytes: 100,
    };

    #[test]
    fn lines_count_from_one_and_clamp() {
        let text = "a\nb\nc";
        assert_eq!(line_of(text, &(0..1)), 1);
        assert_eq!(line_of(text, &(2..3)), 2);
        assert_eq!(line_of(text, &(4..5)), 3);
        assert_eq!(line_of(text, &(99..100)), 3);
    }

    #[test]
    fn checker_prefixes_and_counts() {
        let mut c = Checker::with_context("x = 1\ny = 2\n", "[profile.a]".into());
        assert!(c.is_clean());
        c.at(&(6..7), "bad y");
        c.at_line(None, "general");
        assert_eq!(c.count(), 2);
        assert_eq!(
            c.into_problems(),
            vec![
                Problem {
                    line: Some(2),
                    message: "[profile.a] bad y".into()
                },
                Problem {
                    line: None,
                    message: "[profile.a] general".into()
                }
            ]
        );
    }

    #[test]
    fn rendered_with_file_and_line() {
        let path = Path::new("/etc/x.toml");
        let one = render_problems(
            &KIND,
            path,
            &[Problem {
                line: Some(3),
                message: "m".into(),
            }],
        );
        assert_eq!(one, "config /etc/x.toml has 1 problem:\n  /etc/x.toml:3: m");
        let two = render_problems(
            &KIND,
            path,
            &[
                Problem {
                    line: None,
                    message: "a".into(),
                },
                Problem {
                    line: Some(1),
                    message: "b".into(),
                },
            ],
        );
        assert_eq!(
            two,
            "config /etc/x.toml has 2 problems:\n  /etc/x.toml: a\n  /etc/x.toml:1: b"
        );
    }

    #[test]
    fn toml_errors_say_what_to_do() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[expect(dead_code, reason = "only parsed")]
        struct T {
            a: u8,
        }
        let cases = [
            (
                "a = 1\nb = 2\n",
                Some(2),
                "fix its spelling (docs/X.md lists every key)",
            ),
            ("", None, "add it (docs/X.md describes it)"),
            ("a = \n", Some(1), "fix it (see docs/X.md)"),
        ];
        for (text, line, hint) in cases {
            let err = toml::from_str::<T>(text).unwrap_err();
            let p = toml_problem(&KIND, text, &err);
            assert!(p.message.ends_with(hint), "{p:?}");
            if line.is_some() {
                assert_eq!(p.line, line, "{p:?}");
            }
        }
    }
}
