//! The module graph of a crate's `src/`, read from its code, and its
//! import circles: shared by the proxy's and the operator's structure
//! tests (`proxy/tests/layers.rs`, `operator/tests/layers.rs`).
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
//! edge. `src/main.rs` and `src/bin/` are binaries' own crate roots, not
//! modules of the library, and are left out. The code is read with a small
//! lexer rather than regular expressions, so a nested
//! `crate::{a::{b, c}, d}` or a `"crate::x"` in a string is read right.

// Each test crate that includes this file uses a part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// An edge of the module graph and the first file (relative to `src/`)
/// that makes it.
pub type Graph = BTreeMap<String, BTreeMap<String, String>>;

pub fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

pub fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
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
pub fn code_only(src: &str) -> String {
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
pub fn raw_string_hashes(after_r: &[char]) -> Option<usize> {
    let hashes = after_r.iter().take_while(|&&c| c == '#').count();
    (after_r.get(hashes) == Some(&'"')).then_some(hashes)
}

/// `code` without the items marked `#[cfg(test)]` (a `mod tests { ... }`,
/// a `use`, a function).
pub fn without_test_items(code: &str) -> String {
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

pub fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The identifier at the start of `s` (after white space), if any.
pub fn leading_ident(s: &str) -> Option<&str> {
    let s = s.trim_start();
    let len = s.bytes().take_while(|&b| is_ident_byte(b)).count();
    (len > 0).then(|| &s[..len])
}

/// The first path segment of every `crate::` path in `code`:
/// `crate::a::b` gives `a`, `crate::{a::{b, c}, d}` gives `a` and `d`.
pub fn crate_refs(code: &str) -> BTreeSet<String> {
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
pub fn reexports(lib_code: &str) -> BTreeMap<String, String> {
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
pub fn module_graph(src: &Path) -> Graph {
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
    // Files of modules declared `#[cfg(test)] mod NAME;` are tests.
    let test_files: BTreeSet<PathBuf> = files
        .iter()
        .flat_map(|f| {
            let dir = match f.file_name().and_then(|n| n.to_str()) {
                Some("lib.rs" | "mod.rs" | "main.rs") => f.parent().expect("in src").to_path_buf(),
                _ => f.with_extension(""),
            };
            test_module_names(&code_only(&read(f)))
                .into_iter()
                .flat_map(move |m| [dir.join(format!("{m}.rs")), dir.join(&m).join("mod.rs")])
        })
        .collect();
    files.retain(|f| !test_files.contains(f));
    let lib = without_test_items(&code_only(&read(&src.join("lib.rs"))));
    let exported = reexports(&lib);
    let modules: BTreeSet<String> = files
        .iter()
        .map(|f| module_of(f))
        .filter(|m| m != "lib" && m != "main" && m != "bin")
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

/// The modules `code` declares, in files of their own, for tests only:
/// `#[cfg(test)] mod NAME;` (other attributes may come between).
pub fn test_module_names(code: &str) -> Vec<String> {
    let mut names = Vec::new();
    for (at, _) in code.match_indices("#[cfg(test)]") {
        let mut rest = code[at + "#[cfg(test)]".len()..].trim_start();
        while rest.starts_with("#[") {
            let Some(end) = rest.find(']') else { break };
            rest = rest[end + 1..].trim_start();
        }
        let Some(after) = rest.strip_prefix("mod ") else {
            continue;
        };
        if let Some(name) = leading_ident(after.trim_start())
            && after.trim_start()[name.len()..]
                .trim_start()
                .starts_with(';')
        {
            names.push(name.to_string());
        }
    }
    names
}

/// The strongly connected components of `graph` with more than one module:
/// its import circles (Tarjan's algorithm).
pub fn circles(graph: &Graph) -> Vec<Vec<String>> {
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

/// The circles of `graph`, each with the edges that make it and the first
/// file of each edge, for a failure message; None when there is none.
pub fn circle_report(graph: &Graph) -> Option<String> {
    let found = circles(graph);
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
    (!report.is_empty()).then(|| report.join("\n"))
}
