//! The names of the vocabulary (`reports::vocab`) are spelled once: no string literal in the
//! crates' sources outside the vocabulary module, the catalog module and tests spells a checkpoint,
//! tensor, metric, tolerance class or operator. Code compares the typed names instead, so a renamed
//! or misspelled one fails to compile rather than silently never matching.

use reports::vocab::{Class, Judged, Metric, Op};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Where the names may be spelled: the vocabulary, and the catalog module that reads them as data.
const HOMES: [&str; 2] = ["reports/src/vocab.rs", "harness/src/catalog.rs"];

/// Literals that happen to equal a name but mean something else, with why.
const ELSEWHERE: [(&str, &str, &str); 8] = [
    ("harness/src/tensor.rs", "f32", "the element type of a tensor, not a tolerance class"),
    ("harness/src/live.rs", "f32", "llama.cpp's KV cache type, an environment value for its dumper"),
    ("engine/src/gpt2.rs", "attn_norm", "a GGUF weight name (blk.N.attn_norm.weight)"),
    ("engine/src/gpt2.rs", "ffn_norm", "a GGUF weight name"),
    ("engine/src/llama.rs", "attn_norm", "a GGUF weight name"),
    ("engine/src/llama.rs", "ffn_norm", "a GGUF weight name"),
    ("engine/src/loader.rs", "attn_norm", "a GGUF weight name, mapped to its HF and GPT-2 names"),
    ("engine/src/loader.rs", "ffn_norm", "a GGUF weight name, mapped to its HF and GPT-2 names"),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every checkpoint and tensor name of the catalog, metric, class and operator.
fn names() -> BTreeSet<String> {
    let catalog = harness::catalog::Catalog::load(&root().join("checkpoints/catalog.toml")).expect("the project catalog loads");
    let mut out: BTreeSet<String> = catalog.checkpoints.iter().map(|c| c.name.clone()).collect();
    out.extend(catalog.tensors.iter().map(|t| t.name.clone()));
    out.extend(Metric::ALL.iter().map(|m| m.to_string()));
    out.extend(Class::ALL.iter().map(|c| c.to_string()));
    out.extend(Op::ALL.iter().map(|o| o.to_string()));
    out.insert(Judged::BitExact.to_string());
    out
}

/// A source file with its comments and literals told apart from code.
struct Lexed {
    /// The text with comments and string and char literals blanked to spaces (newlines kept).
    code: String,
    /// Each string literal's byte offset and contents (escapes left as written).
    strings: Vec<(usize, String)>,
}

/// A small Rust lexer: line and nested block comments, strings, byte strings, raw strings, and
/// char literals (told from lifetimes by their closing quote).
fn lex(text: &str) -> Lexed {
    let b = text.as_bytes();
    let mut code = b.to_vec();
    let mut strings = Vec::new();
    let blank = |code: &mut Vec<u8>, from: usize, to: usize| {
        for c in &mut code[from..to] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
    };
    let mut i = 0;
    while i < b.len() {
        let rest = &b[i..];
        if rest.starts_with(b"//") {
            let end = text[i..].find('\n').map_or(b.len(), |n| i + n);
            blank(&mut code, i, end);
            i = end;
        } else if rest.starts_with(b"/*") {
            let (mut depth, mut j) = (1, i + 2);
            while j < b.len() && depth > 0 {
                if b[j..].starts_with(b"/*") {
                    (depth, j) = (depth + 1, j + 2);
                } else if b[j..].starts_with(b"*/") {
                    (depth, j) = (depth - 1, j + 2);
                } else {
                    j += 1;
                }
            }
            blank(&mut code, i, j);
            i = j;
        } else if let Some(hashes) = raw_string_start(b, i) {
            let open = i + text[i..].find('"').expect("a raw string opens with a quote") + 1;
            let close = format!("\"{}", "#".repeat(hashes));
            let end = text[open..].find(&close).map_or(b.len(), |n| open + n);
            strings.push((i, text[open..end].to_string()));
            let end = (end + close.len()).min(b.len());
            blank(&mut code, i, end);
            i = end;
        } else if b[i] == b'"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            strings.push((i, text[i + 1..j.min(b.len())].to_string()));
            blank(&mut code, i, (j + 1).min(b.len()));
            i = j + 1;
        } else if b[i] == b'\'' {
            // 'x', '\n', '\u{..}' are chars; 'a without a closing quote is a lifetime.
            let end = if rest.get(1) == Some(&b'\\') {
                text[i + 2..].find('\'').map(|n| i + 2 + n + 1)
            } else {
                text[i + 1..].chars().next().and_then(|c| (text[i + 1 + c.len_utf8()..].starts_with('\'')).then(|| i + 1 + c.len_utf8() + 1))
            };
            match end {
                Some(end) => {
                    blank(&mut code, i, end);
                    i = end;
                }
                None => i += 1,
            }
        } else {
            i += 1;
        }
    }
    Lexed { code: String::from_utf8(code).expect("blanking keeps UTF-8 boundaries"), strings }
}

