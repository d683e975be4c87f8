//! The operator's modules import each other without a circle, read as the
//! proxy's structure test reads them (`proxy/tests/modgraph`): a circle
//! means no module of it can be read, changed or tested without the others.

#[path = "../../proxy/tests/modgraph/mod.rs"]
mod modgraph;

use modgraph::{circle_report, module_graph, src_dir};

#[test]
fn no_import_circle_between_the_operators_modules() {
    let graph = module_graph(&src_dir());
    assert!(
        graph.len() > 20 && graph.values().map(|to| to.len()).sum::<usize>() > 50,
        "the reader found too little to judge (modules: {:?})",
        graph.keys().collect::<Vec<_>>()
    );
    for binary_root in ["main", "bin"] {
        assert!(
            !graph.contains_key(binary_root),
            "{binary_root} is a binary's crate root, not a module"
        );
    }
    // The tests of `gate` (src/gate/tests.rs, `#[cfg(test)] mod tests;`)
    // draw samples with `simulate`; the module itself does not import it.
    assert!(
        !graph["gate"].contains_key("simulate"),
        "a test module's imports were counted as the module's: {:?}",
        graph["gate"]
    );
    if let Some(report) = circle_report(&graph) {
        panic!("the operator's modules import each other in a circle:\n{report}");
    }
}
