//! Proof bundles: a directory per run holding its reports, results and a manifest that pins every
//! input and output by SHA-256, so a reader can check later that nothing was swapped or edited.
//!
//! Layout: `<root>/<kind>/<run_id>/`. `root` is the caller's proof folder if given, else `.proof_bundle/`
//! under the project root. A bundle is written into `<run_id>.tmp-<pid>` and renamed into place by
//! [`Bundle::finish`], so a bundle directory is either complete or absent; an interrupted run leaves
//! its `.tmp-<pid>` directory behind for inspection. An existing bundle is never overwritten. Every
//! file and folder is flushed to the disk before the rename, so a crash (or power loss) never
//! leaves a complete-looking bundle with torn or empty files.
//!
//! The manifest's hashes prove integrity, not authorship: anyone can rewrite a file and its line.
//! Given a key ([`Bundle::sign_with`]), the manifest is also signed (`manifest.sig`, [`signing`]).
//!
//! Every text file starts with a generated-file header (run id, time, command line, engine commit)
//! in its format's comment syntax; JSON carries it in a top-level `"_generated"` field.

use crate::hashes;
use crate::signing::{self, Signer};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Component, Path, PathBuf};

/// The file every bundle lists its inputs and outputs in.
pub const MANIFEST: &str = signing::SIGNED;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("proof bundle {0} already exists; bundles are never overwritten: set another LLORCH_RUN_ID or move it away")]
    Exists(PathBuf),
    #[error("{action} {path}: {reason}")]
    Io { action: &'static str, path: PathBuf, reason: std::io::Error },
    #[error("bundle file name {0:?} must be a relative path that stays inside the bundle")]
    BadName(String),
    #[error("no generated-file header syntax for {0:?}: use write_bytes for binary files")]
    UnknownFormat(String),
    #[error("{0}: JSON written to a bundle must be an object, to carry the \"_generated\" field")]
    JsonNotObject(String),
    #[error("manifest {path}: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error(transparent)]
    Hash(#[from] hashes::HashError),
}

pub(crate) fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BundleError {
    let path = path.to_path_buf();
    move |reason| BundleError::Io { action, path, reason }
}

/// Who made the bundle: written into every file's header and the manifest. The caller supplies
/// the command line and the engine's git commit; [`Provenance::now`] fills in id and time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    pub run_id: String,
    /// UTC, RFC 3339.
    pub created: String,
    pub command: String,
    pub engine_commit: String,
}

impl Provenance {
    /// Stamps the current time; the run id is `run_id` if given (`parity` passes `LLORCH_RUN_ID`),
    /// else generated from the time and a random suffix.
    pub fn now(command: &str, engine_commit: &str, run_id: Option<String>) -> Provenance {
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let (compact, iso) = utc(secs);
        let run_id = run_id.filter(|s| !s.is_empty()).unwrap_or_else(|| format!("{compact}-{:06x}", random_u64() & 0xff_ffff));
        Provenance { run_id, created: iso, command: command.into(), engine_commit: engine_commit.into() }
    }
}

/// `proof_dir` if given (`parity` passes `LLORCH_PROOF_DIR`), else `<project_root>/.proof_bundle`.
pub fn default_root(project_root: &Path, proof_dir: Option<&Path>) -> PathBuf {
    match proof_dir {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => project_root.join(".proof_bundle"),
    }
}

/// The environment a run happened in, recorded in the manifest (versions, host, threads, replay).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// Component name to version: engine, each reference, rustc, python...
    pub versions: BTreeMap<String, String>,
    pub host: String,
    pub threads: usize,
    /// The command that reproduces this run.
    pub replay: String,
    /// Live dumps by `model/prompt/reference`: `fresh <key>` (made by this run) or `reused <key>`
    /// (from the dump cache; the key is the sha256 of everything the dump answers).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dumps: BTreeMap<String, String>,
    /// `K/N` when the run was one shard of a CI matrix (`--shard`), so a merge can check it has
    /// every shard exactly once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
}

/// One hashed file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileHash {
    /// Inputs: what the file is (`model`, `tokenizer`, `dumps`, `spec`). Outputs: empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub role: String,
    /// Inputs: the path as given (absolute if given so). Outputs: relative to the bundle.
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
    /// An input deleted after the run by design (a live reference dump): its hash is the record,
    /// and `verify` reports it as gone rather than missing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub transient: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Manifest {
    bundle: BundleSection,
    run: RunInfo,
    /// Written by [`file_tables`], read back by the toml crate.
    #[serde(default, skip_serializing)]
    input: Vec<FileHash>,
    #[serde(default, skip_serializing)]
    output: Vec<FileHash>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct BundleSection {
    kind: String,
    #[serde(flatten)]
    provenance: Provenance,
}