/// `r"`, `r#"`, `br##"`...: the number of hashes when a raw string starts at `i`.
fn raw_string_start(b: &[u8], i: usize) -> Option<usize> {
    if i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_') {
        return None;
    }
    let mut j = i;
    if b.get(j) == Some(&b'b') {
        j += 1;
    }
    if b.get(j) != Some(&b'r') {
        return None;
    }
    j += 1;
    let hashes = b[j..].iter().take_while(|&&c| c == b'#').count();
    (b.get(j + hashes) == Some(&b'"')).then_some(hashes)
}

/// Byte ranges of items under `#[cfg(test)]` with a body (`mod tests { ... }`), and the names of
/// modules declared under it without one (`mod fixture;`), whose files are tests as a whole.
fn test_items(code: &str) -> (Vec<(usize, usize)>, Vec<String>) {
    let (mut ranges, mut files) = (Vec::new(), Vec::new());
    for (at, _) in code.match_indices("#[cfg(test)]") {
        let after = at + "#[cfg(test)]".len();
        let Some(stop) = code[after..].find(['{', ';']).map(|n| after + n) else { continue };
        if code.as_bytes()[stop] == b';' {
            if let Some(name) = code[after..stop].split_whitespace().last() {
                files.push(name.to_string());
            }
            continue;
        }
        let mut depth = 0usize;
        for (k, c) in code[stop..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        ranges.push((at, stop + k + 1));
                        break;
                    }
                }
                _ => {}
            }
        }
    }
    (ranges, files)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).expect("a source folder lists").map(|e| e.expect("a folder entry").path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// Every string literal of the crates' non-test sources that spells a name, as `file:line: "name"`,
/// and every excuse in [`ELSEWHERE`] that no literal needs any more.
fn spelled_names() -> (Vec<String>, Vec<String>) {
    let root = root();
    let names = names();
    let mut files = Vec::new();
    for krate in ["engine", "harness", "reports"] {
        rust_files(&root.join(krate).join("src"), &mut files);
    }
    let lexed: Vec<(PathBuf, String, Lexed)> = files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).expect("a source file reads");
            let lexed = lex(&text);
            (f, text, lexed)
        })
        .collect();
    // Files that are test modules as a whole: `#[cfg(test)] mod x;` in a/b.rs (or a/mod.rs) is a/b/x.rs (a/x.rs).
    let mut test_files = BTreeSet::new();
    for (f, _, l) in &lexed {
        let dir = match f.file_stem().and_then(|s| s.to_str()) {
            Some("mod" | "lib" | "main") => f.parent().expect("a source file has a folder").to_path_buf(),
            _ => f.with_extension(""),
        };
        test_files.extend(test_items(&l.code).1.into_iter().map(|m| dir.join(format!("{m}.rs"))));
    }
    let (mut found, mut used) = (Vec::new(), BTreeSet::new());
    for (f, text, l) in &lexed {
        let rel = f.strip_prefix(&root).expect("under the root").to_string_lossy().replace('\\', "/");
        if HOMES.contains(&rel.as_str()) || test_files.contains(f) {
            continue;
        }
        let (ranges, _) = test_items(&l.code);
        for (at, s) in &l.strings {
            let in_test = ranges.iter().any(|&(a, b)| (a..b).contains(at));
            let excused = ELSEWHERE.iter().position(|(file, lit, _)| *file == rel && lit == s);
            if let (false, Some(k)) = (in_test, excused) {
                used.insert(k);
            }
            if names.contains(s) && !in_test && excused.is_none() {
                found.push(format!("{rel}:{}: \"{s}\"", text[..*at].matches('\n').count() + 1));
            }
        }
    }
    let stale = (0..ELSEWHERE.len()).filter(|k| !used.contains(k)).map(|k| format!("{} {:?}", ELSEWHERE[k].0, ELSEWHERE[k].1)).collect();
    (found, stale)
}

#[test]
fn no_string_literal_spells_a_vocabulary_name_outside_the_vocabulary() {
    let (found, stale) = spelled_names();
    assert!(stale.is_empty(), "ELSEWHERE excuses literals no source holds any more; remove them:\n{}", stale.join("\n"));
    assert!(
        found.is_empty(),
        "use the typed names of reports::vocab (CheckpointName, TensorName, Metric, Class, Op, Judged) instead of these literals, \
         or list a literal that means something else in ELSEWHERE with why:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_lexer_finds_literals_and_skips_comments_chars_and_test_modules() {
    let src = "// \"nmse\" in a comment\nfn f<'a>(x: &'a str) -> char { let _ = r#\"cosine\"#; let _ = \"a\\\"b\"; '\"' }\n\
               /* \"f16\" /* nested */ \"f16\" */\nconst K: &str = \"nmse\";\n#[cfg(test)]\nmod tests { fn g() { \"quantized\"; } }\n\
               #[cfg(test)]\nmod fixture;\n";
    let l = lex(src);
    let strings: Vec<&str> = l.strings.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(strings, ["cosine", "a\\\"b", "nmse", "quantized"]);
    let (ranges, files) = test_items(&l.code);
    let quantized = l.strings[3].0;
    assert!(ranges.iter().any(|&(a, b)| (a..b).contains(&quantized)));
    assert!(!ranges.iter().any(|&(a, b)| (a..b).contains(&l.strings[2].0)));
    assert_eq!(files, ["fixture"]);
}
