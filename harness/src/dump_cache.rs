//! A content-addressed store of reference dumps. A dump depends only on what made it (the dumper's
//! source, the reference environment, the catalog) and what it was asked (model file, prompt,
//! generation settings, the history and sampler input it was fed): the sha256 of all of that is
//! its key, and a live run whose request hashes to a stored key reuses that dump instead of running
//! the dumper again. An engine change touches none of it, so a merge gate on one dumps nothing.
//!
//! Layout: `<dir>/<key>/dump/` is the dump as its dumper wrote it, `<dir>/<key>/entry.toml` says
//! what the key was made of and each file's sha256 and size (checked before every reuse), and its
//! modification time is the entry's last use (least recently used entries go first when the cache
//! is over its size). An entry is built under a `.tmp-` name and renamed when complete.

use crate::live::DumpRequest;
use rayon::prelude::*;
use reports::hashes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("dump cache: {action} {}: {source}", path.display())]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error("dump cache: {0}")]
    Hash(#[from] hashes::HashError),
    #[error("dump cache: {}: {message}", path.display())]
    Entry { path: PathBuf, message: String },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CacheError {
    let path = path.to_path_buf();
    move |source| CacheError::Io { action, path, source }
}

/// The sha256 (hex) of a dump request's canonical text.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DumpKey {
    pub hex: String,
    /// What was hashed, kept in the entry for whoever wonders why two runs did not share a dump.
    pub inputs: String,
}

impl std::fmt::Display for DumpKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.hex)
    }
}

/// Where a run's dump came from, for its proof bundle.
#[derive(Clone, Debug, PartialEq)]
pub struct Origin {
    pub key: DumpKey,
    pub reused: bool,
    /// The dumper's stderr, kept with the entry.
    pub log: Option<PathBuf>,
}