/// A bundle being written. Nothing is visible under its final name until [`Bundle::finish`].
#[derive(Debug)]
pub struct Bundle {
    kind: String,
    provenance: Provenance,
    tmp_dir: PathBuf,
    final_dir: PathBuf,
    inputs: Vec<FileHash>,
    outputs: BTreeSet<String>,
    signer: Option<Signer>,
}

impl Bundle {
    /// Starts `<root>/<kind>/<provenance.run_id>`; fails if that bundle already exists.
    pub fn create(root: &Path, kind: &str, provenance: Provenance) -> Result<Bundle, BundleError> {
        for part in [kind, provenance.run_id.as_str()] {
            if part.is_empty() || part.contains(['/', '\\']) || part.starts_with('.') {
                return Err(BundleError::BadName(part.to_string()));
            }
        }
        let parent = root.join(kind);
        let final_dir = parent.join(&provenance.run_id);
        if final_dir.exists() {
            return Err(BundleError::Exists(final_dir));
        }
        let tmp_dir = parent.join(format!("{}.tmp-{}", provenance.run_id, std::process::id()));
        fs::create_dir_all(&tmp_dir).map_err(io("creating", &tmp_dir))?;
        Ok(Bundle { kind: kind.into(), provenance, tmp_dir, final_dir, inputs: Vec::new(), outputs: BTreeSet::new(), signer: None })
    }

    /// Signs the manifest with `signer` when the bundle is finished (`manifest.sig`).
    pub fn sign_with(&mut self, signer: Signer) {
        self.signer = Some(signer);
    }

    /// Where the bundle will be once finished.
    pub fn final_dir(&self) -> &Path {
        &self.final_dir
    }

    pub fn provenance(&self) -> &Provenance {
        &self.provenance
    }

    /// Writes a text file with the generated-file header for its extension (md, html, xml, svg,
    /// toml, txt, csv, log, json). Returns the file's path in the temporary directory.
    pub fn write_text(&mut self, name: &str, body: &str) -> Result<PathBuf, BundleError> {
        let text = with_header(name, body, &self.provenance)?;
        self.write_bytes(name, text.as_bytes())
    }

    /// Writes a file as-is (for binary outputs such as `.npy` dumps).
    pub fn write_bytes(&mut self, name: &str, bytes: &[u8]) -> Result<PathBuf, BundleError> {
        check_name(name)?;
        let path = self.tmp_dir.join(name);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io("creating", dir))?;
        }
        fs::write(&path, bytes).map_err(io("writing", &path))?;
        self.outputs.insert(name.to_string());
        Ok(path)
    }

    /// Hashes an input (a directory: every file under it, each listed separately), or takes its
    /// hash from [`hashes::cache`] if the file has not changed since it was last hashed.
    pub fn add_input(&mut self, role: &str, path: &Path) -> Result<(), BundleError> {
        self.add_inputs(role, path, false)
    }

    /// Hashes an input that will be deleted after the run (a live reference dump).
    pub fn add_transient_input(&mut self, role: &str, path: &Path) -> Result<(), BundleError> {
        self.add_inputs(role, path, true)
    }

    fn add_inputs(&mut self, role: &str, path: &Path, transient: bool) -> Result<(), BundleError> {
        let files = hashes::files_under(path)?;
        // A dump folder holds hundreds of tensors: hashed on every core, listed in path order.
        let hashes: Vec<_> = files.par_iter().map(|file| hashes::cache().sha256(file, std::slice::from_ref(file))).collect();
        for (file, hash) in files.iter().zip(hashes) {
            let (sha256, bytes) = hash?;
            self.inputs.push(FileHash { role: role.into(), path: file.display().to_string(), sha256, bytes, transient });
        }
        Ok(())
    }

    /// Hashes every output, writes the manifest (and its signature), flushes it all to the disk and
    /// renames the bundle into place.
    pub fn finish(self, run: RunInfo) -> Result<PathBuf, BundleError> {
        let names: Vec<&String> = self.outputs.iter().collect();
        // Each file is flushed as it is hashed: on every core, and read back while still cached.
        let hashes: Vec<_> = names
            .par_iter()
            .map(|name| {
                let path = self.tmp_dir.join(name);
                crate::files::sync_file(&path).map_err(io("flushing to disk", &path))?;
                hash_file(&path)
            })
            .collect();
        let mut output = Vec::new();
        for (name, hash) in names.into_iter().zip(hashes) {
            let (sha256, bytes) = hash?;
            output.push(FileHash { role: String::new(), path: name.clone(), sha256, bytes, transient: false });
        }
        let manifest = Manifest {
            bundle: BundleSection { kind: self.kind.clone(), provenance: self.provenance.clone() },
            run,
            input: self.inputs.clone(),
            output,
        };
        let mut body = toml::to_string(&manifest).map_err(|e| BundleError::Manifest { path: self.tmp_dir.join(MANIFEST), message: e.to_string() })?;
        file_tables("input", &manifest.input, &mut body);
        file_tables("output", &manifest.output, &mut body);
        let path = self.tmp_dir.join(MANIFEST);
        let manifest_text = with_header(MANIFEST, &body, &self.provenance)?;
        crate::files::write_synced(&path, manifest_text.as_bytes()).map_err(io("writing", &path))?;
        if let Some(signer) = &self.signer {
            let path = self.tmp_dir.join(signing::SIGNATURE);
            crate::files::write_synced(&path, signer.signature_file(manifest_text.as_bytes()).as_bytes()).map_err(io("writing", &path))?;
        }
        // The folders' entries too, so no file can be missing after a crash: every folder an output
        // made (`a/b/c.npy`: `a/b`, `a`) and the bundle's own ("").
        let mut dirs: BTreeSet<&Path> = self.outputs.iter().flat_map(|name| Path::new(name).ancestors().skip(1)).collect();
        dirs.insert(Path::new(""));
        for dir in dirs.iter().rev() {
            let dir = self.tmp_dir.join(dir);
            crate::files::sync_dir(&dir).map_err(io("flushing to disk", &dir))?;
        }
        // rename(2) would happily replace an empty directory; refuse any existing one.
        if self.final_dir.exists() {
            return Err(BundleError::Exists(self.final_dir));
        }
        fs::rename(&self.tmp_dir, &self.final_dir).map_err(io("renaming the bundle into", &self.final_dir))?;
        // The rename itself lasts once the parent folder's entries are on the disk.
        if let Some(parent) = self.final_dir.parent() {
            crate::files::sync_dir(parent).map_err(io("flushing to disk", parent))?;
        }
        Ok(self.final_dir)
    }
}

