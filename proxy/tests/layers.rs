//! The proxy's modules form layers without an import circle, the layer
//! table in the crate's `//!` docs (src/lib.rs, "# Layers") is the true
//! one, and no function on the request path is over 120 lines. How the
//! imports are read: see `modgraph`.

mod modgraph;

use std::collections::{BTreeMap, BTreeSet};

use modgraph::{
    circle_report, code_only, crate_refs, is_ident_byte, leading_ident, module_graph, reexports,
    rust_files, src_dir, test_module_names, without_test_items,
};

/// The layer table of the `//!` docs of `lib.rs`: the fenced block after
/// the `# Layers` heading, one layer a line, top first, its modules before
/// a `|` (what follows is a description).
fn documented_layers(lib_rs: &str) -> Result<Vec<Vec<String>>, String> {
    let docs: Vec<&str> = lib_rs
        .lines()
        .filter_map(|l| l.strip_prefix("//!"))
        .map(|l| l.strip_prefix(' ').unwrap_or(l))
        .collect();
    let heading = docs
        .iter()
        .position(|l| l.trim() == "# Layers")
        .ok_or("src/lib.rs's `//!` docs have no `# Layers` heading")?;
    let open = docs[heading..]
        .iter()
        .position(|l| l.trim_start().starts_with("```"))
        .ok_or("the `# Layers` section of src/lib.rs has no fenced table")?
        + heading;
    let mut layers = Vec::new();
    for (k, line) in docs[open + 1..].iter().enumerate() {
        if line.trim_start().starts_with("```") {
            return Ok(layers);
        }
        let Some((modules, _)) = line.split_once('|') else {
            return Err(format!(
                "src/lib.rs, line {} of the `# Layers` table: `{line}` has no `|` after its modules",
                k + 1
            ));
        };
        layers.push(modules.split_whitespace().map(str::to_string).collect());
    }
    Err("the `# Layers` table of src/lib.rs is not closed with ```".to_string())
}

#[test]
fn no_import_circle_between_the_proxys_modules() {
    let graph = module_graph(&src_dir());
    assert!(
        graph.len() > 20 && graph.values().map(BTreeMap::len).sum::<usize>() > 50,
        "the reader found too little to judge (modules: {:?})",
        graph.keys().collect::<Vec<_>>()
    );
    if let Some(report) = circle_report(&graph) {
        panic!("the proxy's modules import each other in a circle:\n{report}");
    }
}

#[test]
fn every_import_goes_down_the_documented_layers() {
    let src = src_dir();
    let graph = module_graph(&src);
    let lib_rs = std::fs::read_to_string(src.join("lib.rs")).expect("src/lib.rs");
    let layers = documented_layers(&lib_rs).unwrap_or_else(|e| panic!("{e}"));
    let mut layer_of = BTreeMap::new();
    let mut problems = Vec::new();
    for (depth, layer) in layers.iter().enumerate() {
        for module in layer {
            if layer_of.insert(module.clone(), depth).is_some() {
                problems.push(format!("`{module}` is in the layer table twice"));
            }
            if !graph.contains_key(module) {
                problems.push(format!(
                    "`{module}` in the layer table is no module of src/"
                ));
            }
        }
    }
    for (from, edges) in &graph {
        let Some(&from_depth) = layer_of.get(from) else {
            problems.push(format!("module `{from}` is missing from the layer table"));
            continue;
        };
        for (to, file) in edges {
            match layer_of.get(to) {
                Some(&to_depth) if to_depth > from_depth => {}
                Some(&to_depth) => problems.push(format!(
                    "`{from}` (line {}) imports `{to}` (line {}), not below it (src/{file})",
                    from_depth + 1,
                    to_depth + 1
                )),
                None => {} // reported as missing above
            }
        }
    }
    assert!(
        problems.is_empty(),
        "the `# Layers` table of src/lib.rs does not hold:\n  {}",
        problems.join("\n  ")
    );
}

/// The modules a request passes through (the `# Layers` table's phases
/// and what they call per request).
const REQUEST_PATH: [&str; 15] = [
    "accept",
    "downstream",
    "answer",
    "forward",
    "route",
    "routing",
    "mirror",
    "upstream",
    "affinity",
    "record",
    "split",
    "body",
    "conn",
    "http1",
    "fields",
];

