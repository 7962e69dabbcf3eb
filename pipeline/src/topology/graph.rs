//! Renders a topology as a Mermaid flowchart or a Graphviz DOT graph.

use std::fmt::Write;

use super::catalog::Role;
use super::model::{Input, Topology};

fn input_node(input: &Input) -> (String, Option<String>) {
    match input {
        Input::Component { name, port } => (name.clone(), port.clone()),
        Input::Topic(t) => (format!("topic_{}", sanitize(t)), None),
    }
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn external_topics(topology: &Topology) -> Vec<&str> {
    let mut topics: Vec<&str> = topology
        .components
        .iter()
        .flat_map(|c| &c.inputs)
        .filter_map(|i| match i {
            Input::Topic(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    topics.sort_unstable();
    topics.dedup();
    topics
}

pub fn mermaid(topology: &Topology) -> String {
    let mut out = String::from("flowchart LR\n");
    for c in &topology.components {
        let label = format!("{}<br/><i>{}</i>", c.name, c.kind);
        let _ = match c.role {
            Role::Source => writeln!(out, "  {}[(\"{label}\")]", c.name),
            Role::Processor => writeln!(out, "  {}[\"{label}\"]", c.name),
            Role::Sink => writeln!(out, "  {}[/\"{label}\"/]", c.name),
        };
    }
    for t in external_topics(topology) {
        let _ = writeln!(out, "  topic_{}>\"topic {t}\"]", sanitize(t));
    }
    for c in &topology.components {
        for input in &c.inputs {
            let (from, port) = input_node(input);
            let _ = match port {
                Some(p) => writeln!(out, "  {from} -- {p} --> {}", c.name),
                None => writeln!(out, "  {from} --> {}", c.name),
            };
        }
    }
    out
}

pub fn dot(topology: &Topology) -> String {
    let mut out = format!("digraph \"{}\" {{\n  rankdir=LR;\n", topology.region);
    for c in &topology.components {
        let shape = match c.role {
            Role::Source => "cylinder",
            Role::Processor => "box",
            Role::Sink => "folder",
        };
        let _ = writeln!(
            out,
            "  \"{}\" [shape={shape}, label=\"{}\\n({})\"];",
            c.name, c.name, c.kind
        );
    }
    for t in external_topics(topology) {
        let _ = writeln!(
            out,
            "  \"topic_{}\" [shape=cds, label=\"topic {t}\"];",
            sanitize(t)
        );
    }
    for c in &topology.components {
        for input in &c.inputs {
            let (from, port) = input_node(input);
            let _ = match port {
                Some(p) => writeln!(out, "  \"{from}\" -> \"{}\" [label=\"{p}\"];", c.name),
                None => writeln!(out, "  \"{from}\" -> \"{}\";", c.name),
            };
        }
    }
    out.push_str("}\n");
    out
}
