//! SHA-256 of input files, remembered between runs.
//!
//! A run hashes every input it reads (models, reference dumps) into its proof bundle, and on an
//! engineer's repeated runs over the same files that hashing was most of the harness's own time.
//! So a hash is remembered with its file's `stat` signature (device, inode, size, and modification
//! and change times to the nanosecond) and reused only while the file still has exactly that
//! signature. Writing a file, replacing it by rename, or restoring its modification time with
//! `touch -d` all move its change time, which no program can set back. A file changed less than
//! [`SETTLE`] ago is never remembered: timestamps move in clock ticks, and two writes within one
//! tick could leave the same signature.
//!
//! The memory lasts for the process, and across runs when the binary calls [`keep_in`] (`parity`
//! keeps it in `$PARITY_CACHE/sha256.tsv`; delete the file to forget). `parity verify` never uses
//! it: verifying a bundle re-reads every byte.
//!
//! Every line of the store carries an HMAC-SHA256 made with a secret kept beside it (`sha256.key`,
//! owner-only, made on first use), so a line written by hand, by another program or with another
//! cache's key is ignored and its file hashed again: a forged line cannot make a changed file pass.

use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{OnceLock, RwLock};
use std::time::{Duration, SystemTime};

/// A file that could not be read, the store that could not be written, or a store key that
/// cannot be trusted: what was being done, where, and why.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("{action} {path}: {reason}")]
    Io { action: &'static str, path: PathBuf, reason: std::io::Error },
    #[error("hash cache key {path}: {problem}; delete it and the store beside it (sha256.tsv) to start a new cache")]
    Key { path: PathBuf, problem: String },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> HashError {
    let path = path.to_path_buf();
    move |reason| HashError::Io { action, path, reason }
}

fn key_error(path: &Path, problem: impl Into<String>) -> HashError {
    HashError::Key { path: path.to_path_buf(), problem: problem.into() }
}

type LineMac = hmac::Hmac<Sha256>;

/// How long a file must have been left alone before its hash is remembered.
pub const SETTLE: Duration = Duration::from_secs(2);

/// First line of the store; a store without it (another format, or v1 without MACs) is ignored.
const STORE_HEADER: &str = "# parity sha256 cache v2: hmac-sha256 of the rest, sha256, bytes, stat signature, path (tab-separated)";

/// Hashes remembered by the key they were asked for (a file, or a folder hashed as the
/// concatenation of its files).
pub struct HashCache {
    /// The store and the MAC keyed with its secret; `None` in memory-only mode.
    store: Option<(PathBuf, LineMac)>,
    /// The store as loaded: each path's line (without the path), parsed only when looked up: a
    /// run uses a few thousand of its tens of thousands of lines.
    stored: HashMap<&'static str, &'static str>,
    /// What this process hashed; looked up before `stored`.
    known: RwLock<HashMap<String, Known>>,
    added: AtomicBool,
}

#[derive(Clone, Debug, PartialEq)]
struct Known {
    signature: String,
    sha256: String,
    bytes: u64,
}

static CACHE: OnceLock<HashCache> = OnceLock::new();

/// Makes the process's cache persistent in `store` (loaded now, written by [`HashCache::save`]).
/// Call it before anything is hashed: once the cache is in use, it stays in memory only. When the
/// store's key cannot be read, made or trusted, the cache stays in memory only and says why.
pub fn keep_in(store: PathBuf) -> Result<(), HashError> {
    let mut refused = None;
    CACHE.get_or_init(|| {
        HashCache::load(store).unwrap_or_else(|e| {
            refused = Some(e);
            memory_only()
        })
    });
    refused.map_or(Ok(()), Err)
}

fn memory_only() -> HashCache {
    HashCache { store: None, stored: HashMap::new(), known: RwLock::default(), added: AtomicBool::new(false) }
}

/// The process's cache: in memory only unless [`keep_in`] was called first.
pub fn cache() -> &'static HashCache {
    CACHE.get_or_init(memory_only)
}

