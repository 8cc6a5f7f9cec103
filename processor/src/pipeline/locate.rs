//! Finds the line of a path such as `steps[2].window.size` in a YAML text, so that every
//! validation problem can point at its line. serde gives no positions for values, so this
//! walks yaml-rust2's marked events once and records where each path starts.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

enum Frame {
    Map { key: Option<String> },
    Seq { index: usize },
}

#[derive(Default)]
struct Recorder {
    stack: Vec<(String, Frame)>,
    lines: HashMap<String, usize>,
}

fn join(base: &str, key: &str) -> String {
    if base.is_empty() {
        key.to_string()
    } else {
        format!("{base}.{key}")
    }
}

impl Recorder {
    /// The path of a node that starts now, or `None` when the node is a mapping key.
    fn node_path(&mut self, scalar: Option<&str>, line: usize) -> Option<String> {
        let Some((base, frame)) = self.stack.last_mut() else {
            return Some(String::new());
        };
        match frame {
            Frame::Map { key } => match key.take() {
                None => {
                    let k = scalar.unwrap_or("?").to_string();
                    let path = join(base, &k);
                    self.lines.entry(path).or_insert(line);
                    *key = Some(k);
                    None
                }
                Some(k) => Some(join(base, &k)),
            },
            Frame::Seq { index } => {
                let path = format!("{base}[{index}]");
                *index += 1;
                self.lines.entry(path.clone()).or_insert(line);
                Some(path)
            }
        }
    }
}

impl MarkedEventReceiver for Recorder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            Event::Scalar(ref s, ..) => {
                self.node_path(Some(s), line);
            }
            Event::Alias(_) => {
                self.node_path(None, line);
            }
            Event::MappingStart(..) => {
                if let Some(p) = self.node_path(None, line) {
                    self.lines.entry(p.clone()).or_insert(line);
                    self.stack.push((p, Frame::Map { key: None }));
                } else {
                    // A complex mapping key: track it so the stack stays balanced.
                    self.stack.push(("?".into(), Frame::Map { key: None }));
                }
            }
            Event::SequenceStart(..) => {
                if let Some(p) = self.node_path(None, line) {
                    self.lines.entry(p.clone()).or_insert(line);
                    self.stack.push((p, Frame::Seq { index: 0 }));
                } else {
                    self.stack.push(("?".into(), Frame::Seq { index: 0 }));
                }
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

/// Line numbers (1-based) of the paths in a YAML document.
pub struct LineIndex {
    lines: HashMap<String, usize>,
}

impl LineIndex {
    pub fn new(text: &str) -> LineIndex {
        let mut rec = Recorder::default();
        let mut parser = Parser::new_from_str(text);
        // A syntax error comes with yaml_serde's own position; keep what was seen.
        let _ = parser.load(&mut rec, false);
        LineIndex { lines: rec.lines }
    }

    /// The line of `path`, or of its nearest ancestor that has one.
    pub fn line(&self, path: &str) -> Option<usize> {
        let mut p = path.to_string();
        loop {
            if let Some(l) = self.lines.get(&p) {
                return Some(*l);
            }
            let cut = p.rfind(['.', '['])?;
            p.truncate(cut);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_paths() {
        let text =
            "a: 1\nsteps:\n  - filter: x\n  - window:\n      type: tumbling\n      size: 5s\n";
        let idx = LineIndex::new(text);
        assert_eq!(idx.line("a"), Some(1));
        assert_eq!(idx.line("steps[0].filter"), Some(3));
        assert_eq!(idx.line("steps[1].window.size"), Some(6));
        assert_eq!(idx.line("steps[1].window.grace"), Some(4));
    }
}
