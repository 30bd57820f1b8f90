//! Maps a field path (`backends[2].url`) to its line in the YAML source, so errors
//! found after deserialization (duplicates, cross-field rules) still name a line.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Field path → 1-based line of its value (or of its key for mappings and sequences).
#[derive(Debug, Default)]
pub struct LineIndex {
    lines: HashMap<String, u32>,
}

impl LineIndex {
    /// Indexes `source`; a document the parser rejects yields an empty index (the
    /// deserializer reports that error with its own location).
    pub fn new(source: &str) -> Self {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(source);
        if parser.load(&mut builder, false).is_err() {
            return Self::default();
        }
        Self {
            lines: builder.lines,
        }
    }

    /// Line of `path`, or of its closest indexed ancestor.
    pub fn line_of(&self, path: &str) -> Option<u32> {
        let mut p = path;
        loop {
            if let Some(&line) = self.lines.get(p) {
                return Some(line);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

enum Frame {
    Map { key: Option<String> },
    Seq { index: usize },
}

#[derive(Default)]
struct Builder {
    stack: Vec<(Frame, String)>,
    lines: HashMap<String, u32>,
}

impl Builder {
    /// Path of the node that is about to start, and records it.
    fn enter(&mut self, line: u32) -> Option<String> {
        let path = match self.stack.last_mut() {
            None => String::new(),
            Some((Frame::Map { key }, base)) => {
                let key = key.take()?;
                if base.is_empty() {
                    key
                } else {
                    format!("{base}.{key}")
                }
            }
            Some((Frame::Seq { index }, base)) => {
                let p = format!("{base}[{index}]");
                *index += 1;
                p
            }
        };
        self.lines.entry(path.clone()).or_insert(line);
        Some(path)
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line() as u32;
        match ev {
            Event::Scalar(value, ..) => {
                // A scalar in key position names the next value.
                if let Some((Frame::Map { key }, _)) = self.stack.last_mut()
                    && key.is_none()
                {
                    *key = Some(value);
                    return;
                }
                self.enter(line);
            }
            Event::Alias(_) => {
                self.enter(line);
            }
            Event::MappingStart(..) => {
                let path = self.enter(line).unwrap_or_default();
                self.stack.push((Frame::Map { key: None }, path));
            }
            Event::SequenceStart(..) => {
                let path = self.enter(line).unwrap_or_default();
                self.stack.push((Frame::Seq { index: 0 }, path));
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_paths() {
        let src = "server:\n  port: 8080\nbackends:\n  - url: \"http://a:80\"\n    weight: 1\n  - url: http://b:80\n";
        let idx = LineIndex::new(src);
        assert_eq!(idx.line_of("server.port"), Some(2));
        assert_eq!(idx.line_of("backends[0].url"), Some(4));
        assert_eq!(idx.line_of("backends[0].weight"), Some(5));
        assert_eq!(idx.line_of("backends[1].url"), Some(6));
        // unknown leaf falls back to its parent
        assert_eq!(idx.line_of("backends[1].nope"), Some(6));
        assert_eq!(idx.line_of("nothing"), None);
    }
}
