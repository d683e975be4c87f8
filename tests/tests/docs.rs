//! The documentation keeps up with the code: the annotation table in
//! docs/kubernetes.md names exactly the annotations the operator's parser
//! knows (`sluice_operator::kube::annotations::KNOWN`), every relative link
//! of README.md and docs/*.md reaches a file (and a heading, for a `#`
//! anchor), and the README stays a front page that keeps its two commands.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use sluice_operator::kube::annotations::KNOWN;
use sluice_tests::workspace_root;

const TABLE_FILE: &str = "docs/kubernetes.md";
const TABLE_HEAD: &str = "| annotation | meaning | default |";

/// The annotation names of the table that starts with [`TABLE_HEAD`].
///
/// The first column holds backticked names; a name without the
/// `sluice.dev/` prefix continues the row's first one (`sluice.dev/alpha`,
/// `beta` is two annotations), and `name: "value"` documents a value.
fn documented_annotations(markdown: &str, file: &str) -> Result<BTreeSet<String>, String> {
    let mut lines = markdown.lines().enumerate();
    lines
        .by_ref()
        .find(|(_, l)| l.trim() == TABLE_HEAD)
        .ok_or_else(|| format!("{file} has no annotation table (a line `{TABLE_HEAD}`)"))?;
    let mut names = BTreeSet::new();
    for (number, line) in lines {
        let line = line.trim();
        if !line.starts_with('|') {
            break;
        }
        let first_cell = line.split('|').nth(1).unwrap_or_default().trim();
        if first_cell.chars().all(|c| c == '-' || c == ':') {
            continue;
        }
        let spans: Vec<&str> = first_cell.split('`').skip(1).step_by(2).collect();
        if spans.is_empty() {
            return Err(format!(
                "{file}:{}: the annotation cell `{first_cell}` names no annotation in backticks",
                number + 1
            ));
        }
        for span in spans {
            let name = span.split(':').next().unwrap_or_default().trim();
            let full = if name.starts_with("sluice.dev/") {
                name.to_string()
            } else {
                format!("sluice.dev/{name}")
            };
            let short = &full["sluice.dev/".len()..];
            if short.is_empty()
                || !short
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            {
                return Err(format!(
                    "{file}:{}: `{span}` is not an annotation name",
                    number + 1
                ));
            }
            if !names.insert(full.clone()) {
                return Err(format!("{file}:{}: {full} is listed twice", number + 1));
            }
        }
    }
    Ok(names)
}

