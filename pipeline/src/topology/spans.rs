//! Where each value of a YAML document is: a map from dotted paths
//! (`processors.analysis.inputs[0]`) to line and column.
//!
//! serde loses positions once a document is deserialized into values, so validation
//! looks positions up here by path. Paths name mapping keys by their text and sequence
//! items by index, the same way [`super::path`] builds them.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

use super::diagnostics::Location;

#[derive(Debug, Default)]
pub struct Spans {
    by_path: HashMap<String, Location>,
}

impl Spans {
    /// Indexes `text`. A syntax error is reported by serde's parser with its own
    /// position, so here it only stops indexing early.
    pub fn index(text: &str) -> Self {
        let mut builder = Builder::default();
        let _ = Parser::new_from_str(text).load(&mut builder, false);
        Spans {
            by_path: builder.by_path,
        }
    }

    /// The position of `path`, or of its nearest ancestor that has one.
    pub fn find(&self, path: &str) -> Option<Location> {
        let mut path = path;
        loop {
            if let Some(loc) = self.by_path.get(path) {
                return Some(*loc);
            }
            let cut = path.rfind(['.', '['])?;
            path = &path[..cut];
        }
    }
}

enum Frame {
    Mapping { key: Option<String> },
    Sequence { index: usize },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    by_path: HashMap<String, Location>,
}

impl Builder {
    fn current_path(&self) -> String {
        let mut path = String::new();
        for frame in &self.stack {
            match frame {
                Frame::Mapping { key: Some(k) } => super::path::push_key(&mut path, k),
                Frame::Mapping { key: None } => {}
                Frame::Sequence { index } => super::path::push_index(&mut path, *index),
            }
        }
        path
    }

    /// Called when a complete value (scalar, mapping or sequence) has been read.
    fn value_done(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Mapping { key }) => *key = None,
            Some(Frame::Sequence { index }) => *index += 1,
            None => {}
        }
    }

    fn value_starts(&mut self, mark: Marker) {
        let location = Location {
            line: mark.line(),
            column: mark.col() + 1,
        };
        let path = self.current_path();
        if let Some(Frame::Sequence { .. }) = self.stack.last() {
            self.by_path.entry(path).or_insert(location);
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(text, ..) => {
                if let Some(Frame::Mapping { key: key @ None }) = self.stack.last_mut() {
                    *key = Some(text);
                    let location = Location {
                        line: mark.line(),
                        column: mark.col() + 1,
                    };
                    let path = self.current_path();
                    self.by_path.entry(path).or_insert(location);
                } else {
                    self.value_starts(mark);
                    self.value_done();
                }
            }
            Event::Alias(_) => {
                self.value_starts(mark);
                self.value_done();
            }
            Event::MappingStart(..) => {
                self.value_starts(mark);
                self.stack.push(Frame::Mapping { key: None });
            }
            Event::SequenceStart(..) => {
                self.value_starts(mark);
                self.stack.push(Frame::Sequence { index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.value_done();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_items_and_nearest_ancestor() {
        let text = "region: us\nprocessors:\n  analysis:\n    kind: claim_analysis\n    inputs:\n      - pg\n      - other\n";
        let spans = Spans::index(text);
        assert_eq!(spans.find("region"), Some(Location { line: 1, column: 1 }));
        assert_eq!(
            spans.find("processors.analysis.kind"),
            Some(Location { line: 4, column: 5 })
        );
        assert_eq!(
            spans.find("processors.analysis.inputs[1]"),
            Some(Location { line: 7, column: 9 })
        );
        assert_eq!(
            spans.find("processors.analysis.missing_field"),
            Some(Location { line: 3, column: 3 })
        );
    }
}