impl HashCache {
    /// The cache saved in `store`, its lines checked with the key beside it ([`key_path`], made
    /// now if missing); a missing, unreadable or foreign store starts empty. Fails only when the
    /// key cannot be read, made or trusted.
    pub fn load(store: PathBuf) -> Result<HashCache, HashError> {
        let mac = load_or_make_key(&key_path(&store))?;
        // Kept for the life of the process (the cache is a process-wide static), so the index
        // can point into it instead of copying every line.
        let text: &'static str = fs::read_to_string(&store).map_or("", |text| Box::leak(text.into_boxed_str()));
        Ok(HashCache { store: Some((store, mac)), stored: index_store(text), known: RwLock::default(), added: AtomicBool::new(false) })
    }

    /// What is remembered under `key`: learned by this process, else from a store line whose MAC
    /// verifies (checked only when looked up: a run uses a few thousand of the store's lines).
    fn remembered(&self, key: &str) -> Option<Known> {
        self.read().get(key).cloned().or_else(|| {
            let (_, mac) = self.store.as_ref()?;
            self.stored.get(key).and_then(|line| parse_known(mac, line))
        })
    }

    /// SHA-256 (lowercase hex) and total length of `files` read one after another, remembered
    /// under `key`; a single file is `sha256(path, &[path])`.
    pub fn sha256(&self, key: &Path, files: &[PathBuf]) -> Result<(String, u64), HashError> {
        let name = key.display().to_string();
        let before = stamp(files);
        if let Some(b) = &before {
            if let Some(k) = self.remembered(&name).filter(|k| k.signature == b.signature) {
                return Ok((k.sha256, k.bytes));
            }
        }
        let (sha256, bytes) = sha256_files(files)?;
        // Remembered only if the files were settled and did not change while being read.
        let after = stamp(files);
        let remembered = before.filter(|b| after.as_ref() == Some(b) && b.settled() && !name.contains(['\n', '\t']));
        if let Some(Stamp { signature, .. }) = remembered {
            self.write().insert(name, Known { signature, sha256: sha256.clone(), bytes });
            self.added.store(true, Ordering::Relaxed);
        }
        Ok((sha256, bytes))
    }

    /// Writes what this process learned into the store, merged with what other processes wrote
    /// there meanwhile; entries whose file is gone are dropped. Written to a temporary file and
    /// renamed, so a reader never sees half a store. Nothing to do in memory-only mode.
    pub fn save(&self) -> Result<(), HashError> {
        let Some((store, mac)) = &self.store else {
            return Ok(());
        };
        if !self.added.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut merged = fs::read_to_string(store).map(|text| parse_store(mac, &text)).unwrap_or_default();
        merged.extend(self.read().iter().map(|(k, v)| (k.clone(), v.clone())));
        let mut lines: Vec<String> =
            merged.into_iter().filter(|(key, _)| Path::new(key).exists()).map(|(key, k)| store_line(mac, &key, &k)).collect();
        lines.sort();
        if let Some(dir) = store.parent() {
            fs::create_dir_all(dir).map_err(io("creating", dir))?;
        }
        let tmp = store.with_extension(format!("tmp-{}", std::process::id()));
        fs::write(&tmp, format!("{STORE_HEADER}\n{}", lines.concat())).map_err(io("writing", &tmp))?;
        fs::rename(&tmp, store).map_err(io("renaming into", store))
    }

    /// Only a shared reference: `memory_only` caches have no key.
    #[cfg(test)]
    fn mac(&self) -> &LineMac {
        &self.store.as_ref().expect("a cache with a store").1
    }

