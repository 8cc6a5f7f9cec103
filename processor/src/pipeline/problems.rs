//! What is wrong with a definition: each [`Problem`] with its file, line, path and fix.
//! Both passes of loading add to one [`Problems`]: pass 1 ([`super::validate`], the
//! YAML's shape) and pass 2 ([`super::compile`], its meaning). A module of its own so that
//! the two passes do not import each other.

use super::locate::LineIndex;
use std::fmt;

/// One thing wrong with a definition.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Problem {
    pub file: String,
    pub line: Option<usize>,
    pub path: String,
    pub message: String,
    pub fix: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}: ", self.file, l)?,
            None => write!(f, "{}: ", self.file)?,
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        write!(f, "{}\n  fix: {}", self.message, self.fix)
    }
}

/// Collects problems for one file.
pub struct Problems {
    file: String,
    lines: LineIndex,
    pub(super) list: Vec<Problem>,
}

impl Problems {
    pub(super) fn new(file: &str, text: &str) -> Problems {
        Problems {
            file: file.to_string(),
            lines: LineIndex::new(text),
            list: Vec::new(),
        }
    }

    pub fn add(&mut self, path: &str, message: impl Into<String>, fix: impl Into<String>) {
        self.list.push(Problem {
            file: self.file.clone(),
            line: self.lines.line(path),
            path: path.to_string(),
            message: message.into(),
            fix: fix.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}
