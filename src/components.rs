//! The one registration point: every component kind a topology file can name.
//!
//! Adding a source, processor or sink means adding one line here.

use strata_pipeline::processors;
use strata_pipeline::topology::Catalog;

pub fn catalog() -> Catalog {
    Catalog::new()
        .with(strata_connectors::postgres::kind())
        .with(strata_connectors::sqlserver::kind())
        .with(processors::conflict_resolution::kind())
        .with(processors::claim_analysis::kind())
        .with(processors::tiering::kind())
        .with(strata_connectors::sinks::hot::kind())
        .with(strata_connectors::sinks::warm::kind())
        .with(strata_connectors::sinks::cold::kind())
}