    // The map only ever gains whole entries: usable after a panic elsewhere. Lookups (every
    // input file of every run) share the lock; only a newly hashed file takes it alone.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Known>> {
        self.known.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Known>> {
        self.known.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// SHA-256 (lowercase hex) and total length of `files` read one after another, streamed.
pub fn sha256_files(files: &[PathBuf]) -> Result<(String, u64), HashError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    for path in files {
        let mut file = fs::File::open(path).map_err(io("opening", path))?;
        loop {
            let n = file.read(&mut buf).map_err(io("reading", path))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            total += n as u64;
        }
    }
    Ok((hex(&hasher.finalize()), total))
}

/// SHA-256 (lowercase hex) of bytes in memory.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// `path` itself if a file, else every file under it in path order.
pub fn files_under(path: &Path) -> Result<Vec<PathBuf>, HashError> {
    let mut out = Vec::new();
    walk(path, &mut out)?;
    Ok(out)
}

fn walk(path: &Path, out: &mut Vec<PathBuf>) -> Result<(), HashError> {
    if fs::metadata(path).map_err(io("reading", path))?.is_file() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    // The entries' types come with the listing: no stat per file, except to follow a symlink.
    let mut entries: Vec<(PathBuf, bool)> = Vec::new();
    for entry in fs::read_dir(path).map_err(io("listing", path))? {
        let entry = entry.map_err(io("listing", path))?;
        let kind = entry.file_type().map_err(io("reading", &entry.path()))?;
        let is_file = if kind.is_symlink() { fs::metadata(entry.path()).map_err(io("reading", &entry.path()))?.is_file() } else { kind.is_file() };
        entries.push((entry.path(), is_file));
    }
    entries.sort();
    for (entry, is_file) in entries {
        if is_file {
            out.push(entry);
        } else {
            walk(&entry, out)?;
        }
    }
    Ok(())
}

/// What `stat` says about some files, as far as the cache cares.
#[derive(Debug, PartialEq)]
struct Stamp {
    /// Every file's device, inode, size, and modification and change times.
    signature: String,
    /// The latest modification or change time among them, since the epoch.
    changed: Duration,
}

/// The files' [`Stamp`]; `None` if one cannot be read (then nothing is remembered or reused) or
/// off Unix.
fn stamp(files: &[PathBuf]) -> Option<Stamp> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let at = |secs: i64, nsec: i64| Duration::new(secs.max(0) as u64, nsec.clamp(0, 999_999_999) as u32);
        let (mut parts, mut changed) = (Vec::with_capacity(files.len()), Duration::ZERO);
        for f in files {
            let m = fs::metadata(f).ok()?;
            parts.push(format!("{}:{}:{}:{}.{:09}:{}.{:09}", m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec()));
            changed = changed.max(at(m.mtime(), m.mtime_nsec())).max(at(m.ctime(), m.ctime_nsec()));
        }
        Some(Stamp { signature: parts.join(","), changed })
    }
    #[cfg(not(unix))]
    {
        let _ = files;
        None
    }
}

impl Stamp {
    /// Whether every file was last changed at least [`SETTLE`] ago.
    fn settled(&self) -> bool {
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).is_ok_and(|now| now.saturating_sub(self.changed) >= SETTLE)
    }
}

/// Every entry of a store's text that is well formed and whose MAC verifies.
fn parse_store(mac: &LineMac, text: &str) -> HashMap<String, Known> {
    index_store(text).into_iter().filter_map(|(key, line)| Some((key.to_string(), parse_known(mac, line)?))).collect()
}

/// A store's whole lines by path (the field after the fourth tab), unparsed and unchecked.
/// Empty for a text without the store's header.
fn index_store(text: &str) -> HashMap<&str, &str> {
    let mut lines = text.lines();
    if lines.next() != Some(STORE_HEADER) {
        return HashMap::new();
    }
    // Lines are about 270 bytes: sized once instead of grown through a dozen rehashes.
    let mut index = HashMap::with_capacity(text.len() / 128);
    for line in lines {
        // mac and sha256 (64 hex digits each), bytes, signature, path: the path follows the fourth tab.
        let Some(fourth_tab) = line.get(130..).and_then(|rest| rest.match_indices('\t').nth(1)).map(|(at, _)| 130 + at) else {
            continue;
        };
        index.insert(&line[fourth_tab + 1..], line);
    }
    index
}