/// Appends one `[[kind]]` table per file. Written directly: through the toml crate, the thousands
/// of entries of a run took a noticeable share of the harness's time (docs/performance.md).
fn file_tables(kind: &str, files: &[FileHash], out: &mut String) {
    use std::fmt::Write;
    for f in files {
        let _ = write!(out, "\n[[{kind}]]\n");
        if !f.role.is_empty() {
            let _ = writeln!(out, "role = {}", toml_string(&f.role));
        }
        let _ = writeln!(out, "path = {}\nsha256 = {}\nbytes = {}", toml_string(&f.path), toml_string(&f.sha256), f.bytes);
        if f.transient {
            out.push_str("transient = true\n");
        }
    }
}

/// A TOML basic string: quotes, backslashes and control characters escaped, the rest as is.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// What [`verify`] found; clean when `changed`, `missing` and `extra` are empty.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Verification {
    /// Listed files whose SHA-256 differs (outputs relative to the bundle, inputs as recorded).
    pub changed: Vec<String>,
    pub missing: Vec<String>,
    /// Files in the bundle the manifest does not list.
    pub extra: Vec<String>,
    /// Transient inputs no longer on disk, as the run intended (live dumps): not re-hashable.
    pub gone: Vec<String>,
}

impl Verification {
    pub fn is_clean(&self) -> bool {
        self.changed.is_empty() && self.missing.is_empty() && self.extra.is_empty()
    }
}

/// Re-hashes every input and output the bundle's manifest lists. This proves integrity, not
/// authorship: check `manifest.sig` with [`signing::check`] for who wrote it.
pub fn verify(bundle_dir: &Path) -> Result<Verification, BundleError> {
    let path = bundle_dir.join(MANIFEST);
    let text = fs::read_to_string(&path).map_err(io("reading", &path))?;
    let manifest: Manifest = toml::from_str(&text).map_err(|e| BundleError::Manifest { path: path.clone(), message: e.to_string() })?;
    let mut report = Verification::default();
    let inputs = manifest.input.iter().map(|f| (f, PathBuf::from(&f.path)));
    let outputs = manifest.output.iter().map(|f| (f, bundle_dir.join(&f.path)));
    for (listed, file) in inputs.chain(outputs) {
        if !file.is_file() && listed.transient {
            report.gone.push(listed.path.clone());
        } else if !file.is_file() {
            report.missing.push(listed.path.clone());
        } else if hash_file(&file)?.0 != listed.sha256 {
            report.changed.push(listed.path.clone());
        }
    }
    let listed: BTreeSet<&str> = manifest.output.iter().map(|f| f.path.as_str()).collect();
    for file in hashes::files_under(bundle_dir)? {
        let rel = file.strip_prefix(bundle_dir).unwrap_or(&file).to_string_lossy().replace('\\', "/");
        if rel != MANIFEST && rel != signing::SIGNATURE && !listed.contains(rel.as_str()) {
            report.extra.push(rel);
        }
    }
    Ok(report)
}