#[test]
fn the_annotation_table_lists_exactly_the_annotations_the_parser_knows() {
    let text = read(TABLE_FILE);
    let documented = documented_annotations(&text, TABLE_FILE).unwrap_or_else(|e| panic!("{e}"));
    let known: BTreeSet<String> = KNOWN.iter().map(|k| k.to_string()).collect();
    let mut problems = Vec::new();
    for missing in known.difference(&documented) {
        problems.push(format!(
            "{missing} is parsed (operator/src/kube/annotations.rs, KNOWN) but not documented: add a row for it to the table under \"## Annotations\" in {TABLE_FILE}"
        ));
    }
    for extra in documented.difference(&known) {
        problems.push(format!(
            "{extra} is documented in {TABLE_FILE} but the parser does not know it (not in KNOWN, operator/src/kube/annotations.rs): remove its row, or teach the parser"
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_table_reader_finds_prefixed_continued_and_valued_names() {
    let table = "text\n\n| annotation | meaning | default |\n|---|---|---|\n| `sluice.dev/canary: \"enabled\"` | opt in | — |\n| `sluice.dev/alpha`, `beta` | gate | `0.01` |\n\nafter\n| `sluice.dev/not-in-table` | x | y |\n";
    let names = documented_annotations(table, "t.md").unwrap();
    let expected: BTreeSet<String> = ["sluice.dev/canary", "sluice.dev/alpha", "sluice.dev/beta"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(names, expected);
    let twice =
        "| annotation | meaning | default |\n|---|---|---|\n| `sluice.dev/a` | | |\n| `a` | | |\n";
    assert_eq!(
        documented_annotations(twice, "t.md").unwrap_err(),
        "t.md:4: sluice.dev/a is listed twice"
    );
    let bad = "| annotation | meaning | default |\n|---|---|---|\n| `Sluice.dev/A b` | | |\n";
    assert!(
        documented_annotations(bad, "t.md")
            .unwrap_err()
            .contains("is not an annotation name")
    );
    assert!(documented_annotations("no table", "t.md").is_err());
}

fn read(relative: &str) -> String {
    let path = workspace_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The markdown files whose links are checked: README.md and docs/*.md.
fn markdown_files() -> Vec<PathBuf> {
    let root = workspace_root();
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces
/// as hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a markdown file's headings (outside code fences).
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut fenced = false;
    let mut out = BTreeSet::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced && line.starts_with('#') {
            let text = line.trim_start_matches('#');
            if text.starts_with(' ') {
                out.insert(anchor(text));
            }
        }
    }
    out
}

/// Every `](target)` of a markdown text outside code fences and code spans.
fn links(markdown: &str) -> Vec<(usize, String)> {
    let mut fenced = false;
    let mut out = Vec::new();
    for (number, line) in markdown.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Code spans are the odd pieces between backticks.
        let prose: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        let mut rest = prose.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            out.push((number + 1, after[..end].to_string()));
            rest = &after[end..];
        }
    }
    out
}

#[test]
fn every_relative_link_of_the_readme_and_docs_reaches_its_file_and_heading() {
    let root = workspace_root();
    let mut problems = Vec::new();
    let mut checked = 0;
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        let shown = file.strip_prefix(&root).unwrap().display().to_string();
        for (line, target) in links(&text) {
            if target.starts_with("http://")
                || target.starts_with("https://")
                || target.starts_with("mailto:")
            {
                continue;
            }
            checked += 1;
            let (path, fragment) = match target.split_once('#') {
                Some((p, f)) => (p, Some(f)),
                None => (target.as_str(), None),
            };
            let linked: PathBuf = if path.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap_or(Path::new(".")).join(path)
            };
            if !linked.exists() {
                problems.push(format!(
                    "{shown}:{line}: the link ({target}) names {}, which does not exist",
                    linked.display()
                ));
                continue;
            }
            if let Some(fragment) = fragment {
                let heads = anchors(&std::fs::read_to_string(&linked).unwrap_or_default());
                if !heads.contains(fragment) {
                    problems.push(format!(
                        "{shown}:{line}: the link ({target}) names a heading #{fragment} that {path} does not have (its headings: {heads:?})",
                        path = if path.is_empty() { &shown } else { path },
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(checked > 20, "only {checked} relative links found");
}

#[test]
fn anchors_follow_githubs_rules() {
    assert_eq!(
        anchor("Kubernetes reference: `sluice kube`"),
        "kubernetes-reference-sluice-kube"
    );
    assert_eq!(
        anchor("Admin API (separate listener)"),
        "admin-api-separate-listener"
    );
    assert_eq!(anchor("https and credentials"), "https-and-credentials");
    assert_eq!(
        links("see [a](b.md#c) and `[x](y)`\n```\n[p](q)\n```\n"),
        [(1, "b.md#c".to_string())]
    );
}

#[test]
fn the_readme_is_a_front_page_with_its_two_commands_and_links_to_every_doc() {
    let readme = read("README.md");
    let lines = readme.lines().count();
    assert!(
        (120..=260).contains(&lines),
        "README.md has {lines} lines; it is a front page of about 200, reference goes to docs/"
    );
    for command in [
        "cargo run --release -p sluice-operator -- demo",
        "tests/run",
        "kubectl apply -k deploy/operator",
        "kubectl sluice get",
        "sluice rollout",
    ] {
        assert!(readme.contains(command), "README.md lost `{command}`");
    }
    assert!(
        readme.contains("## Limitations"),
        "README.md has no Limitations section"
    );
    for file in markdown_files().iter().skip(1) {
        let name = format!("docs/{}", file.file_name().unwrap().to_string_lossy());
        assert!(
            readme.contains(&format!("]({name}")),
            "README.md does not link {name}"
        );
    }
}
