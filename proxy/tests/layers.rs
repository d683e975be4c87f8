//! The proxy's modules form layers without an import circle, the layer
//! table in the crate's `//!` docs (src/lib.rs, "# Layers") is the true
//! one, and no function on the request path is over 120 lines.
//!
//! How the imports are read: every `.rs` file under `src/` belongs to its
//! top-level module (`src/tcp/mod.rs` and `src/metrics/tcp.rs` to `tcp` and
//! `metrics`). Its code, with comments (doc comments too: an intra-doc
//! link is not an import), string and character literals blanked and every
//! `#[cfg(test)]` item cut out, is searched for `crate::NAME` and
//! `crate::{NAME, ...}`. A NAME that is a top-level module is an edge to
//! it; a NAME that `src/lib.rs` re-exports with `pub use module::...`
//! (`crate::Metrics`) is an edge to that module; anything else lib.rs
//! defines itself (`crate::BoxError`, a type alias) is no module and no
//! edge. `src/main.rs` is the binary's own crate root, not a module of this
//! one, and is left out. The code is read with a small lexer rather than
//! regular expressions, so a nested `crate::{a::{b, c}, d}` or a
//! `"crate::x"` in a string is read right.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// An edge of the module graph and the first file (relative to `src/`)
/// that makes it.
type Graph = BTreeMap<String, BTreeMap<String, String>>;

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot read {dir:?}: {e}"));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src` with comments and the contents of string and character literals
/// replaced by spaces (line breaks kept), so that only code is left.
fn code_only(src: &str) -> String {
    let chars: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if (c == 'r' || (c == 'b' && next == Some('r')))
            && !(i > 0 && ident(chars[i - 1]))
            && raw_string_hashes(&chars[i + usize::from(c == 'b') + 1..]).is_some()
        {
            // r"..." or r#"..."# (or br...): no escapes, ends at `"` + the hashes.
            let start = i + usize::from(c == 'b') + 1;
            let hashes = raw_string_hashes(&chars[start..]).expect("checked");
            let body = start + hashes + 1;
            let mut end = body;
            while end < chars.len()
                && !(chars[end] == '"'
                    && chars[end + 1..]
                        .iter()
                        .take(hashes)
                        .filter(|&&h| h == '#')
                        .count()
                        == hashes)
            {
                end += 1;
            }
            let end = (end + 1 + hashes).min(chars.len());
            out.extend(chars[i..end].iter().map(|&ch| blank(ch)));
            i = end;
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < chars.len() {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' && (next == Some('\\') || chars.get(i + 2) == Some(&'\'')) {
            // A character literal ('{', '\n', '\u{7b}'); a lifetime ('a) has
            // no closing quote after one character.
            let mut end = i + 2;
            while end < chars.len() && chars[end] != '\'' {
                end += 1;
            }
            let end = (end + 1).min(chars.len());
            out.extend(chars[i..end].iter().map(|&ch| blank(ch)));
            i = end;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// The number of `#` of a raw string starting at `after_r` (just after its
/// `r`), if one starts there.
fn raw_string_hashes(after_r: &[char]) -> Option<usize> {
    let hashes = after_r.iter().take_while(|&&c| c == '#').count();
    (after_r.get(hashes) == Some(&'"')).then_some(hashes)
}

/// `code` without the items marked `#[cfg(test)]` (a `mod tests { ... }`,
/// a `use`, a function).
fn without_test_items(code: &str) -> String {
    const MARK: &str = "#[cfg(test)]";
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find(MARK) {
        out.push_str(&rest[..at]);
        let item = &rest[at + MARK.len()..];
        let end = match (item.find('{'), item.find(';')) {
            (Some(open), semi) if semi.is_none_or(|s| open < s) => {
                let mut depth = 0usize;
                let mut end = item.len();
                for (k, b) in item.bytes().enumerate().skip(open) {
                    match b {
                        b'{' => depth += 1,
                        b'}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = k + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                end
            }
            (_, Some(semi)) => semi + 1,
            (_, None) => item.len(),
        };
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The identifier at the start of `s` (after white space), if any.
fn leading_ident(s: &str) -> Option<&str> {
    let s = s.trim_start();
    let len = s.bytes().take_while(|&b| is_ident_byte(b)).count();
    (len > 0).then(|| &s[..len])
}

/// The first path segment of every `crate::` path in `code`:
/// `crate::a::b` gives `a`, `crate::{a::{b, c}, d}` gives `a` and `d`.
fn crate_refs(code: &str) -> BTreeSet<String> {
    let mut refs = BTreeSet::new();
    let bytes = code.as_bytes();
    let mut from = 0;
    while let Some(found) = code[from..].find("crate::") {
        let at = from + found;
        from = at + "crate::".len();
        if at > 0 && is_ident_byte(bytes[at - 1]) {
            continue; // `my_crate::`
        }
        let rest = code[from..].trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0usize;
            let mut item_start = 0;
            for (k, b) in group.bytes().enumerate() {
                match b {
                    b'{' => depth += 1,
                    b'}' if depth == 0 => {
                        refs.extend(leading_ident(&group[item_start..k]).map(str::to_string));
                        break;
                    }
                    b'}' => depth -= 1,
                    b',' if depth == 0 => {
                        refs.extend(leading_ident(&group[item_start..k]).map(str::to_string));
                        item_start = k + 1;
                    }
                    _ => {}
                }
            }
        } else if let Some(name) = leading_ident(rest) {
            refs.insert(name.to_string());
        }
    }
    refs
}

/// What `src/lib.rs` re-exports: exported name -> the module it comes from
/// (`pub use metrics::Metrics;` gives `Metrics` -> `metrics`).
fn reexports(lib_code: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for statement in lib_code.split(';') {
        let Some(path) = statement.trim().strip_prefix("pub use ") else {
            continue;
        };
        let path = path.trim();
        let path = path
            .strip_prefix("crate::")
            .or_else(|| path.strip_prefix("self::"))
            .unwrap_or(path);
        let Some((module, names)) = path.split_once("::") else {
            continue;
        };
        let names = names.trim().trim_start_matches('{').trim_end_matches('}');
        for name in names.split(',') {
            let exported = match name.split_once(" as ") {
                Some((_, alias)) => alias.trim(),
                None => name.rsplit("::").next().unwrap_or(name).trim(),
            };
            if !exported.is_empty() && exported != "*" {
                map.insert(exported.to_string(), module.trim().to_string());
            }
        }
    }
    map
}

/// The import graph of the top-level modules of `src`.
fn module_graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let module_of = |file: &Path| -> String {
        let rel = file.strip_prefix(src).expect("under src");
        let first = rel.components().next().expect("a file name");
        let first = first.as_os_str().to_string_lossy();
        first.strip_suffix(".rs").unwrap_or(&first).to_string()
    };
    let read = |file: &Path| {
        std::fs::read_to_string(file).unwrap_or_else(|e| panic!("cannot read {file:?}: {e}"))
    };
    let lib = without_test_items(&code_only(&read(&src.join("lib.rs"))));
    let exported = reexports(&lib);
    let modules: BTreeSet<String> = files
        .iter()
        .map(|f| module_of(f))
        .filter(|m| m != "lib" && m != "main")
        .collect();
    let mut graph: Graph = modules
        .iter()
        .map(|m| (m.clone(), BTreeMap::new()))
        .collect();
    for file in &files {
        let from = module_of(file);
        if !modules.contains(&from) {
            continue;
        }
        let code = without_test_items(&code_only(&read(file)));
        let rel = file
            .strip_prefix(src)
            .expect("under src")
            .display()
            .to_string();
        for name in crate_refs(&code) {
            let to = if modules.contains(&name) {
                name
            } else if let Some(module) = exported.get(&name) {
                module.clone()
            } else {
                continue;
            };
            if to != from {
                graph
                    .get_mut(&from)
                    .expect("a module")
                    .entry(to)
                    .or_insert_with(|| rel.clone());
            }
        }
    }
    graph
}

/// The strongly connected components of `graph` with more than one module:
/// its import circles (Tarjan's algorithm).
fn circles(graph: &Graph) -> Vec<Vec<String>> {
    struct Search<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        found: Vec<Vec<String>>,
    }
    impl<'g> Search<'g> {
        fn visit(&mut self, v: &'g str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph[v].keys() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                loop {
                    let w = self.stack.pop().expect("v is on the stack");
                    self.on_stack.remove(w);
                    component.push(w.to_string());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut search = Search {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !search.index.contains_key(v.as_str()) {
            search.visit(v);
        }
    }
    search.found
}

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
    let found = circles(&graph);
    let report: Vec<String> = found
        .iter()
        .map(|circle| {
            let edges: Vec<String> = circle
                .iter()
                .flat_map(|from| {
                    graph[from]
                        .iter()
                        .filter(|(to, _)| circle.contains(to))
                        .map(move |(to, file)| format!("  {from} -> {to} (src/{file})"))
                })
                .collect();
            format!("circle {:?}:\n{}", circle, edges.join("\n"))
        })
        .collect();
    assert!(
        found.is_empty(),
        "the proxy's modules import each other in a circle:\n{}",
        report.join("\n")
    );
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