impl Origin {
    /// `fresh <key>` or `reused <key>`.
    pub fn label(&self) -> String {
        format!("{} {}", if self.reused { "reused" } else { "fresh" }, self.key.hex)
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryRecord {
    key: String,
    inputs: String,
    bytes: u64,
    #[serde(rename = "file")]
    files: Vec<FileRecord>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRecord {
    name: String,
    sha256: String,
    bytes: u64,
}

pub struct DumpCache {
    dir: PathBuf,
    max_bytes: u64,
    /// sha256 of what every key of this run shares: the catalog.
    context: String,
    /// Keys this process reused or stored: never evicted under it.
    in_use: Mutex<BTreeSet<String>>,
}

const ENTRY: &str = "entry.toml";
const LOG: &str = "stderr.log";

impl DumpCache {
    /// The cache in `dir` (made if absent), holding at most `max_bytes` of dumps; `context` is
    /// everything its keys share (the catalog's hash).
    pub fn open(dir: &Path, max_bytes: u64, context: &str) -> Result<DumpCache, CacheError> {
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        Ok(DumpCache { dir: dir.to_path_buf(), max_bytes, context: context.to_string(), in_use: Mutex::default() })
    }

    /// The key of `reference`, whose dumper is `dumper` ([`crate::live::Dumpers::identity`]),
    /// answering `req` on a model file with sha256 `model_sha256`, fed sampler logits with sha256
    /// `sampler_sha256`.
    pub fn key(&self, reference: &str, dumper: &str, req: &DumpRequest, model_sha256: &str, sampler_sha256: Option<&str>) -> DumpKey {
        let history = req.force_tokens.map_or("none".to_string(), |ids| ids.iter().map(i64::to_string).collect::<Vec<_>>().join(","));
        // JSON escapes every control character: one prompt, one line, whatever it holds.
        let prompt = serde_json::to_string(req.prompt).unwrap_or_default();
        let inputs = format!(
            "parity dump key v2\ncontext {}\nreference {reference}\ndumper {dumper}\nmodel_sha256 {model_sha256}\nprompt {prompt}\nn_generate {}\n\
             temperature {:08x}\nthreads {}\nforce_tokens {history}\nsampler_logits_sha256 {}\n",
            self.context,
            req.n_generate,
            req.temperature.to_bits(),
            req.threads,
            sampler_sha256.unwrap_or("none"),
        );
        DumpKey { hex: hashes::sha256_bytes(inputs.as_bytes()), inputs }
    }

    fn entry(&self, key: &DumpKey) -> PathBuf {
        self.dir.join(&key.hex)
    }

    /// The stored dump folder for `key`, if there is one whose every file still has its recorded
    /// hash; an entry that does not is removed (and the dump is made again).
    pub fn lookup(&self, key: &DumpKey) -> Result<Option<PathBuf>, CacheError> {
        let entry = self.entry(key);
        let record_path = entry.join(ENTRY);
        let text = match std::fs::read_to_string(&record_path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("reading", &record_path)(e)),
        };
        self.mark_in_use(key);
        let dump = entry.join("dump");
        match check_entry(&text, key, &dump) {
            Ok(()) => {
                touch(&record_path)?;
                Ok(Some(dump))
            }
            Err(why) => {
                eprintln!("parity: dump cache entry {} dropped ({why}); making the dump again", entry.display());
                std::fs::remove_dir_all(&entry).map_err(io("removing", &entry))?;
                Ok(None)
            }
        }
    }

    /// Stores the finished dump folder `dump` (and its dumper's stderr `log`) under `key`, then
    /// evicts the least recently used entries beyond the size limit. Returns the stored dump.
    pub fn insert(&self, key: &DumpKey, dump: &Path, log: Option<&Path>) -> Result<PathBuf, CacheError> {
        self.mark_in_use(key);
        let entry = self.entry(key);
        let tmp = self.dir.join(format!(".tmp-{}-{}", key.hex, std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let built = (|| -> Result<(), CacheError> {
            link_or_copy_tree(dump, &tmp.join("dump"))?;
            if let Some(log) = log.filter(|l| l.is_file()) {
                std::fs::copy(log, tmp.join(LOG)).map_err(io("copying", log))?;
            }
            let record = record_of(key, &tmp.join("dump"))?;
            let body = toml::to_string(&record).map_err(|e| CacheError::Entry { path: tmp.join(ENTRY), message: e.to_string() })?;
            std::fs::write(tmp.join(ENTRY), body).map_err(io("writing", &tmp.join(ENTRY)))?;
            // Another process may have stored the same key meanwhile: either copy is the same dump.
            if entry.exists() {
                std::fs::remove_dir_all(&tmp).map_err(io("removing", &tmp))?;
            } else {
                std::fs::rename(&tmp, &entry).map_err(io("renaming into", &entry))?;
            }
            Ok(())
        })();
        if built.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        built?;
        self.evict()?;
        Ok(entry.join("dump"))
    }

    /// The stderr log kept with `key`'s entry, if any.
    pub fn log(&self, key: &DumpKey) -> Option<PathBuf> {
        Some(self.entry(key).join(LOG)).filter(|p| p.is_file())
    }

    /// Removes least recently used entries (never one this process uses) until the stored dumps
    /// fit in the size limit, and building folders an earlier process left behind.
    pub fn evict(&self) -> Result<(), CacheError> {
        let mut entries = Vec::new();
        for item in std::fs::read_dir(&self.dir).map_err(io("listing", &self.dir))? {
            let item = item.map_err(io("listing", &self.dir))?;
            let name = item.file_name().to_string_lossy().into_owned();
            let path = item.path();
            if name.starts_with(".tmp-") {
                // A building folder of a live process is young; one a day old was abandoned.
                if age(&path).is_some_and(|a| a.as_secs() > 86_400) {
                    let _ = std::fs::remove_dir_all(&path);
                }
                continue;
            }
            let record = path.join(ENTRY);
            let bytes = std::fs::read_to_string(&record).ok().and_then(|t| toml::from_str::<EntryRecord>(&t).ok()).map_or(0, |r| r.bytes);
            let used = std::fs::metadata(&record).and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
            entries.push((used, name, path, bytes));
        }
        let mut total: u64 = entries.iter().map(|e| e.3).sum();
        entries.sort();
        let in_use = self.in_use.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for (_, name, path, bytes) in entries {
            if total <= self.max_bytes {
                break;
            }
            if in_use.contains(&name) {
                continue;
            }
            std::fs::remove_dir_all(&path).map_err(io("evicting", &path))?;
            total -= bytes;
        }
        Ok(())
    }

    fn mark_in_use(&self, key: &DumpKey) {
        self.in_use.lock().unwrap_or_else(|p| p.into_inner()).insert(key.hex.clone());
    }
}

/// Whether an entry's record is `key`'s and its dump holds exactly the recorded files, unchanged.
fn check_entry(text: &str, key: &DumpKey, dump: &Path) -> Result<(), String> {
    let record: EntryRecord = toml::from_str(text).map_err(|e| format!("unreadable record: {e}"))?;
    if record.key != key.hex || record.inputs != key.inputs {
        return Err("its record is another key's".into());
    }
    let files = hashes::files_under(dump).map_err(|e| e.to_string())?;
    let names: Vec<String> = files.iter().map(|f| relative(dump, f)).collect();
    let recorded: Vec<&str> = record.files.iter().map(|f| f.name.as_str()).collect();
    if names != recorded {
        return Err(format!("holds {} files, its record lists {}", names.len(), recorded.len()));
    }
    // Hashes of unchanged files come from the protected hash store, so a reuse costs lookups.
    let sums: Vec<_> = files.par_iter().map(|f| hashes::cache().sha256(f, std::slice::from_ref(f))).collect();
    for ((file, sum), want) in files.iter().zip(sums).zip(&record.files) {
        let (sha256, bytes) = sum.map_err(|e| e.to_string())?;
        if sha256 != want.sha256 || bytes != want.bytes {
            return Err(format!("{} changed since it was stored", relative(dump, file)));
        }
    }
    Ok(())
}

fn record_of(key: &DumpKey, dump: &Path) -> Result<EntryRecord, CacheError> {
    let files = hashes::files_under(dump)?;
    let sums: Vec<_> = files.par_iter().map(|f| hashes::sha256_files(std::slice::from_ref(f))).collect();
    let mut records = Vec::with_capacity(files.len());
    for (file, sum) in files.iter().zip(sums) {
        let (sha256, bytes) = sum?;
        records.push(FileRecord { name: relative(dump, file), sha256, bytes });
    }
    Ok(EntryRecord { key: key.hex.clone(), inputs: key.inputs.clone(), bytes: records.iter().map(|r| r.bytes).sum(), files: records })
}

fn relative(base: &Path, file: &Path) -> String {
    file.strip_prefix(base).unwrap_or(file).to_string_lossy().into_owned()
}

fn touch(path: &Path) -> Result<(), CacheError> {
    let file = std::fs::File::options().write(true).open(path).map_err(io("opening", path))?;
    file.set_modified(SystemTime::now()).map_err(io("marking the use of", path))
}

fn age(path: &Path) -> Option<std::time::Duration> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok())
}

/// A copy of the folder tree `from` at `to` (which must not exist): hard links where the file
/// system allows (dump files are never written in place, so sharing them is safe), else copies.
pub fn link_or_copy_tree(from: &Path, to: &Path) -> Result<(), CacheError> {
    std::fs::create_dir_all(to).map_err(io("creating", to))?;
    for item in std::fs::read_dir(from).map_err(io("listing", from))? {
        let item = item.map_err(io("listing", from))?;
        let (src, dst) = (item.path(), to.join(item.file_name()));
        let kind = item.file_type().map_err(io("reading", &src))?;
        if kind.is_dir() {
            link_or_copy_tree(&src, &dst)?;
        } else if kind.is_file() {
            if std::fs::hard_link(&src, &dst).is_err() {
                std::fs::copy(&src, &dst).map_err(io("copying", &src))?;
            }
        } else {
            return Err(CacheError::Entry { path: src, message: "not a regular file or folder; a dump holds only files".into() });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("parity-dump-cache-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn request<'a>(prompt: &'a str, history: Option<&'a [i64]>) -> DumpRequest<'a> {
        DumpRequest {
            model: Path::new("m.gguf"),
            prompt,
            n_generate: 4,
            temperature: 1.0,
            threads: 2,
            force_tokens: history,
            sampler_logits: None,
            out: Path::new("/unused"),
        }
    }

    fn fake_dump(dir: &Path, bytes: usize) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("manifest.toml"), "reference = \"fake\"\n").unwrap();
        std::fs::write(dir.join("logits.npy"), vec![7u8; bytes]).unwrap();
        dir.to_path_buf()
    }

    #[test]
    fn every_input_of_a_request_moves_its_key() {
        let dir = scratch("keys");
        let cache = DumpCache::open(&dir.join("c"), 1 << 30, "ctx").unwrap();
        let base = cache.key("pytorch", "d", &request("hi", None), "aa", None);
        let history = [1_i64, 2];
        let variants = [
            cache.key("tinygrad", "d", &request("hi", None), "aa", None),
            cache.key("pytorch", "another dumper", &request("hi", None), "aa", None),
            cache.key("pytorch", "d", &request("hi ", None), "aa", None),
            cache.key("pytorch", "d", &request("hi", None), "ab", None),
            cache.key("pytorch", "d", &request("hi", Some(&history)), "aa", None),
            cache.key("pytorch", "d", &request("hi", None), "aa", Some("ff")),
            cache.key("pytorch", "d", &DumpRequest { n_generate: 5, ..request("hi", None) }, "aa", None),
            cache.key("pytorch", "d", &DumpRequest { temperature: 0.7, ..request("hi", None) }, "aa", None),
            cache.key("pytorch", "d", &DumpRequest { threads: 1, ..request("hi", None) }, "aa", None),
            DumpCache::open(&dir.join("c"), 1 << 30, "another catalog").unwrap().key("pytorch", "d", &request("hi", None), "aa", None),
        ];
        for v in &variants {
            assert_ne!(v.hex, base.hex, "{}", v.inputs);
        }
        // The output folder is where a dump goes, not what it is.
        assert_eq!(cache.key("pytorch", "d", &DumpRequest { out: Path::new("/elsewhere"), ..request("hi", None) }, "aa", None), base);
        // A prompt with a newline cannot pose as another field of the key's text.
        assert_eq!(base.inputs.lines().count(), cache.key("pytorch", "d", &request("hi\nreference x", None), "aa", None).inputs.lines().count());
        assert_eq!(base.hex.len(), 64);
    }

    #[test]
    fn a_stored_dump_is_found_by_its_key_and_an_altered_one_is_dropped() {
        let dir = scratch("lookup");
        let cache = DumpCache::open(&dir.join("c"), 1 << 30, "ctx").unwrap();
        let key = cache.key("pytorch", "d", &request("hi", None), "aa", None);
        assert_eq!(cache.lookup(&key).unwrap(), None);
        let src = fake_dump(&dir.join("live/pytorch"), 100);
        std::fs::write(dir.join("live/pytorch.stderr.log"), "dumper said hi\n").unwrap();
        let stored = cache.insert(&key, &src, Some(&dir.join("live/pytorch.stderr.log"))).unwrap();
        assert_eq!(cache.lookup(&key).unwrap(), Some(stored.clone()));
        assert_eq!(std::fs::read_to_string(cache.log(&key).unwrap()).unwrap(), "dumper said hi\n");
        // The source going away (the live folder is removed after a run) leaves the entry whole.
        std::fs::remove_dir_all(dir.join("live")).unwrap();
        assert_eq!(std::fs::read(stored.join("logits.npy")).unwrap(), vec![7u8; 100]);
        // Edited in place (a different size, so no stored hash can vouch for it): not reused.
        std::fs::write(stored.join("logits.npy"), vec![8u8; 101]).unwrap();
        assert_eq!(cache.lookup(&key).unwrap(), None);
        assert!(!dir.join("c").join(&key.hex).exists(), "a changed entry is removed");
        // A file added to a stored dump: not reused either.
        let src = fake_dump(&dir.join("live2/pytorch"), 100);
        let stored = cache.insert(&key, &src, None).unwrap();
        std::fs::write(stored.join("extra.npy"), b"x").unwrap();
        assert_eq!(cache.lookup(&key).unwrap(), None);
    }

    #[test]
    fn a_record_of_another_key_does_not_vouch_for_a_dump() {
        let dir = scratch("swap");
        let cache = DumpCache::open(&dir.join("c"), 1 << 30, "ctx").unwrap();
        let a = cache.key("pytorch", "d", &request("a", None), "aa", None);
        let b = cache.key("pytorch", "d", &request("b", None), "aa", None);
        cache.insert(&a, &fake_dump(&dir.join("a"), 10), None).unwrap();
        // a's entry moved to b's name, record and all.
        std::fs::rename(dir.join("c").join(&a.hex), dir.join("c").join(&b.hex)).unwrap();
        assert_eq!(cache.lookup(&b).unwrap(), None);
    }

    #[test]
    fn the_least_recently_used_entries_go_first_but_never_one_in_use() {
        let dir = scratch("evict");
        let keys: Vec<DumpKey> =
            (0..3).map(|i| DumpCache::open(&dir.join("c"), 0, "ctx").unwrap().key("p", "d", &request(&i.to_string(), None), "aa", None)).collect();
        // Written by one process, then used by another with a 250-byte limit (two dumps and a bit).
        {
            let writer = DumpCache::open(&dir.join("c"), 1 << 30, "ctx").unwrap();
            for (i, key) in keys.iter().enumerate() {
                writer.insert(key, &fake_dump(&dir.join(format!("src{i}")), 100), None).unwrap();
                let record = dir.join("c").join(&key.hex).join(ENTRY);
                let when = SystemTime::now() - std::time::Duration::from_secs(1000 - 100 * i as u64);
                std::fs::File::options().write(true).open(record).unwrap().set_modified(when).unwrap();
            }
        }
        let reader = DumpCache::open(&dir.join("c"), 250, "ctx").unwrap();
        // Using the oldest makes it the newest: the next oldest goes instead.
        assert!(reader.lookup(&keys[0]).unwrap().is_some());
        reader.evict().unwrap();
        let kept: Vec<bool> = keys.iter().map(|k| dir.join("c").join(&k.hex).exists()).collect();
        assert_eq!(kept, [true, false, true]);
        // Over the limit with only entries in use: they stay.
        let tight = DumpCache::open(&dir.join("c"), 0, "ctx").unwrap();
        assert!(tight.lookup(&keys[2]).unwrap().is_some());
        tight.evict().unwrap();
        let kept: Vec<bool> = keys.iter().map(|k| dir.join("c").join(&k.hex).exists()).collect();
        assert_eq!(kept, [false, false, true]);
    }
}