/// The longest a function on the request path may be, in lines from its
/// `fn` to its closing brace.
const MAX_FUNCTION_LINES: usize = 120;

/// Every function of `code` (comments, strings and test items removed):
/// its name, first line (1-based) and length in lines. A function inside
/// another is counted in both.
fn functions(code: &str) -> Vec<(String, usize, usize)> {
    let bytes = code.as_bytes();
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = code[from..].find("fn ").map(|k| from + k) {
        from = at + 3;
        if at > 0 && is_ident_byte(bytes[at - 1]) {
            continue;
        }
        let Some(name) = leading_ident(&code[from..]) else {
            continue;
        };
        // The body starts at the first `{` unless a `;` ends a declaration
        // first (a trait's method without a default).
        let Some(open) = code[from..].find(['{', ';']).map(|k| from + k) else {
            continue;
        };
        if bytes[open] == b';' {
            continue;
        }
        let mut depth = 0usize;
        let mut close = code.len();
        for (k, &b) in bytes.iter().enumerate().skip(open) {
            match b {
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        close = k;
                        break;
                    }
                }
                _ => {}
            }
        }
        let first = code[..at].matches('\n').count() + 1;
        let last = code[..close].matches('\n').count() + 1;
        found.push((name.to_string(), first, last - first + 1));
    }
    found
}

#[test]
fn no_function_on_the_request_path_is_over_120_lines() {
    let src = src_dir();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut checked = 0;
    let mut long = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).expect("under src");
        let top = rel.components().next().expect("a file name");
        let top = top.as_os_str().to_string_lossy();
        if !REQUEST_PATH.contains(&top.strip_suffix(".rs").unwrap_or(&top)) {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("a source file");
        for (name, line, lines) in functions(&without_test_items(&code_only(&text))) {
            checked += 1;
            if lines > MAX_FUNCTION_LINES {
                long.push(format!(
                    "src/{}:{line}: fn {name} is {lines} lines",
                    rel.display()
                ));
            }
        }
    }
    assert!(
        checked > 100,
        "only {checked} functions found on the request path"
    );
    assert!(
        long.is_empty(),
        "functions on the request path over {MAX_FUNCTION_LINES} lines (split them into named steps):\n  {}",
        long.join("\n  ")
    );
}

#[test]
fn the_reader_sees_code_not_comments_strings_or_test_items() {
    let src = r##"
use crate::{alpha::{One, two}, beta};
// crate::comment_line
/* crate::block /* nested crate::deeper */ */
/// [`crate::doc_link`]
fn f<'a>(x: &'a str) -> char {
    let _ = "crate::in_string \" crate::escaped";
    let _ = r#"crate::raw "quoted" "#;
    let _ = crate::gamma::run(x);
    '{'
}
#[cfg(test)]
mod tests {
    fn g() { let _ = '}'; crate::test_only::f(); }
}
#[cfg(test)]
use crate::test_use;
struct After(crate::delta::D);
"##;
    let refs = crate_refs(&without_test_items(&code_only(src)));
    let want: BTreeSet<String> = ["alpha", "beta", "gamma", "delta"]
        .into_iter()
        .map(str::to_string)
        .collect();
    assert_eq!(refs, want);
    let declared = "#[cfg(test)]\nmod tests;\n#[cfg(test)]\n#[path = \"t.rs\"]\nmod other ;\n#[cfg(test)]\nmod inline {}\nmod kept;\n";
    assert_eq!(test_module_names(declared), ["tests", "other"]);
    let lib = "pub use config::{Config, ConfigErrors as Errors};\npub use metrics::Metrics;\n";
    let map = reexports(lib);
    assert_eq!(map.get("Errors").map(String::as_str), Some("config"));
    assert_eq!(map.get("Config").map(String::as_str), Some("config"));
    assert_eq!(map.get("Metrics").map(String::as_str), Some("metrics"));
    let code = "fn short() {\n    x();\n}\ntrait T {\n    fn declared(&self);\n}\nfn longer(a: u8) -> u8 {\n    let f = |b| { b };\n\n    f(a)\n}\n";
    assert_eq!(
        functions(code),
        [("short".to_string(), 1, 3), ("longer".to_string(), 7, 5)]
    );
}