/// A store line: the MAC of the rest, then sha256, bytes, stat signature and path.
fn store_line(mac: &LineMac, key: &str, k: &Known) -> String {
    let body = format!("{}\t{}\t{}\t{key}", k.sha256, k.bytes, k.signature);
    format!("{}\t{body}\n", hex(&mac.clone().chain_update(body.as_bytes()).finalize().into_bytes()))
}

/// The entry of a whole store line, if it is well formed and its MAC is this store's.
fn parse_known(mac: &LineMac, line: &str) -> Option<Known> {
    let (tag, body) = line.split_once('\t')?;
    let tag = unhex::<32>(tag)?;
    // Compared in constant time, so a forger learns nothing from how long a refusal takes.
    mac.clone().chain_update(body.as_bytes()).verify_slice(&tag).ok()?;
    let mut f = body.splitn(4, '\t');
    let (sha256, bytes, signature) = (f.next()?, f.next()?, f.next()?);
    let bytes = bytes.parse().ok()?;
    let valid = sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit());
    valid.then(|| Known { signature: signature.into(), sha256: sha256.into(), bytes })
}

/// `N` bytes from exactly `2 N` hex digits.
pub(crate) fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits = text.as_bytes();
    if digits.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *o = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

/// Where the secret of `store`'s line MACs is kept: beside it, `.key` for its extension.
pub fn key_path(store: &Path) -> PathBuf {
    store.with_extension("key")
}

/// The MAC keyed with the secret at `path`, made now (32 random bytes, owner-only) if missing.
fn load_or_make_key(path: &Path) -> Result<LineMac, HashError> {
    let secret = match read_secret(path) {
        Err(HashError::Io { reason, .. }) if reason.kind() == std::io::ErrorKind::NotFound => make_secret(path)?,
        other => other?,
    };
    LineMac::new_from_slice(&secret).map_err(|e| key_error(path, e.to_string()))
}

/// The 32-byte secret in `path` (64 hex digits and a newline), refused if others could read it.
fn read_secret(path: &Path) -> Result<[u8; 32], HashError> {
    let meta = fs::symlink_metadata(path).map_err(io("reading", path))?;
    if !meta.is_file() {
        return Err(key_error(path, "not a regular file"));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // Readable by others, it may have been read: anyone holding it can forge lines.
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(key_error(path, format!("readable or writable by other users (mode {mode:04o})")));
        }
    }
    let text = fs::read_to_string(path).map_err(io("reading", path))?;
    unhex::<32>(text.trim_end()).ok_or_else(|| key_error(path, "not 64 hex digits"))
}