/// Prepends the generated-file header in the comment syntax of `name`'s extension.
fn with_header(name: &str, body: &str, p: &Provenance) -> Result<String, BundleError> {
    let lines = [
        format!("generated by parity; do not edit (run {})", p.run_id),
        format!("created: {}", p.created),
        format!("command: {}", p.command),
        format!("engine commit: {}", p.engine_commit),
    ];
    let ext = Path::new(name).extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "md" | "html" | "xml" | "svg" => {
            // `--` may not occur inside an XML/HTML comment, and command lines are full of it.
            let inner: Vec<String> = lines.iter().map(|l| one_line(l).replace("--", "- -")).collect();
            let comment = format!("<!--\n{}\n-->\n", inner.join("\n"));
            // An XML declaration must stay the very first thing in the document.
            if body.starts_with("<?xml") {
                let split = body.find('\n').map_or(body.len(), |i| i + 1);
                let (decl, rest) = body.split_at(split);
                let decl = if decl.ends_with('\n') { decl.to_string() } else { format!("{decl}\n") };
                return Ok(format!("{decl}{comment}{rest}"));
            }
            Ok(format!("{comment}{body}"))
        }
        "toml" | "txt" | "csv" | "log" => {
            let comment: String = lines.iter().map(|l| format!("# {}\n", one_line(l))).collect();
            Ok(format!("{comment}{body}"))
        }
        "json" => {
            let generated = serde_json::json!({
                "note": "generated by parity; do not edit",
                "run_id": p.run_id, "created": p.created, "command": p.command, "engine_commit": p.engine_commit,
            });
            let trimmed = body.trim_start();
            let Some(after) = trimmed.strip_prefix('{') else {
                return Err(BundleError::JsonNotObject(name.into()));
            };
            // Textual insertion keeps the body's own key order.
            let sep = if after.trim_start().starts_with('}') { "" } else { "," };
            Ok(format!("{{\n  \"_generated\": {generated}{sep}{after}"))
        }
        _ => Err(BundleError::UnknownFormat(name.into())),
    }
}

fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

fn check_name(name: &str) -> Result<(), BundleError> {
    let path = Path::new(name);
    let inside = path.components().all(|c| matches!(c, Component::Normal(_)));
    if name.is_empty() || !inside || name == MANIFEST {
        return Err(BundleError::BadName(name.to_string()));
    }
    Ok(())
}

/// SHA-256 (lowercase hex) and length of a file, read now (never from [`hashes::cache`]).
pub fn hash_file(path: &Path) -> Result<(String, u64), BundleError> {
    Ok(hashes::sha256_files(&[path.to_path_buf()])?)
}

/// Entropy for run ids without a dependency: std's per-process random hasher keys, mixed with time.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.write_u32(std::process::id());
    h.finish()
}

/// Seconds since the epoch as (`20261122T212400Z`, `2026-11-22T21:24:00Z`), proleptic Gregorian UTC.
fn utc(secs: u64) -> (String, String) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil date from a day count, counting in 400-year eras that start on March 1st.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    (format!("{y:04}{mo:02}{d:02}T{h:02}{m:02}{s:02}Z"), format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}Z"))
}

/// What a finished bundle's manifest says about its run: who made it, how, and from which inputs.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub kind: String,
    pub provenance: Provenance,
    pub run: RunInfo,
    pub inputs: Vec<FileHash>,
}

impl Record {
    /// The sha256 of the input with this role (`suite`, `spec`, `catalog`), if it has one.
    pub fn input_sha256(&self, role: &str) -> Option<&str> {
        self.inputs.iter().find(|f| f.role == role).map(|f| f.sha256.as_str())
    }
}

/// Reads a bundle's manifest (without re-hashing anything: see [`verify`]).
pub fn read_record(bundle_dir: &Path) -> Result<Record, BundleError> {
    let path = bundle_dir.join(MANIFEST);
    let text = fs::read_to_string(&path).map_err(io("reading", &path))?;
    let manifest: Manifest = toml::from_str(&text).map_err(|e| BundleError::Manifest { path: path.clone(), message: e.to_string() })?;
    Ok(Record { kind: manifest.bundle.kind, provenance: manifest.bundle.provenance, run: manifest.run, inputs: manifest.input })
}

#[cfg(test)]
mod tests;