/// Makes the secret at `path`: written whole to a private temporary file, then linked into place,
/// so a concurrent run either makes it or reads the complete one another run made.
fn make_secret(path: &Path) -> Result<[u8; 32], HashError> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| key_error(path, format!("no randomness from the OS: {e}")))?;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io("creating", dir))?;
    }
    let tmp = path.with_extension(format!("key-tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    crate::files::write_private(&tmp, format!("{}\n", hex(&secret)).as_bytes()).map_err(io("writing", &tmp))?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(secret),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_secret(path),
        Err(e) => Err(io("creating", path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_bytes_is_the_fips_180_2_test_vector() {
        assert_eq!(sha256_bytes(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    /// sha256 of "abc", FIPS 180-2 appendix B.1.
    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn age(path: &Path, secs: u64) {
        // Back-dating the modification time is what `touch -d` does; the change time still moves
        // to now, so this file stays unsettled: tests that need a settled file use `settle`.
        let f = fs::File::options().write(true).open(path).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(secs)).unwrap();
    }

    #[test]
    fn files_read_one_after_another_hash_as_their_concatenation() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::write(&a, "a").unwrap();
        fs::write(&b, "bc").unwrap();
        assert_eq!(sha256_files(&[a.clone(), b.clone()]).unwrap(), (ABC.to_string(), 3));
        assert!(sha256_files(&[dir.path().join("missing")]).unwrap_err().to_string().contains("missing"));
    }

    #[test]
    fn a_file_changed_just_now_is_hashed_every_time_and_never_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x");
        fs::write(&f, "abc").unwrap();
        let cache = HashCache::load(dir.path().join("store.tsv")).unwrap();
        assert_eq!(cache.sha256(&f, std::slice::from_ref(&f)).unwrap().0, ABC);
        // Same size, same second: only re-reading can tell.
        fs::write(&f, "abd").unwrap();
        assert_ne!(cache.sha256(&f, std::slice::from_ref(&f)).unwrap().0, ABC);
        age(&f, 3600);
        assert!(!stamp(std::slice::from_ref(&f)).unwrap().settled(), "touch -d moves the change time to now");
        cache.save().unwrap();
        assert!(!dir.path().join("store.tsv").exists(), "nothing was remembered, nothing is written");
    }

    #[test]
    fn a_remembered_hash_is_reused_only_while_the_signature_holds() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x");
        fs::write(&f, "abc").unwrap();
        let store = dir.path().join("store.tsv");
        // A settled file's entry, as an earlier run would have saved it.
        let signature = stamp(std::slice::from_ref(&f)).unwrap().signature;
        let key = f.display().to_string();
        let mac = HashCache::load(store.clone()).unwrap().mac().clone();
        let stale = Known { signature, sha256: "0".repeat(64), bytes: 3 };
        fs::write(&store, format!("{STORE_HEADER}\n{}", store_line(&mac, &key, &stale))).unwrap();
        let cache = HashCache::load(store.clone()).unwrap();
        // The stored (deliberately wrong) hash is believed while the file keeps its signature...
        assert_eq!(cache.sha256(&f, std::slice::from_ref(&f)).unwrap().0, "0".repeat(64));
        // ...and dropped the moment the file is touched in any way.
        fs::write(&f, "abc").unwrap();
        assert_eq!(cache.sha256(&f, std::slice::from_ref(&f)).unwrap().0, ABC);
    }

    #[test]
    fn a_settled_file_is_remembered_across_processes() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x");
        fs::write(&f, "abc").unwrap();
        std::thread::sleep(SETTLE + Duration::from_millis(100));
        let store = dir.path().join("store.tsv");
        let first = HashCache::load(store.clone()).unwrap();
        assert_eq!(first.sha256(&f, std::slice::from_ref(&f)).unwrap(), (ABC.to_string(), 3));
        first.save().unwrap();
        let second = HashCache::load(store).unwrap();
        let known = second.remembered(&f.display().to_string()).expect("saved by the first");
        assert_eq!((known.sha256.as_str(), known.bytes), (ABC, 3));
        assert_eq!(Some(known.signature), stamp(&[f]).map(|s| s.signature));
    }

    #[test]
    fn the_store_survives_garbage_and_keeps_only_files_that_exist() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store.tsv");
        fs::write(&store, "not a store\n").unwrap();
        let mac = HashCache::load(store.clone()).unwrap().mac().clone();
        assert!(HashCache::load(store.clone()).unwrap().stored.is_empty());
        let gone = dir.path().join("gone").display().to_string();
        let kept = dir.path().join("kept");
        fs::write(&kept, "abc").unwrap();
        let known = Known { signature: "1:2:3:4.000000000:5.000000000".into(), sha256: ABC.into(), bytes: 3 };
        let line = |key: &str| store_line(&mac, key, &known);
        let bad_hex = store_line(&mac, "z", &Known { sha256: "g".repeat(64), ..known.clone() });
        fs::write(&store, format!("{STORE_HEADER}\n{}{}short\tline\n{bad_hex}", line(&gone), line(&kept.display().to_string()))).unwrap();
        let cache = HashCache::load(store.clone()).unwrap();
        let remembered = [gone.as_str(), &kept.display().to_string(), "z", "line"].map(|key| cache.remembered(key).is_some());
        assert_eq!(remembered, [true, true, false, false], "the two well-formed lines");
        cache.added.store(true, Ordering::Relaxed);
        cache.save().unwrap();
        let saved = fs::read_to_string(&store).unwrap();
        assert_eq!(saved, format!("{STORE_HEADER}\n{}", line(&kept.display().to_string())));
    }

    /// A file `x` holding "abc", its store and that store's genuine MAC.
    fn file_and_store() -> (tempfile::TempDir, PathBuf, PathBuf, LineMac) {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x");
        fs::write(&f, "abc").unwrap();
        let store = dir.path().join("store.tsv");
        let mac = HashCache::load(store.clone()).unwrap().mac().clone();
        (dir, f, store, mac)
    }

    #[test]
    fn a_forged_store_line_is_not_believed_and_its_file_is_hashed_again() {
        let (dir, f, store, genuine) = file_and_store();
        let key = f.display().to_string();
        // A stale hash for x with x's current stat signature: believed, x would pass unread.
        let stale = Known { signature: stamp(std::slice::from_ref(&f)).unwrap().signature, sha256: "0".repeat(64), bytes: 3 };
        let body = format!("{}\t3\t{}\t{key}", stale.sha256, stale.signature);
        let other_key = HashCache::load(dir.path().join("other/store.tsv")).unwrap().mac().clone();
        let forged = [
            ("a wrong MAC", format!("{}\t{body}\n", "0".repeat(64))),
            ("no MAC", format!("{body}\n")),
            ("another cache's key", store_line(&other_key, &key, &stale)),
            ("a MAC of other text", format!("{}\t{body}\n", &store_line(&genuine, "elsewhere", &stale)[..64])),
        ];
        for (what, line) in forged {
            fs::write(&store, format!("{STORE_HEADER}\n{line}")).unwrap();
            let cache = HashCache::load(store.clone()).unwrap();
            assert_eq!(cache.sha256(&f, std::slice::from_ref(&f)).unwrap().0, ABC, "a line with {what} was believed");
        }
        // The control: the same stale line from the genuine writer is believed.
        fs::write(&store, format!("{STORE_HEADER}\n{}", store_line(&genuine, &key, &stale))).unwrap();
        let cache = HashCache::load(store).unwrap();
        assert_eq!(cache.sha256(&f, std::slice::from_ref(&f)).unwrap().0, "0".repeat(64));
    }

    #[test]
    fn line_macs_are_hmac_sha256_as_in_rfc_4231() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let mac = LineMac::new_from_slice(b"Jefe").unwrap();
        let tag = mac.chain_update(b"what do ya want for nothing?").finalize().into_bytes();
        assert_eq!(hex(&tag), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn the_store_key_is_made_owner_only_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("cache/sha256.tsv");
        let key = key_path(&store);
        assert_eq!(key, dir.path().join("cache/sha256.key"));
        let first = HashCache::load(store.clone()).unwrap().mac().clone();
        let text = fs::read_to_string(&key).unwrap();
        assert!(text.len() == 65 && text.ends_with('\n') && unhex::<32>(text.trim_end()).is_some(), "{text:?}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let second = HashCache::load(store).unwrap().mac().clone();
        let tag = |m: &LineMac| m.clone().chain_update(b"line").finalize().into_bytes();
        assert_eq!(tag(&first), tag(&second), "the second load reads the key the first made");
    }

    #[test]
    fn a_store_key_others_can_read_or_that_is_malformed_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("sha256.tsv");
        fs::write(key_path(&store), "not hex\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(key_path(&store), fs::Permissions::from_mode(0o600)).unwrap();
            let err = HashCache::load(store.clone()).err().expect("a malformed key").to_string();
            assert!(err.contains("not 64 hex digits") && err.contains("sha256.key"), "{err}");
            fs::write(key_path(&store), format!("{}\n", "ab".repeat(32))).unwrap();
            fs::set_permissions(key_path(&store), fs::Permissions::from_mode(0o644)).unwrap();
            let err = HashCache::load(store.clone()).err().expect("a key others can read").to_string();
            assert!(err.contains("mode 0644") && err.contains("delete it"), "{err}");
        }
        fs::remove_file(key_path(&store)).unwrap();
        fs::create_dir(key_path(&store)).unwrap();
        let err = HashCache::load(store).err().expect("a folder for a key").to_string();
        assert!(err.contains("not a regular file"), "{err}");
    }
}
